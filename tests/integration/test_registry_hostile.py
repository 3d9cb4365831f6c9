"""Hostile uploads: each gets a clear 4xx in the upstream error format and changes nothing."""

from __future__ import annotations

import asyncio
import io
import pathlib
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import FormData, MultipartWriter

from tests.images import make_bundle, tiny_png
from tests.integration.conftest import ADD, Client, P
from tests.support import eventually


@pytest.fixture
async def nothing_changed(
    registry: Client,
    tmp_path: pathlib.Path,
    database_url: str,
    schema: str,
) -> AsyncIterator[None]:
    """After the test: no task listed, no blob, no temp upload, no event."""
    yield
    assert await (await registry.get(f"{P}/tasks")).json() == []
    data = tmp_path / "data"
    leftovers = [p for p in data.rglob("*") if p.is_file()] if data.exists() else []
    assert leftovers == []
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.events") == 0
    finally:
        await conn.close()


def zip_with(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


async def post_bytes(registry: Client, data: bytes, filename: str = "task.zip") -> tuple[int, dict[str, object]]:
    form = FormData()
    form.add_field("task", data, filename=filename, content_type="application/zip")
    resp = await registry.post(f"{P}/tasks", data=form)
    return resp.status, await resp.json()


def assert_error(status: int, body: dict[str, object], want_status: int, code: str, message: str | None = None) -> None:
    assert status == want_status, body
    assert body["errorCode"] == code
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message


async def test_not_a_zip(registry: Client, nothing_changed: None) -> None:
    seven_zip = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 100
    status, body = await post_bytes(registry, seven_zip, "task.7z")
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error", "unknown task bundle archive format")


async def test_truncated_zip(
    registry: Client,
    busybox_tar: pathlib.Path,
    tmp_path: pathlib.Path,
    nothing_changed: None,
) -> None:
    whole = make_bundle(tmp_path / "w.zip", ADD, busybox_tar).read_bytes()
    (tmp_path / "w.zip").unlink()
    status, body = await post_bytes(registry, whole[: len(whole) // 2])
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error", "unknown task bundle archive format")


async def test_not_multipart(registry: Client, nothing_changed: None) -> None:
    resp = await registry.post(f"{P}/tasks", json={"task": "nope"})
    assert_error(resp.status, await resp.json(), 400, "APPE-internal-not-multipart", "payload is not multipart")


async def test_form_field_instead_of_a_file(registry: Client, nothing_changed: None) -> None:
    with MultipartWriter("form-data") as form:
        form.append("just text").set_content_disposition("form-data", name="task")
    resp = await registry.post(f"{P}/tasks", data=form)
    assert_error(resp.status, await resp.json(), 400, "APPE-internal-no-file-but-form-field")


async def test_too_large_is_413(registry: Client, nothing_changed: None) -> None:
    status, body = await post_bytes(registry, b"PK\x03\x04" + b"\x00" * (65 * 1024 * 1024))
    assert_error(status, body, 413, "APPE-internal-bundle-validation-error", "maximum upload size for bundle exceeded")


async def test_too_large_without_content_length_is_413(registry: Client, nothing_changed: None) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="task"; filename="t.zip"\r\n\r\nPK\x03\x04'
        for _ in range(66):
            yield b"\x00" * (1024 * 1024)
        yield b"\r\n--b--\r\n"

    resp = await registry.post(f"{P}/tasks", data=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_error(resp.status, await resp.json(), 413, "APPE-internal-bundle-validation-error")


async def test_zip_bomb(registry: Client, nothing_changed: None) -> None:
    bomb = zip_with({"descriptor.yml": ADD, "image.tar": b"\x00" * (32 * 1024 * 1024)})
    assert len(bomb) < 200_000
    status, body = await post_bytes(registry, bomb)
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error")
    assert "compression ratio" in str(body["message"])


async def test_too_many_entries(registry: Client, nothing_changed: None) -> None:
    entries = {f"junk/{i}": b"" for i in range(10_001)}
    status, body = await post_bytes(registry, zip_with({"descriptor.yml": ADD, **entries}, zipfile.ZIP_STORED))
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error")
    assert "entries" in str(body["message"])


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.tar", "a/../../b", "C:/windows.tar", "..\\evil"])
async def test_unsafe_entry_names(registry: Client, name: str, nothing_changed: None) -> None:
    status, body = await post_bytes(registry, zip_with({"descriptor.yml": ADD, name: b"x"}))
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error")
    assert "unsafe entry name" in str(body["message"])


async def test_symlink_entry(registry: Client, nothing_changed: None) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("descriptor.yml", ADD)
        link = zipfile.ZipInfo("image.tar")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/shadow")
    status, body = await post_bytes(registry, buf.getvalue())
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error")
    assert "symbolic links" in str(body["message"])


async def test_descriptor_over_one_mebibyte(registry: Client, nothing_changed: None) -> None:
    huge = ADD + b"#" * (1024 * 1024)
    status, body = await post_bytes(registry, zip_with({"descriptor.yml": huge, "image.tar": b"x"}))
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error")


async def test_yaml_alias_bomb(registry: Client, nothing_changed: None) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    status, body = await post_bytes(
        registry, zip_with({"descriptor.yml": "\n".join(lines).encode(), "image.tar": b"x"})
    )
    assert_error(status, body, 400, "APPE-internal-descriptor-extraction-error")
    details = body["details"]
    assert isinstance(details, dict) and "aliases" in details["description"]


async def test_missing_descriptor(registry: Client, nothing_changed: None) -> None:
    status, body = await post_bytes(registry, zip_with({"image.tar": b"x"}))
    assert_error(
        status,
        body,
        400,
        "APPE-internal-bundle-validation-error",
        "descriptor is not found in the default location",
    )


async def test_missing_image(registry: Client, nothing_changed: None) -> None:
    no_image_config = ADD.replace(b"  image:\n    file: /image.tar\n", b"")
    status, body = await post_bytes(registry, zip_with({"descriptor.yml": no_image_config}))
    assert_error(
        status,
        body,
        400,
        "APPE-internal-bundle-validation-error",
        "image not found in configured place in descriptor and not in the root directory",
    )


async def test_image_that_is_not_an_image(registry: Client, nothing_changed: None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    status, body = await post_bytes(registry, zip_with({"descriptor.yml": ADD, "image.tar": buf.getvalue()}))
    assert_error(status, body, 400, "APPE-internal-bundle-image-validation-error")


async def test_invalid_descriptor_names_every_field(
    registry: Client,
    busybox_tar: pathlib.Path,
    tmp_path: pathlib.Path,
    nothing_changed: None,
) -> None:
    broken = ADD.replace(b"name_short: add_int\n", b"").replace(b"    display_name: A\n", b"")
    bundle = make_bundle(tmp_path / "b.zip", broken, busybox_tar)
    status, body = await post_bytes(registry, bundle.read_bytes())
    bundle.unlink()
    assert_error(
        status,
        body,
        400,
        "APPE-internal-bundle-schema-validation-error",
        "Schema validation failed for the descriptor file",
    )
    details = body["details"]
    assert isinstance(details, dict) and details["type"] == "batch"
    fields = {e["details"]["parameterName"] for e in details["errors"]}
    assert {"name_short", "inputs.a.display_name"} <= fields
    assert all(e["errorCode"] == "APPE-internal-bundle-io-schema-validation-error" for e in details["errors"])


async def test_logo_that_is_not_a_png(
    registry: Client,
    busybox_tar: pathlib.Path,
    tmp_path: pathlib.Path,
    nothing_changed: None,
) -> None:
    bundle = make_bundle(tmp_path / "b.zip", ADD, busybox_tar, extra={"logo.png": b"GIF89a" + tiny_png()})
    status, body = await post_bytes(registry, bundle.read_bytes())
    bundle.unlink()
    assert_error(status, body, 400, "APPE-internal-bundle-validation-error", "logo.png is not a PNG image")


async def test_interrupted_upload_leaves_nothing(
    registry: Client, tmp_path: pathlib.Path, nothing_changed: None
) -> None:
    host, port = registry.server.host, registry.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {P}/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 10000000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="task"; filename="t.zip"\r\n\r\nPK\x03\x04'
    ).encode()
    writer.write(head + b"\x00" * 200_000)
    await writer.drain()
    writer.close()  # the client goes away mid-body
    await writer.wait_closed()
    # the server notices the disconnect and removes the partial upload
    uploads = tmp_path / "data" / "tmp" / "uploads"

    async def cleaned() -> bool:
        return not any(uploads.iterdir())

    await eventually(cleaned, within=10, what="partial upload removed")
