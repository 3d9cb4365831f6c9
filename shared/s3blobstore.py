"""The S3 blob backend (aiobotocore): any S3 server, AWS, MinIO or Ceph.

Settings, passed by each service from its environment as an :class:`S3Config`:

- ``S3_ENDPOINT_URL`` (``endpoint_url``): the server's URL, e.g. ``http://minio:9000``; empty or
  unset for AWS itself. With an endpoint, buckets are addressed by path (``host/bucket/key``),
  which every S3 server understands; AWS uses its default virtual-hosted addressing.
- ``S3_BUCKET`` (``bucket``): the bucket holding the blobs; :meth:`S3BlobStore.ensure_bucket`
  creates it if missing.
- ``S3_PREFIX`` (``prefix``): a key prefix for every blob, so several deployments can share a
  bucket; empty by default. Blob ``tasks/t1/image.tar`` is object ``<prefix>/tasks/t1/image.tar``.
- ``S3_REGION`` (``region``): the signing region, ``us-east-1`` by default (what MinIO expects
  unless configured otherwise).
- ``S3_ACCESS_KEY_ID``, ``S3_SECRET_ACCESS_KEY`` (``access_key_id``, ``secret_access_key``): the
  credentials; when unset, botocore's usual chain applies (``AWS_*`` variables, instance profile).

Writes keep the contract's all-or-nothing promise and bounded memory. A blob up to one part
(8 MiB by default) is buffered and sent in one PutObject. A larger one goes through a multipart
upload, one part at a time, so at most one part is ever held; the object only becomes visible
when the upload completes, and any failure (the caller's iterator raising, a cancellation, a
server error) aborts the upload so no parts are left behind. An abort that itself fails (the
server is gone) leaves an incomplete upload invisible to readers; a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` reclaims it. S3 allows 10,000 parts, which bounds a streamed
blob to 10,000 part sizes (78 GiB at 8 MiB); :meth:`S3BlobStore.put_file` knows the size up
front and picks a larger part when needed.

botocore's exceptions are translated here: a missing object is :class:`BlobNotFound`, anything
else :class:`S3Error`, or :class:`S3Unavailable` when retrying later may help.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO, NoReturn

import msgspec
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

# botocore ships no type information and pyproject's list of untyped modules names aiobotocore only
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.blobstore import CHUNK, BlobError, BlobInfo, BlobNotFound, check_key

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
DELETE_BATCH = 1000  # DeleteObjects' maximum, also ListObjectsV2's page size

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
# connection refused, DNS, TLS, timeouts, a body cut short: the server may well answer later
_TRANSPORT = (BotoConnectionError, HTTPClientError, IncompleteReadError)


class S3Config(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how to reach the bucket; fields documented in the module docstring."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def __repr__(self) -> str:
        # settings get logged at startup; the secret must not be
        secret = "'***'" if self.secret_access_key else "None"
        return (
            f"S3Config(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r},"
            f" region={self.region!r}, access_key_id={self.access_key_id!r}, secret_access_key={secret})"
        )


class S3Error(BlobError):
    """An S3 request failed for a reason other than a missing object."""

    def __init__(self, operation: str, key: str, code: str, message: str) -> None:
        super().__init__(f"S3 {operation} on {key!r} failed: {code}: {message}")
        self.operation = operation
        self.key = key
        self.code = code


class S3Unavailable(S3Error):
    """The server could not be reached, timed out, throttled or failed (5xx): worth a retry."""


def _error_code(err: ClientError) -> tuple[str, int]:
    response = err.response
    return str(response.get("Error", {}).get("Code", "")), int(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    )


@contextlib.contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    """Turn botocore's exceptions into blob store errors at the boundary."""
    try:
        yield
    except ClientError as err:
        _raise_for(err, operation, key)
    except _TRANSPORT as err:
        raise S3Unavailable(operation, key, type(err).__name__, str(err)) from err
    except BotoCoreError as err:
        # no credentials, a parameter botocore refuses: retrying changes nothing
        raise S3Error(operation, key, type(err).__name__, str(err)) from err


def _raise_for(err: ClientError, operation: str, key: str) -> NoReturn:
    code, status = _error_code(err)
    if code in _NOT_FOUND:
        raise BlobNotFound(key) from None
    message = str(err.response.get("Error", {}).get("Message", err))
    if status >= 500 or code in _THROTTLED:
        raise S3Unavailable(operation, key, code, message) from err
    raise S3Error(operation, key, code or str(status), message) from err


class _Upload:
    """One object being written: a single PutObject, or a multipart upload once it outgrows a part."""

    def __init__(self, client: Any, bucket: str, object_key: str, key: str) -> None:
        self.client = client
        self.bucket = bucket
        self.object_key = object_key
        self.key = key
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def part(self, data: io.BytesIO) -> None:
        if self.upload_id is None:
            with _translated("CreateMultipartUpload", self.key):
                created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self.object_key)
            self.upload_id = str(created["UploadId"])
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise S3Error("UploadPart", self.key, "TooManyParts", f"more than {MAX_PARTS} parts")
        data.seek(0)
        with _translated("UploadPart", self.key):
            sent = await self.client.upload_part(
                Bucket=self.bucket, Key=self.object_key, UploadId=self.upload_id, PartNumber=number, Body=data
            )
        self.parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def finish(self, rest: io.BytesIO) -> None:
        if self.upload_id is None:
            rest.seek(0)
            with _translated("PutObject", self.key):
                await self.client.put_object(Bucket=self.bucket, Key=self.object_key, Body=rest)
            return
        await self.part(rest)
        with _translated("CompleteMultipartUpload", self.key):
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.object_key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )

    async def abort(self) -> None:
        if self.upload_id is None:
            return
        # best effort: the original error is what the caller must see; a lifecycle rule is the backstop
        with contextlib.suppress(ClientError, BotoCoreError):
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key, UploadId=self.upload_id)


