"""Batch provisioning, arrays (whole and item by item), files and images, zips and single files."""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from typing import Any

import msgspec

from shared.domain.events import InputKind, InputProvisioned, RunStatus
from shared.runlog.runs import decode_run_event
from tests.images import tiny_png
from tests.integration.test_storage_fixtures import Env, env_fixture, form  # noqa: F401  (fixture)

V = "APPE-internal-request-validation-error"
DIMENSIONS = "APPE-internal-invalid-dimensions"


def param_error(name: str, message: str, code: str = V) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "details": {"type": "parameter", "parameterName": name}}


async def batch(env: Env, run_id: uuid.UUID, items: object) -> tuple[int, Any]:
    resp = await env.storage.put(env.url(run_id, "input-provisions"), json=items)
    return resp.status, await resp.json()


async def test_a_batch_stores_everything_and_echoes_in_order(env: Env) -> None:
    run_id = await env.new_run()
    status, body = await batch(
        env, run_id, [{"parameterName": "s", "value": "abc"}, {"parameterName": "ig", "value": 7, "type": "INTEGER"}]
    )
    r = str(run_id)
    assert (status, body) == (
        200,
        [{"parameterName": "s", "value": "abc", "taskRunId": r}, {"parameterName": "ig", "value": 7, "taskRunId": r}],
    )
    state = await env.state(run_id)
    assert state.status is RunStatus.PROVISIONED
    assert env.blob(run_id, "inputs", "ig").read_bytes() == b"7"


async def test_a_batch_with_any_error_stores_nothing(env: Env) -> None:
    run_id = await env.new_run()
    before = await env.state(run_id)
    items = [
        {"parameterName": "s", "value": "abc"},
        {"parameterName": "ig", "value": 10},
        {"parameterName": "n_unknown", "value": 1},
        {"parameterName": "flag", "value": 1},
    ]
    status, body = await batch(env, run_id, items)
    assert (status, body) == (
        400,
        {
            "errorCode": "APPE-internal-batch-request-error",
            "message": "Error(s) occurred during a handling of a batch request.",
            "details": {
                "type": "batch",
                "errors": [
                    param_error("ig", "value must be less than defined constraint"),
                    param_error("n_unknown", "parameter not found", "APPE-internal-parameter-not-found"),
                    param_error("flag", "value does not match defined constraint."),
                ],
            },
        },
    )
    assert not env.blob(run_id, "inputs", "s").exists()
    assert (await env.state(run_id)).version == before.version


async def test_arrays_whole_and_nested(env: Env) -> None:
    run_id = await env.new_run()
    value = [{"index": 0, "value": [{"index": 0, "value": 1.5}, {"index": 1, "value": "-2.5e1"}]}]
    status, body = await batch(env, run_id, [{"parameterName": "nested", "value": value}])
    assert status == 200, body
    assert body[0]["value"] == [{"index": 0, "value": [{"index": 0, "value": 1.5}, {"index": 1, "value": -25.0}]}]
    assert env.blob(run_id, "inputs", "nested", "array.yml").read_bytes() == b"size: 1"
    assert env.blob(run_id, "inputs", "nested", "0", "array.yml").read_bytes() == b"size: 2"
    assert env.blob(run_id, "inputs", "nested", "0", "1").read_bytes() == b"-2.5e1"
    # re-provisioning a shorter array leaves no stale items
    status, _ = await batch(env, run_id, [{"parameterName": "arr", "value": [{"index": 0, "value": 1}] * 1}])
    assert status == 200
    assert sorted(p.name for p in env.blob(run_id, "inputs", "arr").iterdir()) == ["0", "array.yml"]


