"""Reading a task bundle (a zip) safely, whatever the order of its entries.

The upload is already on disk; this module inspects the zip's central directory, refuses
hostile archives (zip bombs, unsafe names, symlinks, too many entries), finds the descriptor,
the image tar and the logo, and extracts what must be stored, with hard byte limits that do not
trust the sizes the archive declares. Blocking code: callers run it in a thread.

Where the image is looked for (ARCHITECTURE §2, fixing upstream's file-name guess):
``configuration.image.file`` if the descriptor names it, else ``{namespace}-{version}.tar``, else
``image.tar``, else the only ``.tar`` at the root.
"""

from __future__ import annotations

import os
import pathlib
import stat
import struct
import zipfile
import zlib

import msgspec

from shared.descriptor.model import Descriptor, parse_descriptor

MAX_DESCRIPTOR_BYTES = 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
CHUNK = 1024 * 1024


class BundleLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_entries: int = 10_000
    max_uncompressed_bytes: int = 64 * 1024**3
    # deflate reaches ~1000:1 on zeros; real layers and descriptors stay far below 200:1
    max_ratio: float = 200.0


class BundleError(Exception):
    """The bundle is not acceptable; ``error_code`` and ``message`` follow upstream (400)."""

    def __init__(self, message: str, error_code: str = "APPE-internal-bundle-validation-error") -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class BundleContents(msgspec.Struct, frozen=True, kw_only=True):
    descriptor: Descriptor
    descriptor_bytes: bytes
    image_entry: str
    image_size: int
    logo: bytes | None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _check_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"unsafe entry name in bundle: {name!r}")


def _check_entries(archive: zipfile.ZipFile, limits: BundleLimits) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise BundleError(f"bundle has {len(infos)} entries, more than the {limits.max_entries} allowed")
    total = 0
    files: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _check_name(info.filename)
        if _is_symlink(info):
            raise BundleError(f"symbolic links are not allowed in a bundle: {info.filename!r}")
        if info.flag_bits & 0x1:
            raise BundleError(f"encrypted entries are not supported: {info.filename!r}")
        total += info.file_size
        if total > limits.max_uncompressed_bytes:
            raise BundleError("bundle expands beyond the allowed uncompressed size")
        if info.file_size > CHUNK and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleError(f"entry {info.filename!r} has a suspicious compression ratio")
        if not info.is_dir():
            files[info.filename] = info
    return files


def _root_entry(files: dict[str, zipfile.ZipInfo], *names: str) -> str | None:
    """The root entry whose name matches one of ``names`` case-insensitively."""
    wanted = {n.lower() for n in names}
    found = [name for name in files if "/" not in name and name.lower() in wanted]
    if len(found) > 1:
        raise BundleError(f"bundle has several candidates for {names[0]}: {sorted(found)}")
    return found[0] if found else None


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, refusing more than ``limit`` whatever size the archive declares."""
    with archive.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{info.filename} is larger than {limit} bytes")
    return data


def _image_entry(files: dict[str, zipfile.ZipInfo], descriptor: Descriptor) -> str:
    configured = descriptor.configuration.image_file
    if configured:
        name = configured.lstrip("/")
        if name in files:
            return name
        raise BundleError(f"image not found in configured place in descriptor: {configured!r}")
    for candidate in (f"{descriptor.namespace}-{descriptor.version}.tar", "image.tar"):
        if candidate in files:
            return candidate
    tars = [name for name in files if "/" not in name and name.lower().endswith(".tar")]
    if len(tars) == 1:
        return tars[0]
    raise BundleError("image not found in configured place in descriptor and not in the root directory")


def inspect_bundle(path: pathlib.Path, limits: BundleLimits) -> BundleContents:
    """Validate the archive and its descriptor; nothing is extracted but small files."""
    with path.open("rb") as f:
        if f.read(4) not in ZIP_SIGNATURES:
            raise BundleError("unknown task bundle archive format")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError("unknown task bundle archive format") from exc
    with archive:
        files = _check_entries(archive, limits)
        descriptor_name = _root_entry(files, "descriptor.yml", "descriptor.yaml")
        if descriptor_name is None:
            raise BundleError("descriptor is not found in the default location")
        try:
            descriptor_bytes = _read_bounded(archive, files[descriptor_name], MAX_DESCRIPTOR_BYTES)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BundleError(
                "failed to extract descriptor.yml from from bundle", "APPE-internal-descriptor-extraction-error"
            ) from exc
        descriptor = parse_descriptor(descriptor_bytes)
        image = _image_entry(files, descriptor)
        logo_name = _root_entry(files, "logo.png")
        logo = None
        if logo_name is not None:
            logo = _read_bounded(archive, files[logo_name], 16 * 1024 * 1024)
            if not logo.startswith(PNG_SIGNATURE):
                raise BundleError("logo.png is not a PNG image")
        return BundleContents(
            descriptor=descriptor,
            descriptor_bytes=descriptor_bytes,
            image_entry=image,
            image_size=files[image].file_size,
            logo=logo,
        )


def extract_entry(bundle: pathlib.Path, entry: str, target: pathlib.Path, limit: int) -> None:
    """Copy one entry to ``target``; refuses more than ``limit`` bytes, whatever the archive says.

    A STORED entry (how image tars are usually zipped) is a contiguous byte range of the bundle:
    it is copied by the kernel (``copy_file_range``) without passing through Python, which
    halves the registry's share of a large upload. Its integrity is checked where it matters:
    the image's manifest and config digests here, every layer's digest by ``docker load``.
    """
    try:
        with zipfile.ZipFile(bundle) as archive:
            info = archive.getinfo(entry)
            if info.compress_type == zipfile.ZIP_STORED and info.file_size <= limit:
                _copy_range(bundle, _data_offset(bundle, info), info.file_size, target)
                return
            written = 0
            with archive.open(info) as src, target.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise BundleError(f"{entry} expands beyond its declared size")
                    dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error, KeyError) as exc:
        raise BundleError(f"{entry} is corrupt in the bundle: {exc}") from exc


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


def stored_range(bundle: pathlib.Path, entry: str) -> tuple[int, int] | None:
    """(offset, length) of an uncompressed entry's bytes in the bundle; None if compressed."""
    with zipfile.ZipFile(bundle) as archive:
        info = archive.getinfo(entry)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    offset = _data_offset(bundle, info)
    if offset + info.file_size > bundle.stat().st_size:
        raise BundleError(f"{entry}: the bundle is shorter than its directory says")
    return offset, info.file_size


def _data_offset(bundle: pathlib.Path, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes start: after its local header, whose extra field may differ from
    the central directory's."""
    with bundle.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise BundleError(f"{info.filename}: bad local header in the bundle")
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = int(fields[-2]), int(fields[-1])
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _copy_range(source: pathlib.Path, offset: int, length: int, target: pathlib.Path) -> None:
    if offset + length > source.stat().st_size:
        raise BundleError(f"{target.name}: the bundle is shorter than its directory says")
    with source.open("rb") as src, target.open("wb") as dst:
        copied = 0
        while copied < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - copied, offset + copied)
            if n == 0:
                raise BundleError(f"{target.name}: the bundle ended early")
            copied += n
