"""One contract for every blob backend: each test runs against each backend."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from shared.blobstore import BlobNotFound, BlobStore, InvalidKey, LocalBlobStore
from shared.s3blobstore import S3BlobStore, S3Config, S3Error, S3Unavailable
from tests.support import free_port


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    elif request.param == "s3":
        async with S3BlobStore.open(request.getfixturevalue("s3_config")) as store:
            await store.ensure_bucket()
            yield store


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


# S3 only: what the contract cannot see from outside (multipart, pending uploads, memory)

PART = 5 * 1024 * 1024


@pytest.fixture
async def s3(s3_config: S3Config) -> AsyncIterator[S3BlobStore]:
    """An S3 store with the smallest part size S3 allows, so multipart starts past 5 MiB."""
    async with S3BlobStore.open(s3_config, part_size=PART) as store:
        await store.ensure_bucket()
        yield store


async def pending_uploads(store: S3BlobStore) -> list[str]:
    response = await store.client.list_multipart_uploads(Bucket=store.bucket)
    return [u["Key"] for u in response.get("Uploads", [])]


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_s3_large_blob_goes_multipart_and_reads_back_identical(s3: S3BlobStore, tmp_path: pathlib.Path) -> None:
    data = random.Random(7).randbytes(12 * 1024 * 1024 + 12345)
    # chunk sizes that never line up with the part size
    info = await s3.put_stream("runs/r1/image", pieces(data, 700_001))
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    head = await s3.client.head_object(Bucket=s3.bucket, Key=s3.object_key("runs/r1/image"))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of 5 + 5 + 2 MiB parts
    assert await read(s3, "runs/r1/image") == data
    assert await read(s3, "runs/r1/image", offset=PART - 10, length=20) == data[PART - 10 : PART + 10]
    assert await s3.size("runs/r1/image") == len(data)
    assert await pending_uploads(s3) == []

    path = tmp_path / "image"
    path.write_bytes(data)
    info = await s3.put_file("runs/r1/copy", path)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await read(s3, "runs/r1/copy") == data


async def test_s3_blob_of_exactly_one_part_is_a_single_put(s3: S3BlobStore) -> None:
    data = random.Random(8).randbytes(PART)
    await s3.put_stream("a/b", pieces(data, 1024 * 1024))
    head = await s3.client.head_object(Bucket=s3.bucket, Key=s3.object_key("a/b"))
    assert "-" not in head["ETag"]
    assert await read(s3, "a/b") == data


async def test_s3_keys_live_under_the_prefix(s3: S3BlobStore) -> None:
    await s3.put_stream("tasks/t1/descriptor.yml", chunks(b"x"))
    listed = await s3.client.list_objects_v2(Bucket=s3.bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["app-engine/blobs/tasks/t1/descriptor.yml"]
    assert await s3.list("tasks") == ["tasks/t1/descriptor.yml"]


@pytest.mark.slow
async def test_s3_list_and_delete_prefix_span_pages(s3: S3BlobStore) -> None:
    keys = [f"runs/many/out/{i:05d}" for i in range(1234)]  # two pages of ListObjectsV2
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await s3.put_stream(key, chunks(b"1"))

    await asyncio.gather(*(put(key) for key in keys))
    await s3.put_stream("runs/many-other/x", chunks(b"1"))
    assert await s3.list("runs/many") == keys
    assert await s3.delete_prefix("runs/many") == len(keys)
    assert await s3.list("runs/many") == []
    assert await s3.exists("runs/many-other/x")


async def test_s3_empty_blob_and_ranges_past_the_end(s3: S3BlobStore) -> None:
    info = await s3.put_stream("e/empty", chunks())
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await read(s3, "e/empty") == b""
    assert await read(s3, "e/empty", offset=0, length=10) == b""
    await s3.put_stream("e/ten", chunks(b"0123456789"))
    assert await read(s3, "e/ten", offset=10) == b""
    assert await read(s3, "e/ten", offset=8, length=0) == b""
    assert await read(s3, "e/ten", offset=8) == b"89"
    with pytest.raises(BlobNotFound):
        await read(s3, "e/absent", offset=3, length=0)


async def test_s3_failed_multipart_write_leaves_no_object_and_no_pending_upload(s3: S3BlobStore) -> None:
    seen_pending: list[str] = []

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(11):  # > 2 parts: at least two parts are uploaded before the failure
            yield b"\x01" * (1024 * 1024)
        seen_pending.extend(await pending_uploads(s3))
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await s3.put_stream("runs/r2/input", broken())
    assert seen_pending == [s3.object_key("runs/r2/input")]  # the multipart upload had started
    assert not await s3.exists("runs/r2/input")
    assert await s3.list("runs/r2") == []
    assert await pending_uploads(s3) == []


async def test_s3_cancelled_multipart_write_is_aborted(s3: S3BlobStore) -> None:
    started = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"\x02" * (1024 * 1024)
        started.set()
        await asyncio.Event().wait()  # the client stalls until cancelled
        yield b""

    task = asyncio.create_task(s3.put_stream("runs/r3/input", stalled()))
    await asyncio.wait_for(started.wait(), 30)
    assert await pending_uploads(s3) == [s3.object_key("runs/r3/input")]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await s3.exists("runs/r3/input")
    assert await pending_uploads(s3) == []


async def test_s3_streamed_put_holds_at_most_a_few_parts_in_memory(s3: S3BlobStore) -> None:
    block = random.Random(9).randbytes(1024 * 1024)
    total = 64

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(total):
            yield block  # the same object every time: the producer allocates nothing

    tracemalloc.start()
    try:
        info = await s3.put_stream("runs/r4/big", stream())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total * len(block)
    assert peak < 2 * PART, f"peak {peak / 2**20:.1f} MiB for a {total} MiB blob"
    digest = hashlib.sha256()
    async for chunk in s3.get("runs/r4/big"):
        digest.update(chunk)
    assert digest.hexdigest() == info.sha256


async def test_s3_errors_are_translated(s3_config: S3Config) -> None:
    missing_bucket = msgspec.structs.replace(s3_config, bucket=f"absent-{uuid.uuid4().hex[:12]}")
    async with S3BlobStore.open(missing_bucket) as store:
        with pytest.raises(S3Error) as caught:
            await store.put_stream("a/b", chunks(b"x"))
        assert caught.value.code == "NoSuchBucket"
        assert not isinstance(caught.value, S3Unavailable)

    nowhere = msgspec.structs.replace(s3_config, endpoint_url=f"http://127.0.0.1:{free_port()}")
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=nowhere.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as client:
        store = S3BlobStore(client, nowhere)
        with pytest.raises(S3Unavailable):
            await store.size("a/b")
        with pytest.raises(S3Unavailable):
            await read(store, "a/b")


def test_s3_part_size_has_s3s_minimum() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore(None, S3Config(bucket="b"), part_size=PART - 1)


def test_s3_config_repr_hides_the_secret() -> None:
    config = S3Config(bucket="b", access_key_id="AKIA", secret_access_key="hunter2")
    assert "hunter2" not in repr(config)
    assert "AKIA" in repr(config)


async def test_adopt_consumes_the_file(blobs: BlobStore, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "image.tar"
    source.write_bytes(b"layer" * 1000)
    assert await blobs.adopt("tasks/t9/image.tar", source) == 5000
    assert not source.exists()
    assert await read(blobs, "tasks/t9/image.tar") == b"layer" * 1000
