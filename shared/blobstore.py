"""Blob storage behind one interface: task bundles' parts, run inputs and outputs, logs.

Keys are ``/``-separated relative paths (``tasks/<id>/image.tar``). Everything is streamed in
chunks: a multi-gigabyte image never sits in memory. Two backends share one contract (tested by
the same suite): the local filesystem (default, under ``DATA_DIR/blobs``) and S3.

The local backend writes atomically: data goes to a temporary file in the destination folder,
is fsynced, then renamed over the key, so a crash never leaves a partial blob visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO, Protocol

import msgspec

CHUNK = 1024 * 1024
# reads and writes up to this size go straight to the page cache from the event loop: a thread
# hop costs more CPU than the copy (most blobs are input and output values of a few bytes)
INLINE = 64 * 1024
_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class BlobError(Exception):
    """Root of blob store errors."""


class BlobNotFound(BlobError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no blob at {key!r}")
        self.key = key


class InvalidKey(BlobError, ValueError):
    pass


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    size: int
    sha256: str


def check_key(key: str) -> str:
    """A key that cannot escape the store: relative, no ``..``, no empty segments."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid blob key {key!r}")
    return key


class BlobStore(Protocol):
    """What the services need from a blob backend."""

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        """Store the bytes of ``chunks`` at ``key`` (replacing), all or nothing."""
        ...

    async def put_file(self, key: str, path: pathlib.Path) -> BlobInfo:
        """Store a local file at ``key``; the file is left in place."""
        ...

    async def adopt(self, key: str, path: pathlib.Path) -> int:
        """Store a local file at ``key``, consuming it; returns its size. A local backend on the
        same file system renames it rather than copying gigabytes (and computes no digest)."""
        ...

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; BlobNotFound if absent."""
        ...

    async def size(self, key: str) -> int:
        """The blob's size; BlobNotFound if absent."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove one blob; absent is fine."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix/``; returns how many."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix/``, sorted."""
        ...


async def _file_chunks(path: pathlib.Path, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    remaining = length
    with path.open("rb") as f:
        f.seek(offset)
        wanted = max(0, os.fstat(f.fileno()).st_size - offset) if remaining is None else remaining
        if wanted <= INLINE:
            data = f.read(wanted)
            if data:
                yield data
            return
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            data = await asyncio.to_thread(f.read, want)
            if not data:
                return
            if remaining is not None:
                remaining -= len(data)
            yield data


class LocalBlobStore:
    """Blobs as files under a root folder."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> pathlib.Path:
        return self.root / check_key(key)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    # a small blob is written on the loop; beyond INLINE bytes in all, in a thread
                    if size <= INLINE:
                        f.write(chunk)
                    else:
                        await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_flush, f)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest())

    async def put_file(self, key: str, path: pathlib.Path) -> BlobInfo:
        return await asyncio.to_thread(_copy_atomic, path, self.path(key), key)

    async def adopt(self, key: str, path: pathlib.Path) -> int:
        return await asyncio.to_thread(_move_atomic, path, self.path(key), key)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        async for chunk in _file_chunks(path, offset, length):
            yield chunk

    async def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return count

    async def list(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".part")
        )


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _move_atomic(source: pathlib.Path, target: pathlib.Path, key: str) -> int:
    with source.open("rb") as f:
        os.fsync(f.fileno())  # durable before it becomes visible under its key
    target.parent.mkdir(parents=True, exist_ok=True)
    size = source.stat().st_size
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_atomic(source, target, key)  # another file system: copy, then consume
        source.unlink()
    return size


def _copy_atomic(source: pathlib.Path, target: pathlib.Path, key: str) -> BlobInfo:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with source.open("rb") as src, tmp.open("wb") as dst:
            while data := src.read(CHUNK):
                digest.update(data)
                size += len(data)
                dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return BlobInfo(key=key, size=size, sha256=digest.hexdigest())