async def _read_file(f: BinaryIO) -> AsyncIterator[bytes]:
    while data := await asyncio.to_thread(f.read, CHUNK):
        yield data


class S3BlobStore:
    """Blobs as objects in one bucket, under an optional key prefix.

    Open it with ``async with S3BlobStore.open(config) as store:``; the client (and its connection
    pool) lives as long as the block. ``part_size`` (at least 5 MiB) is both the largest blob sent
    in one request and the size of each multipart part: the memory a write holds at most.
    """

    def __init__(self, client: Any, config: S3Config, *, part_size: int = PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        prefix = config.prefix.strip("/")
        self.client = client
        self.config = config
        self.bucket = config.bucket
        self.prefix = check_key(prefix) + "/" if prefix else ""
        self.part_size = part_size

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: S3Config, *, part_size: int = PART_SIZE) -> AsyncIterator[S3BlobStore]:
        """A store with its own client, closed when the block exits."""
        endpoint = config.endpoint_url or None
        client_config = AioConfig(
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": 5},
            # botocore >= 1.36 adds CRC checksums to every upload by default, which several S3
            # servers (older MinIO, Ceph) reject; only send them where the API demands one
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=config.region or None,
            aws_access_key_id=config.access_key_id or None,
            aws_secret_access_key=config.secret_access_key or None,
            config=client_config,
        ) as client:
            yield cls(client, config, part_size=part_size)

    def object_key(self, key: str) -> str:
        """The S3 object key of a blob key."""
        return self.prefix + check_key(key)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            with _translated("HeadBucket", self.bucket):
                await self.client.head_bucket(Bucket=self.bucket)
            return
        except BlobNotFound:
            pass
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.config.region and self.config.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            with _translated("CreateBucket", self.bucket):
                await self.client.create_bucket(**kwargs)
        except S3Error as err:
            # another replica created it in between
            if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        return await self._put(key, self.object_key(key), chunks, self.part_size)

    async def put_file(self, key: str, path: pathlib.Path) -> BlobInfo:
        object_key = self.object_key(key)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            # keep within S3's 10,000 parts, rounded up to whole MiB
            part_size = max(self.part_size, -(-size // (MAX_PARTS * MiB)) * MiB)
            return await self._put(key, object_key, _read_file(f), part_size)

    async def adopt(self, key: str, path: pathlib.Path) -> int:
        info = await self.put_file(key, path)
        await asyncio.to_thread(path.unlink)
        return info.size

    async def _put(self, key: str, object_key: str, chunks: AsyncIterator[bytes], part_size: int) -> BlobInfo:
        upload = _Upload(self.client, self.bucket, object_key, key)
        digest = hashlib.sha256()
        size = 0
        # a file-like body, not bytes: aiohttp then sends it in 64 KiB slices, where a bytes-like body
        # gets copied whole (sliced, then joined with the headers) and the part would be held 2-3 times
        buffer = io.BytesIO()
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                # a full buffer is only sent once more data arrives: the last part is never empty,
                # and a blob of at most one part is a plain PutObject
                while buffer.tell() + len(view) > part_size:
                    take = part_size - buffer.tell()
                    buffer.write(view[:take])
                    view = view[take:]
                    await upload.part(buffer)
                    buffer = io.BytesIO()
                buffer.write(view)
            await upload.finish(buffer)
        except BaseException:
            await upload.abort()
            raise
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest())

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        object_key = self.object_key(key)
        if length == 0:
            await self.size(key)  # BlobNotFound if absent, like any other read
            return
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            with _translated("GetObject", key):
                response = await self.client.get_object(**kwargs)
        except S3Error as err:
            if err.code == "InvalidRange":  # starts at or past the end: nothing to read
                return
            raise
        async with response["Body"] as body:
            while True:
                with _translated("GetObject", key):
                    data = await body.read(CHUNK)
                if not data:
                    return
                yield data

    async def _head(self, key: str) -> dict[str, Any]:
        with _translated("HeadObject", key):
            head: dict[str, Any] = await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        return head

    async def size(self, key: str) -> int:
        return int((await self._head(key))["ContentLength"])

    async def exists(self, key: str) -> bool:
        try:
            await self._head(key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        object_key = self.object_key(key)
        with contextlib.suppress(BlobNotFound), _translated("DeleteObject", key):
            await self.client.delete_object(Bucket=self.bucket, Key=object_key)

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.object_key(prefix) + "/"
        count = 0
        after = ""
        # a page of ListObjectsV2 (at most 1000 keys) is one DeleteObjects batch; StartAfter rather
        # than a continuation token, since the listing changes under the deletes
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": folder, "MaxKeys": DELETE_BATCH}
            if after:
                kwargs["StartAfter"] = after
            with _translated("ListObjectsV2", prefix):
                page = await self.client.list_objects_v2(**kwargs)
            batch = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if batch:
                with _translated("DeleteObjects", prefix):
                    result = await self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                if errors := result.get("Errors"):
                    first = errors[0]
                    raise S3Error(
                        "DeleteObjects", str(first.get("Key", prefix)), first.get("Code", ""), first.get("Message", "")
                    )
                count += len(batch)
                after = batch[-1]["Key"]
            if not batch or not page.get("IsTruncated"):
                return count

    async def list(self, prefix: str) -> list[str]:
        folder = self.object_key(prefix) + "/"
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": folder}
            if token:
                kwargs["ContinuationToken"] = token
            with _translated("ListObjectsV2", prefix):
                page = await self.client.list_objects_v2(**kwargs)
            keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(keys)
