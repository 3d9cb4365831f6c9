"""File and image values: checks on a file received into a temporary area (reference §5).

Images, as upstream: a zip (``PK\\x03\\x04``) is a WSI-DICOM archive (every entry must be DICOM,
``DICM`` at byte 128) and is unpacked into a directory; otherwise, with ``formats`` declared, the
first format whose signature matches (png, jpeg, tiff, dicom) else "invalid image format"; then
``max_width``/``max_height`` (dimensions read from the header only: DICOM's ``Columns``/``Rows``
by :mod:`.dicom`, other formats with Pillow; unreadable → "invalid image dimension"),
``max_file_size`` ("invalid image size"), and a TIFF must be RGB and not tiled ("invalid
image"). Files: any bytes; unlike upstream, a declared ``max_file_size`` is enforced.

Only headers are read, never pixels, so Pillow's decompression-bomb guard (which refuses to
even open a large whole-slide image) is off in this process.
"""

from __future__ import annotations

import pathlib
import re
import zipfile
import zlib
from typing import Final

from PIL import Image

from services.storage import errors as e
from services.storage.dicom import dicom_dimensions
from services.storage.errors import ValueRejected
from shared.descriptor.types import FileType, ImageType

Image.MAX_IMAGE_PIXELS = None  # headers only: see the module docstring

ZIP_MAGIC: Final = b"PK\x03\x04"
_SIGNATURES: Final = {
    "png": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"),
    "jpeg": lambda h: h.startswith(b"\xff\xd8\xff"),
    "tiff": lambda h: h.startswith((b"II*\x00", b"MM\x00*")),
    "dicom": lambda h: h[128:132] == b"DICM",
}
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
MAX_DICOM_ENTRIES: Final = 100_000
UNREADABLE_ZIP: Final = (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, zlib.error)


def _head(path: pathlib.Path) -> bytes:
    with path.open("rb") as f:
        return f.read(132)


def check_file(ptype: FileType, path: pathlib.Path) -> None:
    if ptype.max_file_size_bytes is not None and path.stat().st_size > ptype.max_file_size_bytes:
        raise ValueRejected("invalid file size")


def check_image(ptype: ImageType, path: pathlib.Path, max_unpacked: int | None = None) -> list[tuple[str, str]] | None:
    """Validate an image file; for a WSI-DICOM zip, the (entry, stored name) pairs to unpack
    (refused when they would unpack to more than ``max_unpacked`` bytes)."""
    head = _head(path)
    if head.startswith(ZIP_MAGIC):
        if ptype.formats is not None and "wsidicom" not in ptype.formats:
            raise ValueRejected(e.IMAGE_FORMAT)
        return dicom_entries(path, max_unpacked)
    fmt = None
    if ptype.formats is not None:
        fmt = next((f for f in ptype.formats if f in _SIGNATURES and _SIGNATURES[f](head)), None)
        if fmt is None:
            raise ValueRejected(e.IMAGE_FORMAT)
    if ptype.max_width is not None or ptype.max_height is not None:
        size = _dimensions(path)
        if size is None:
            raise ValueRejected(e.IMAGE_DIMENSION)
        if ptype.max_width is not None and size[0] > ptype.max_width:
            raise ValueRejected(e.IMAGE_WIDTH)
        if ptype.max_height is not None and size[1] > ptype.max_height:
            raise ValueRejected(e.IMAGE_HEIGHT)
    if ptype.max_file_size_bytes is not None and path.stat().st_size > ptype.max_file_size_bytes:
        raise ValueRejected(e.IMAGE_SIZE)
    if fmt == "tiff" and not _plain_rgb_tiff(path):
        raise ValueRejected(e.IMAGE)
    return None


def _dimensions(path: pathlib.Path) -> tuple[int, int] | None:
    if _SIGNATURES["dicom"](_head(path)):
        return dicom_dimensions(path)  # Pillow cannot read DICOM
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # Pillow raises many kinds for unreadable headers; all mean "unknown"
        return None


def _plain_rgb_tiff(path: pathlib.Path) -> bool:
    try:
        with Image.open(path) as image:
            tags = getattr(image, "tag_v2", {})
            return image.mode == "RGB" and 322 not in tags  # 322: TileWidth
    except Exception:
        return False


def dicom_entries(path: pathlib.Path, max_unpacked: int | None = None) -> list[tuple[str, str]]:
    """The file entries of a WSI-DICOM zip, each a DICOM file, with safe flat names."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            if not infos or len(infos) > MAX_DICOM_ENTRIES:
                raise ValueRejected(e.IMAGE_FORMAT)
            if max_unpacked is not None and sum(i.file_size for i in infos) > max_unpacked:
                raise ValueRejected(e.IMAGE_SIZE)
            pairs: list[tuple[str, str]] = []
            seen: set[str] = set()
            for info in infos:
                with z.open(info) as f:
                    if f.read(132)[128:132] != b"DICM":
                        raise ValueRejected(e.IMAGE_FORMAT)
                parts = info.filename.split("/")
                name = parts[-1]
                # flattened, so no entry could land outside the directory; but an archive that
                # tries to (absolute or ``..`` names) is refused rather than silently renamed
                escapes = info.filename.startswith("/") or ".." in parts
                if escapes or not _ENTRY_NAME.match(name) or name in seen:
                    raise ValueRejected(e.IMAGE_FORMAT)
                seen.add(name)
                pairs.append((info.filename, name))
            return pairs
    except UNREADABLE_ZIP:
        raise ValueRejected(e.TYPE) from None  # upstream: the zip's IOException → "invalid parameter type"