async def test_array_faults(env: Env) -> None:
    run_id = await env.new_run()
    cases = [
        ([], "invalid collection dimensions", DIMENSIONS),
        (
            [{"index": i, "value": i} for i in range(6)],
            "invalid collection dimensions",
            "APPE-internal-invalid-dimensions",
        ),
        ([{"index": 0, "value": -1}], "value must be greater than or equal to define constraint", V),
        ([{"index": 1, "value": 1}], "invalid provision structure", "APPE-internal-invalid-structure"),
        ([{"index": 0, "value": [1]}], "invalid provision structure", "APPE-internal-invalid-structure"),
        ([1, 2], "invalid provision structure", "APPE-internal-invalid-structure"),
        ("1,2", "invalid provision structure", "APPE-internal-invalid-structure"),
    ]
    for value, message, code in cases:
        resp = await env.storage.put(
            env.url(run_id, "input-provisions/arr"), json={"parameterName": "arr", "value": value}
        )
        assert (resp.status, await resp.json()) == (400, param_error("arr", message, code)), value
    assert not env.blob(run_id, "inputs", "arr").exists()


async def test_array_items_one_by_one(env: Env) -> None:
    run_id = await env.new_run()
    resp = await env.storage.put(env.url(run_id, "input-provisions/arr/indexes?value=1"), json={"value": 300})
    assert (resp.status, await resp.json()) == (200, {"index": "arr/1", "value": 300, "taskRunId": str(run_id)})
    resp = await env.storage.put(env.url(run_id, "input-provisions/arr/indexes?value=0"), json={"value": 100})
    assert resp.status == 200
    assert env.blob(run_id, "inputs", "arr", "array.yml").read_bytes() == b"size: 2"
    assert env.blob(run_id, "inputs", "arr", "0").read_bytes() == b"100"
    resp = await env.storage.put(env.url(run_id, "input-provisions/nested/indexes?value=2/0"), json={"value": 2.5})
    assert resp.status == 200, await resp.text()
    assert env.blob(run_id, "inputs", "nested", "array.yml").read_bytes() == b"size: 3"
    assert env.blob(run_id, "inputs", "nested", "2", "array.yml").read_bytes() == b"size: 1"
    events = [decode_run_event(e) for e in await env.runlog.store.read(run_id)]
    items = [(e.parameter, e.index) for e in events if isinstance(e, InputProvisioned)]
    assert items == [("arr", "1"), ("arr", "0"), ("nested", "2/0")]
    assert all(e.kind is InputKind.ARRAY_ITEM for e in events if isinstance(e, InputProvisioned))

    for indexes, code in (("01", "APPE-internal-invalid-indexes"), ("a", "APPE-internal-invalid-indexes"), ("", "")):
        resp = await env.storage.put(
            env.url(run_id, f"input-provisions/arr/indexes?value={indexes}"), json={"value": 1}
        )
        body = await resp.json()
        assert resp.status == 400
        if code:
            assert body == {
                "errorCode": code,
                "message": "indexes don't match pattern {^(0(/[0-9]+)*|[1-9][0-9]*(/[0-9]+)*)$}",
                "details": {
                    "type": "related",
                    "parameterName": "arr",
                    "description": f"indexes [{indexes}] is not a valid",
                },
            }
    resp = await env.storage.put(env.url(run_id, "input-provisions/arr/indexes?value=5"), json={"value": 1})
    assert (resp.status, await resp.json()) == (
        400,
        param_error("arr", "invalid collection dimensions", "APPE-internal-invalid-dimensions"),
    )
    resp = await env.storage.put(env.url(run_id, "input-provisions/ig/indexes?value=0"), json={"value": 1})
    assert (resp.status, await resp.json()) == (400, param_error("ig", "invalid parameter type"))
    resp = await env.storage.put(env.url(run_id, "input-provisions/arr/indexes?value=0/1"), json={"value": 1})
    assert (resp.status, await resp.json()) == (
        400,
        param_error("arr", "invalid provision structure", "APPE-internal-invalid-structure"),
    )


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


