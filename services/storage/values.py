"""Parameter values: validation by type, the on-disk encoding and the echo. Pure code.

Three ways in (reference §5, task-contract.md §3-4):

* :func:`encode` — a JSON ``value`` of a provision request → the files to store under the
  parameter's key and the value to echo. Text is written without a trailing newline.
* :func:`encode_item` — one array item (``…/indexes?value=i/j``).
* :func:`parse_output` — a task's output file text → the typed value (trimmed, upstream's
  parsing rules: ``Integer.parseInt``, ``Double.parseDouble``, ``Boolean.parseBoolean``...).

Validation order and messages are upstream's (:mod:`.errors`). Where upstream answers 500 (a
string for an integer, an unparsable date: Java cast/parse errors) we answer 400 "invalid
parameter type". Deliberate differences: array ``min_size``/``max_size`` are each enforced when
declared (upstream only when both are), array indexes must be exactly ``0..N-1``, integers for a
``number`` may be of any size, ``datetime`` ``before``/``after`` mean what they say (upstream's
check is inverted), and array items are never JSON-parsed strings (upstream quirk §12.2-27).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from services.storage import errors as e
from services.storage.errors import ValueRejected
from services.storage.geojson import check_geojson
from shared.descriptor.types import (
    ArrayType,
    BooleanType,
    DatetimeType,
    EnumerationType,
    FileType,
    GeometryType,
    ImageType,
    IntegerType,
    NumberType,
    ParameterType,
    StringType,
    type_id,
)

INT32: Final = (-(2**31), 2**31 - 1)
ENUM_MAX: Final = 256
_JAVA_INT = re.compile(r"^[+-]?[0-9]+$")
_JAVA_DOUBLE = re.compile(r"^[+-]?(NaN|Infinity|([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[fFdD]?)$")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

Scalar = int | float | str | bool


class Encoded(msgspec.Struct, frozen=True, kw_only=True):
    """What to store for one value: ``files`` as (path relative to the value's key, bytes), the
    key itself being ``""``; ``echo`` is the JSON value of the provisioning response."""

    files: tuple[tuple[str, bytes], ...]
    echo: Any


def wire_type(ptype: ParameterType) -> str:
    """The ``type`` discriminator of parameter values (``INTEGER``, ``ARRAY``...)."""
    return type_id(ptype).upper()


def echo_number(value: float) -> float | str:
    """A double as Jackson writes it: non-finite values as the quoted Java names."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def is_binary(ptype: ParameterType) -> bool:
    return isinstance(ptype, FileType | ImageType)


# --- JSON values --------------------------------------------------------------------------------


def encode(ptype: ParameterType, value: object, *, max_array: int) -> Encoded:
    """Validate a JSON ``value`` for ``ptype``; the files to store and the echo."""
    if isinstance(ptype, ArrayType):
        return _encode_array(ptype, value, max_array)
    if is_binary(ptype):
        raise ValueRejected(e.TYPE)  # files and images come as multipart bodies
    typed, text = _json_scalar(ptype, value)
    check_scalar(ptype, typed)
    echo = echo_number(typed) if isinstance(typed, float) else typed
    return Encoded(files=(("", text.encode()),), echo=echo)


def item_type(atype: ArrayType, indexes: Sequence[int], *, max_array: int) -> ParameterType:
    """The type of the item at ``indexes`` (``[2, 0]`` = item 0 of item 2), checking bounds."""
    current: ParameterType = atype
    for index in indexes:
        if not isinstance(current, ArrayType):
            raise e.structure()
        if index >= max_array or (current.max_size is not None and index > current.max_size - 1):
            raise e.dimensions()
        current = current.subtype
    return current


def encode_item(atype: ArrayType, indexes: Sequence[int], value: object, *, max_array: int) -> Encoded:
    """Validate one array item; files are relative to the item's own key."""
    return encode(item_type(atype, indexes, max_array=max_array), value, max_array=max_array)


def _encode_array(atype: ArrayType, value: object, max_array: int) -> Encoded:
    if not isinstance(value, list):
        raise e.structure()
    items: dict[int, object] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) - {"index", "value"} or "value" not in item:
            raise e.structure()
        index = item.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index in items:
            raise e.structure()
        items[index] = item["value"]
    size = len(items)
    if set(items) != set(range(size)):
        raise e.structure()
    if (
        size > max_array
        or (atype.min_size is not None and size < atype.min_size)
        or (atype.max_size is not None and size > atype.max_size)
    ):
        raise e.dimensions()
    files: list[tuple[str, bytes]] = [("array.yml", f"size: {size}".encode())]
    echo = []
    for index in range(size):
        item_value = items[index]
        if isinstance(item_value, list) and not isinstance(atype.subtype, ArrayType):
            raise e.structure()
        encoded = encode(atype.subtype, item_value, max_array=max_array)
        files.extend((f"{index}/{path}" if path else str(index), data) for path, data in encoded.files)
        echo.append({"index": index, "value": encoded.echo})
    return Encoded(files=tuple(files), echo=echo)


