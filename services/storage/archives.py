"""Archives streamed chunk by chunk: zip (inputs.zip, outputs.zip, directories) and tar
(the executor exchange), and the safe unpacking of an output tar.

Writers are sans-I/O: they turn entries into byte chunks that the caller writes to the HTTP
response, so no file is ever held in memory. The zip writer is :mod:`zipfile` on a sink that
cannot seek: entries are STORED, with the CRC-32 and sizes in a data descriptor after the data,
computed while streaming (zip64 when an entry is 2 GiB or more).
"""

from __future__ import annotations

import pathlib
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

BLOCK: Final = 512
MAX_PATH_DEPTH: Final = 64


class _Sink:
    """A write-only file object that keeps what is written until drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


Source = Callable[[], AsyncIterator[bytes]]


async def zip_stream(entries: Sequence[tuple[str, int, Source]]) -> AsyncIterator[bytes]:
    """A zip of ``(name, size, chunks)`` entries, STORED, as a stream of chunks."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED)
    for name, size, source in entries:
        info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        info.file_size = size
        with archive.open(info, "w", force_zip64=size >= 2**31) as member:
            async for chunk in source():
                member.write(chunk)
                yield sink.drain()
        yield sink.drain()
    archive.close()
    yield sink.drain()


def tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o777  # the task may run as any user (upstream: chmod -R 777)
    else:
        info.size = size
        info.mode = 0o666
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_end() -> bytes:
    return b"\0" * (2 * BLOCK)


class UnsafeArchive(Exception):
    """A tar that is not a plain tree of files and directories inside its top folder."""


def unpack_outputs(tar_path: pathlib.Path, target: pathlib.Path, max_bytes: int, max_entries: int) -> list[str]:
    """Unpack Docker's ``get_archive`` tar of the output folder into ``target``.

    The first path component (the folder's own name) is stripped. Only regular files and
    directories are created; links, devices and FIFOs are skipped and returned (so an output
    that is a symlink reads as missing, never followed). Names with ``..``, absolute names and
    entries beyond ``max_entries`` or ``max_bytes`` raise :class:`UnsafeArchive`.
    """
    skipped: list[str] = []
    total = 0
    count = 0
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                count += 1
                if count > max_entries:
                    raise UnsafeArchive(f"more than {max_entries} entries")
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.name.startswith("/") or ".." in parts or len(parts) > MAX_PATH_DEPTH:
                    raise UnsafeArchive(f"unsafe entry name {member.name!r}")
                relative = parts[1:]
                if not relative:
                    continue  # the output folder itself
                path = target.joinpath(*relative)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    total += member.size
                    if total > max_bytes:
                        raise UnsafeArchive(f"outputs larger than {max_bytes} bytes")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if path.is_dir():
                        raise UnsafeArchive(f"entry {member.name!r} is both a file and a directory")
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, path.open("wb") as out:
                        while chunk := source.read(1024 * 1024):
                            out.write(chunk)
                else:
                    skipped.append("/".join(relative))
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"not a tar archive: {exc}") from exc
    except OSError as exc:  # e.g. a file where the tree needs a directory
        raise UnsafeArchive(f"cannot unpack: {exc.strerror or exc}") from exc
    return skipped