async def test_binary_file_and_image_provisioning(env: Env) -> None:
    run_id = await env.new_run()
    resp = await env.storage.post(env.url(run_id, "input-provisions/doc"), data=form(b"\x00\x01raw"))
    assert (resp.status, await resp.json()) == (200, {"parameterName": "doc", "taskRunId": str(run_id)})
    assert env.blob(run_id, "inputs", "doc").read_bytes() == b"\x00\x01raw"

    location = b'{"type":"Point","coordinates":[1,2]}'
    resp = await env.storage.post(env.url(run_id, "input-provisions/img"), data=form(tiny_png(), location))
    assert resp.status == 200, await resp.text()
    assert env.blob(run_id, "inputs", "img").read_bytes() == tiny_png()
    assert env.blob(run_id, "inputs", "img.geojson").read_bytes() == location

    for data, message in (
        (b"GIF89a....", "invalid image format"),
        (png(11, 5), "invalid image width"),
        (png(5, 11), "invalid image height"),
    ):
        resp = await env.storage.post(env.url(run_id, "input-provisions/img"), data=form(data))
        assert (resp.status, await resp.json()) == (400, param_error("img", message)), message
    assert env.blob(run_id, "inputs", "img").read_bytes() == tiny_png()  # unchanged

    resp = await env.storage.post(env.url(run_id, "input-provisions/images/indexes?value=0"), data=form(png(3, 3)))
    assert (resp.status, await resp.json()) == (200, {"index": "images/0", "taskRunId": str(run_id)})
    assert env.blob(run_id, "inputs", "images", "array.yml").read_bytes() == b"size: 1"
    assert env.blob(run_id, "inputs", "images", "0").read_bytes() == png(3, 3)
    # every provision's event vouches for the bytes it stored
    checksums = {
        (e["parameter"], e.get("index")): e["checksum"]
        for e in (msgspec.json.decode(stored.data) for stored in await env.runlog.store.read(run_id))
        if e["type"] == "input_provisioned"
    }
    for (name, index), data in {
        ("doc", None): b"\x00\x01raw",
        ("img", None): tiny_png(),
        ("images", "0"): png(3, 3),
    }.items():
        assert checksums[name, index] == f"sha256:{hashlib.sha256(data).hexdigest()}", (name, index)

    resp = await env.storage.post(env.url(run_id, "input-provisions/ig"), data=form(b"1"))
    assert (resp.status, await resp.json()) == (400, param_error("ig", "invalid parameter type"))


async def test_zips_and_single_files(env: Env) -> None:
    run_id = await env.new_run()
    resp = await env.storage.get(env.url(run_id, "inputs.zip"))
    assert resp.status == 403
    items = [
        {"parameterName": "ig", "value": 3},
        {"parameterName": "arr", "value": [{"index": 0, "value": 4}, {"index": 1, "value": 5}]},
    ]
    assert (await batch(env, run_id, items))[0] == 200
    await env.storage.post(env.url(run_id, "input-provisions/img"), data=form(tiny_png(), b'{"type":"Point"}'))

    resp = await env.storage.get(env.url(run_id, "inputs.zip"))
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == f'attachment; filename="inputs-{run_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["arr/0", "arr/1", "arr/array.yml", "ig", "img", "img.geojson"]
        assert z.read("img") == tiny_png()

    resp = await env.storage.get(env.url(run_id, "input/ig"))
    assert (resp.status, await resp.read()) == (200, b"3")
    assert resp.headers["Content-Type"] == "application/octet-stream"
    resp = await env.storage.get(env.url(run_id, "input/img.geojson"))
    assert (resp.status, await resp.read(), resp.content_type) == (200, b'{"type":"Point"}', "application/geo+json")
    resp = await env.storage.get(env.url(run_id, "input/arr"))
    assert resp.status == 200
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as z:
        assert sorted(z.namelist()) == ["arr/0", "arr/1", "arr/array.yml"]
    resp = await env.storage.get(env.url(run_id, "input/arr/indexes?value=1"))
    assert (resp.status, await resp.read()) == (200, b"5")
    for missing in ("input/s", "input/nope", "input/arr/indexes?value=7"):
        resp = await env.storage.get(env.url(run_id, missing))
        body = await resp.json()
        assert (resp.status, body["errorCode"]) == (400, "APPE-storage-reading-file-error"), missing