def _json_scalar(ptype: ParameterType, value: object) -> tuple[Scalar, str]:
    """The typed value and its text on disk; "invalid parameter type" (or upstream's message)
    when the JSON kind is wrong."""
    match ptype:
        case IntegerType():
            if isinstance(value, int) and not isinstance(value, bool) and INT32[0] <= value <= INT32[1]:
                return value, str(value)
        case NumberType():
            if isinstance(value, int) and not isinstance(value, bool):
                return float(value), str(value)
            if isinstance(value, float):
                return value, repr(value)
            if isinstance(value, str) and (number := java_double(value)) is not None:
                return number, value
        case StringType() | DatetimeType() | GeometryType():
            if isinstance(value, str):
                return value, value
        case BooleanType():
            if isinstance(value, bool):
                return value, "true" if value else "false"
            raise ValueRejected(e.MISMATCH)
        case EnumerationType():
            if isinstance(value, str):
                return value, value
            raise ValueRejected(e.MISMATCH)
    raise ValueRejected(e.TYPE)


def java_double(text: str) -> float | None:
    """``nan``/``inf``/``-inf`` (any case) or what ``Double.parseDouble`` reads, else None."""
    special = _SPECIAL.get(text.lower())
    if special is not None:
        return special
    if not _JAVA_DOUBLE.match(text):
        return None
    return float(text.rstrip("fFdD").replace("Infinity", "inf"))


# --- constraints --------------------------------------------------------------------------------


def check_scalar(ptype: ParameterType, value: Scalar) -> None:
    """Upstream's constraint checks, in upstream's order."""
    match ptype:
        case IntegerType() | NumberType():
            assert isinstance(value, int | float)
            _bounds(ptype, value)
            if isinstance(ptype, NumberType):
                if not ptype.infinity_allowed and math.isinf(value):
                    raise ValueRejected(e.INFINITY)
                if not ptype.nan_allowed and math.isnan(value):
                    raise ValueRejected(e.NAN)
        case StringType():
            assert isinstance(value, str)
            length = len(value.encode("utf-16-le")) // 2  # Java counts UTF-16 units
            if length < ptype.min_length:
                raise ValueRejected(e.GT)
            if ptype.max_length is not None and length > ptype.max_length:
                raise ValueRejected(e.GEQ)  # sic: upstream's tests assert this message
        case EnumerationType():
            assert isinstance(value, str)
            if "\n" in value or "\r" in value or len(value) > ENUM_MAX:
                raise ValueRejected(e.GT)
            if value not in ptype.values:
                raise ValueRejected(e.MISMATCH)
        case DatetimeType():
            assert isinstance(value, str)
            instant = parse_instant(value)
            if instant is None:
                raise ValueRejected(e.TYPE)
            if ptype.before is not None and not instant < ptype.before:
                raise ValueRejected(e.BEFORE)
            if ptype.after is not None and not instant > ptype.after:
                raise ValueRejected(e.AFTER)
        case GeometryType():
            assert isinstance(value, str)
            check_geojson(value)
        case BooleanType():
            pass
        case _:
            raise ValueRejected(e.TYPE)


def _bounds(ptype: IntegerType | NumberType, value: float) -> None:
    # written as upstream's failing conditions so NaN passes them, as in Java
    if ptype.gt is not None and value <= ptype.gt:
        raise ValueRejected(e.GT)
    if ptype.geq is not None and value < ptype.geq:
        raise ValueRejected(e.GEQ)
    if ptype.lt is not None and value >= ptype.lt:
        raise ValueRejected(e.LT)
    if ptype.leq is not None and value > ptype.leq:
        raise ValueRejected(e.LEQ)


_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$")


def parse_instant(text: str) -> dt.datetime | None:
    """An ISO-8601 instant with a zone (``2024-02-23T18:00:00Z``), as ``Instant.parse`` reads."""
    if not _INSTANT.match(text):
        return None
    base, _, fraction = text.partition(".")
    if fraction:  # Python reads at most microseconds
        digits = re.match(r"\d+", fraction)
        assert digits is not None
        text = f"{base}.{digits.group()[:6].ljust(6, '0')}{fraction[digits.end() :]}"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


# --- text on disk -------------------------------------------------------------------------------


def parse_output(ptype: ParameterType, raw: bytes) -> Any:
    """The JSON value of a task's output file for a scalar type; ValueRejected if invalid."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueRejected(e.TYPE) from None
    if not text:
        raise ValueRejected("file for parameter is blank", "APPE-internal-is-blank")
    value = _text_scalar(ptype, text)
    check_scalar(ptype, value)
    return echo_number(value) if isinstance(value, float) else value


def _text_scalar(ptype: ParameterType, text: str) -> Scalar:
    match ptype:
        case IntegerType():
            if _JAVA_INT.match(text) and INT32[0] <= int(text) <= INT32[1]:
                return int(text)
            raise ValueRejected(e.TYPE)
        case NumberType():
            number = java_double(text)
            if number is None:
                raise ValueRejected(e.TYPE)
            return number
        case BooleanType():
            return text.lower() == "true"
        case _:
            return text


def stored_value(ptype: ParameterType, raw: bytes) -> Any:
    """The JSON value of a stored, already validated input file (no trimming)."""
    text = raw.decode("utf-8", errors="replace")
    match ptype:
        case IntegerType():
            return int(text) if _JAVA_INT.match(text) else text
        case NumberType():
            number = java_double(text)
            return text if number is None else echo_number(number)
        case BooleanType():
            return text.lower() == "true"
        case FileType() | ImageType():
            return None
        case _:
            return text
