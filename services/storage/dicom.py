"""The width and height of a DICOM file, read from its header (``Columns`` and ``Rows``).

Upstream reads them with dcm4che (``DicomFormat.getDimensions``); Pillow cannot read DICOM at
all, so without this every DICOM image of a parameter with ``max_width``/``max_height`` would be
refused as "invalid image dimension". Only the header is walked: elements are in ascending tag
order, so the walk stops at the first element past group ``0028`` (before the pixel data).
Sequences of undefined length (common in WSI files, e.g. the dimension index sequence) are
skipped item by item. Deflated data sets are not decoded (dimensions unknown).
"""

from __future__ import annotations

import pathlib
import struct
from typing import BinaryIO, Final

_PREAMBLE: Final = 128
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = (0xFFFE, 0xE000)
_ITEM_END: Final = (0xFFFE, 0xE00D)
_SEQUENCE_END: Final = (0xFFFE, 0xE0DD)
_ROWS: Final = (0x0028, 0x0010)
_COLUMNS: Final = (0x0028, 0x0011)
# explicit VRs with a 2-byte reserved field and a 4-byte length
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_BE: Final = "1.2.840.10008.1.2.2"
_DEFLATED: Final = "1.2.840.10008.1.2.1.99"
MAX_DEPTH: Final = 16
MAX_ELEMENTS: Final = 100_000


class _Malformed(Exception):
    pass


class _Walker:
    """Reads data elements from ``f`` in one transfer syntax."""

    def __init__(self, f: BinaryIO, *, explicit: bool, little: bool) -> None:
        self.f = f
        self.explicit = explicit
        self.order = "<" if little else ">"
        self.count = 0

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _Malformed("truncated")
        return data

    def tag(self) -> tuple[int, int] | None:
        data = self.f.read(4)
        if not data:
            return None
        if len(data) != 4:
            raise _Malformed("truncated")
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise _Malformed("too many elements")
        group, element = struct.unpack(f"{self.order}HH", data)
        return group, element

    def header(self, tag: tuple[int, int]) -> tuple[bytes | None, int]:
        """The VR (explicit syntaxes only) and value length of the element whose tag was read."""
        if tag[0] == 0xFFFE or not self.explicit:
            return None, struct.unpack(f"{self.order}I", self._read(4))[0]
        vr = self._read(2)
        if vr in _LONG_VRS:
            self._read(2)
            return vr, struct.unpack(f"{self.order}I", self._read(4))[0]
        return vr, struct.unpack(f"{self.order}H", self._read(2))[0]

    def skip(self, length: int) -> None:
        self.f.seek(length, 1)

    def value(self, length: int) -> bytes:
        return self._read(length)

    def unsigned(self, length: int) -> int:
        data = self._read(length)
        if length == 2:
            return int(struct.unpack(f"{self.order}H", data)[0])
        if length == 4:
            return int(struct.unpack(f"{self.order}I", data)[0])
        raise _Malformed("Rows/Columns is not US")

    def skip_sequence(self, depth: int) -> None:
        """Skip the items of a sequence of undefined length, up to its delimiter."""
        if depth > MAX_DEPTH:
            raise _Malformed("sequences nested too deeply")
        while True:
            tag = self.tag()
            if tag is None:
                raise _Malformed("unterminated sequence")
            _, length = self.header(tag)
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise _Malformed("expected an item")
            if length != _UNDEFINED:
                self.skip(length)
                continue
            while True:  # an item of undefined length: its elements, up to the item delimiter
                inner = self.tag()
                if inner is None:
                    raise _Malformed("unterminated item")
                _, inner_length = self.header(inner)
                if inner == _ITEM_END:
                    break
                if inner_length == _UNDEFINED:
                    self.skip_sequence(depth + 1)
                else:
                    self.skip(inner_length)


def _meta(f: BinaryIO) -> str:
    """Walk the file meta group (always explicit VR little endian); the transfer syntax UID."""
    walker = _Walker(f, explicit=True, little=True)
    syntax = ""
    while True:
        start = f.tell()
        tag = walker.tag()
        if tag is None or tag[0] != 0x0002:
            f.seek(start)
            return syntax
        _, length = walker.header(tag)
        if tag == (0x0002, 0x0010):
            syntax = walker.value(length).decode("ascii", "replace").strip("\0 ")
        else:
            walker.skip(length)


def dicom_dimensions(path: pathlib.Path) -> tuple[int, int] | None:
    """(width, height) from ``Columns`` and ``Rows``, or None when absent or unreadable."""
    try:
        with path.open("rb") as f:
            f.seek(_PREAMBLE)
            if f.read(4) != b"DICM":
                return None
            syntax = _meta(f)
            if syntax == _DEFLATED:
                return None
            walker = _Walker(f, explicit=syntax != _IMPLICIT_LE, little=syntax != _EXPLICIT_BE)
            found: dict[tuple[int, int], int] = {}
            while (tag := walker.tag()) is not None and tag[0] <= 0x0028:
                _, length = walker.header(tag)
                if tag in (_ROWS, _COLUMNS) and length != _UNDEFINED:
                    found[tag] = walker.unsigned(length)
                    if len(found) == 2:
                        return found[_COLUMNS], found[_ROWS]
                elif length == _UNDEFINED:
                    walker.skip_sequence(0)
                else:
                    walker.skip(length)
    except (_Malformed, OSError, struct.error):
        return None
    return None
