"""Hostile requests: every one gets a 4xx in the upstream format and changes nothing."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid

from aiohttp import FormData
from yarl import URL

from shared.domain.events import RunStatus
from tests.integration.test_storage_fixtures import Env, env_fixture, output_tar  # noqa: F401  (fixture)


def files(env: Env, run_id: uuid.UUID) -> list[str]:
    root = env.blob(run_id)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def assert_4xx(resp: object, status: int | None = None) -> dict[str, object]:
    from aiohttp import ClientResponse

    assert isinstance(resp, ClientResponse)
    body = await resp.json()
    assert 400 <= resp.status < 500, body
    if status is not None:
        assert resp.status == status, body
    assert isinstance(body, dict) and isinstance(body.get("errorCode"), str) and "message" in body
    return body


async def test_malformed_bodies(env: Env) -> None:
    run_id = await env.new_run()
    url = env.url(run_id, "input-provisions/ig")
    cases = [
        (b"{", "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b'{"parameterName": "ig", "value": 1, "extra": true}', "application/json"),
        (b'{"parameterName": "ig", "value": 1, "type": "NOPE"}', "application/json"),
        (b'["ig"]', "application/json"),
        (b'{"parameterName": "ig", "value": 1}', "text/plain"),
        (b"\xff\xfe", "application/json"),
    ]
    for data, content_type in cases:
        resp = await env.storage.put(url, data=data, headers={"Content-Type": content_type})
        await assert_4xx(resp, 400)
    resp = await env.storage.put(url, json={"value": 1})  # no parameterName
    await assert_4xx(resp, 404)
    resp = await env.storage.put(url, json={"parameterName": "s", "value": "abc"})  # not the path's parameter
    await assert_4xx(resp, 404)
    big = b'{"parameterName": "s", "value": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    resp = await env.storage.put(url, data=big, headers={"Content-Type": "application/json"})
    await assert_4xx(resp, 413)
    deep = {"parameterName": "nested", "value": [{"index": 0, "value": [{"index": 0, "value": [[[[1]]]]}]}]}
    resp = await env.storage.put(env.url(run_id, "input-provisions/nested"), json=deep)
    await assert_4xx(resp, 400)
    for batch in ({"parameterName": "ig"}, [{"parameterName": "ig", "value": 1}] * 1001, "x"):
        resp = await env.storage.put(env.url(run_id, "input-provisions"), json=batch)
        await assert_4xx(resp, 400)
    assert files(env, run_id) == []
    assert (await env.state(run_id)).version == 1


async def test_names_and_indexes_cannot_escape(env: Env) -> None:
    run_id = await env.new_run()
    for name in ("..%2F..%2Fetc", "%2E%2E", "ig%2F..%2F..%2Fx", "arr%00"):
        path = URL(env.url(run_id, f"input-provisions/{name}"), encoded=True)
        resp = await env.storage.put(path, json={"parameterName": "ig", "value": 1})
        await assert_4xx(resp)
        resp = await env.storage.get(URL(env.url(run_id, f"input/{name}"), encoded=True))
        await assert_4xx(resp)
    for indexes in ("../1", "0/../../x", "-1", "1e3", "99999999999999999999", "0%2F..", " 0"):
        url = URL(env.url(run_id, "input-provisions/arr/indexes"), encoded=True).with_query({"value": indexes})
        resp = await env.storage.put(url, json={"value": 1})
        await assert_4xx(resp, 400)
    assert files(env, run_id) == []


async def test_multipart_faults(env: Env) -> None:
    run_id = await env.new_run()
    url = env.url(run_id, "input-provisions/doc")
    resp = await env.storage.post(url, data=b"raw", headers={"Content-Type": "application/octet-stream"})
    assert (await assert_4xx(resp, 400))["errorCode"] == "APPE-internal-not-multipart"
    form = FormData(default_to_multipart=True)
    form.add_field("field", "just text")
    resp = await env.storage.post(url, data=form)
    assert (await assert_4xx(resp, 400))["errorCode"] == "APPE-internal-no-file-but-form-field"
    resp = await env.storage.post(url, data=b"--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"})
    await assert_4xx(resp, 400)
    resp = await env.storage.post(
        url, data=b"garbage without boundary", headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    await assert_4xx(resp, 400)
    assert files(env, run_id) == []


async def _raw(env: Env, request: bytes) -> bytes:
    server = env.storage.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_bodies_cut_short_change_nothing(env: Env) -> None:
    run_id = await env.new_run()
    body = b'{"parameterName": "ig", "value": 1'
    head = (
        f"PUT {env.url(run_id, 'input-provisions/ig')} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    ).encode()
    await _raw(env, head + body)
    await env.to_running(run_id)
    tar = output_tar({"out_int": b"1", "out_str": b"x"})
    head = (
        f"PUT /internal/runs/{run_id}/outputs.tar?exit_code=0 HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(tar) + 1000}\r\n\r\n"
    ).encode()
    await _raw(env, head + tar[:700])
    await asyncio.sleep(0.2)
    assert files(env, run_id) == []
    assert (await env.state(run_id)).status is RunStatus.RUNNING


async def test_hostile_output_archives(env: Env) -> None:
    def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, content in (("outputs/out_str", b"x"), ("outputs/out_arr/array.yml", b"size: 0")):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            tar.addfile(member, io.BytesIO(data) if data else None)
        return buf.getvalue()

    link = tarfile.TarInfo("outputs/out_int")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/hostname"
    hard = tarfile.TarInfo("outputs/out_int")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    absolute = tarfile.TarInfo("/outputs/out_int")
    absolute.size = 1
    for member, data in ((link, b""), (hard, b""), (absolute, b"1")):
        run_id = await env.new_run()
        await env.to_running(run_id)
        resp = await env.storage.put(
            f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": "0"}, data=tar_with(member, data)
        )
        assert resp.status == 200
        assert (await resp.json())["state"] == "FAILED"
        assert not env.blob(run_id, "outputs", "out_int").exists()
