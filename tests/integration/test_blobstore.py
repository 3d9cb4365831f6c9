"""One contract for every blob backend: each test runs against each backend."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import AsyncIterator

import pytest

from shared.blobstore import BlobNotFound, BlobStore, InvalidKey, LocalBlobStore


@pytest.fixture(params=["local"])
async def blobs(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(store: BlobStore, key: str, **kwargs: int) -> bytes:
    return b"".join([c async for c in store.get(key, **kwargs)])


async def test_put_and_get_round_trip(blobs: BlobStore) -> None:
    info = await blobs.put_stream("tasks/t1/descriptor.yml", chunks(b"name: x\n", b"version: 1\n"))
    assert info.size == 19
    assert info.sha256 == hashlib.sha256(b"name: x\nversion: 1\n").hexdigest()
    assert await read(blobs, "tasks/t1/descriptor.yml") == b"name: x\nversion: 1\n"
    assert await blobs.size("tasks/t1/descriptor.yml") == 19
    assert await blobs.exists("tasks/t1/descriptor.yml")


async def test_ranges(blobs: BlobStore) -> None:
    await blobs.put_stream("r/x", chunks(bytes(range(256)) * 10))
    assert await read(blobs, "r/x", offset=250, length=10) == bytes(range(250, 256)) + bytes(range(4))


async def test_large_blob_is_streamed_and_replaced_whole(blobs: BlobStore, tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.bin"
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    with big.open("wb") as f:
        for _ in range(12):
            f.write(block)
    info = await blobs.put_file("runs/r1/image", big)
    assert info.size == 12 * len(block)
    await blobs.put_stream("runs/r1/image", chunks(b"small"))
    assert await read(blobs, "runs/r1/image") == b"small"


async def test_a_failed_write_leaves_nothing_visible(blobs: BlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await blobs.put_stream("runs/r2/input", broken())
    assert not await blobs.exists("runs/r2/input")
    assert await blobs.list("runs/r2") == []


async def test_missing_blob(blobs: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await read(blobs, "nope/x")
    with pytest.raises(BlobNotFound):
        await blobs.size("nope/x")
    await blobs.delete("nope/x")  # absent is fine


async def test_list_and_delete_prefix(blobs: BlobStore) -> None:
    for key in ("runs/a/in/x", "runs/a/in/arr/0", "runs/a/out/y", "runs/b/in/x"):
        await blobs.put_stream(key, chunks(b"1"))
    assert await blobs.list("runs/a") == ["runs/a/in/arr/0", "runs/a/in/x", "runs/a/out/y"]
    assert await blobs.delete_prefix("runs/a") == 3
    assert await blobs.list("runs/a") == []
    assert await blobs.exists("runs/b/in/x")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "a//b", "a/./b", "", "a/b/"])
async def test_keys_cannot_escape(blobs: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await blobs.put_stream(key, chunks(b"x"))
