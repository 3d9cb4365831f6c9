"""Parameter types of a task descriptor: the typed model, type specs and typed defaults.

Type specs follow the upstream v0 schema (reference §4.4): a short form (``type: integer``) for
the types without required constraints, a long form mapping with ``id`` and constraints for all.
As in upstream, unknown keys inside a type are ignored (real descriptors carry ``le:`` or
``allow_missing``); what is given must be well typed and consistent. Where upstream crashes we
accept what the schema means: ``datetime`` ``before``/``after`` are real constraints here.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from shared.descriptor.fields import (
    Path,
    Violations,
    as_int,
    as_number,
    describe,
    memory_bytes,
    parse_datetime,
)

# --- the typed model ----------------------------------------------------------------------------


class _Type(msgspec.Struct, frozen=True, kw_only=True, tag_field="id"):
    pass


class IntegerType(_Type, frozen=True, kw_only=True, tag="integer"):
    gt: int | None = None
    lt: int | None = None
    geq: int | None = None
    leq: int | None = None


class NumberType(_Type, frozen=True, kw_only=True, tag="number"):
    gt: float | None = None
    lt: float | None = None
    geq: float | None = None
    leq: float | None = None
    infinity_allowed: bool = False
    nan_allowed: bool = False


class StringType(_Type, frozen=True, kw_only=True, tag="string"):
    min_length: int = 0
    max_length: int | None = None


class BooleanType(_Type, frozen=True, kw_only=True, tag="boolean"):
    pass


class EnumerationType(_Type, frozen=True, kw_only=True, tag="enumeration"):
    values: tuple[str, ...]


class DatetimeType(_Type, frozen=True, kw_only=True, tag="datetime"):
    before: dt.datetime | None = None
    after: dt.datetime | None = None


class GeometryType(_Type, frozen=True, kw_only=True, tag="geometry"):
    pass


class FileType(_Type, frozen=True, kw_only=True, tag="file"):
    max_file_size: str | None = None
    max_file_size_bytes: int | None = None
    formats: tuple[str, ...] | None = None


class ImageType(_Type, frozen=True, kw_only=True, tag="image"):
    max_file_size: str | None = None
    max_file_size_bytes: int | None = None
    formats: tuple[str, ...] | None = None
    max_width: int | None = None
    max_height: int | None = None


class ArrayType(_Type, frozen=True, kw_only=True, tag="array"):
    subtype: ParameterType
    min_size: int | None = None
    max_size: int | None = None


ParameterType = (
    IntegerType
    | NumberType
    | StringType
    | BooleanType
    | EnumerationType
    | DatetimeType
    | GeometryType
    | FileType
    | ImageType
    | ArrayType
)
"""Every parameter type, tagged by ``id`` as in the descriptor's long form."""

Default = bool | int | float | str
"""A typed input default: booleans, integers, numbers, and text for the string-like types.

A non-finite number default is the text ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (what
upstream renders, and what ``float()`` reads), since JSON cannot carry it."""


def type_id(ptype: ParameterType) -> str:
    """The ``id`` of a type as written in descriptors (``integer``, ``array``...)."""
    return str(type(ptype).__struct_config__.tag)


TYPE_IDS: Final = (
    "integer", "number", "string", "boolean", "enumeration", "datetime", "geometry", "file", "image", "array"
)  # fmt: skip
_LONG_FORM_ONLY: Final = frozenset({"enumeration", "array"})
FILE_FORMATS: Final = ("binary", "text")
IMAGE_FORMATS: Final = ("dicom", "jpeg", "png", "tiff", "wsidicom")
_ENUM_ITEM_MAX: Final = 256


# --- type specs ---------------------------------------------------------------------------------


def parse_type(raw: object, path: Path, errors: Violations) -> ParameterType | None:
    """The type of a ``type:`` value (short or long form), or ``None`` after recording why not."""
    if raw is None:
        errors.add(path, "is required")
        return None
    if isinstance(raw, str):
        if raw in _LONG_FORM_ONLY:
            errors.add(path, f"type '{raw}' needs the long form: a mapping with its id and constraints")
            return None
        if raw not in TYPE_IDS:
            errors.add(path, f"unknown type '{raw}'; expected one of {', '.join(TYPE_IDS)}")
            return None
        return _parse_long_form(raw, {}, path, errors)
    if not isinstance(raw, Mapping):
        errors.add(path, f"must be a type name or a mapping with an id, got {describe(raw)}")
        return None
    type_id = raw.get("id")
    if type_id is None:
        errors.add((*path, "id"), "is required")
        return None
    if not isinstance(type_id, str) or type_id not in TYPE_IDS:
        errors.add((*path, "id"), f"unknown type {type_id!r}; expected one of {', '.join(TYPE_IDS)}")
        return None
    return _parse_long_form(type_id, raw, path, errors)


def _parse_long_form(type_id: str, spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    count = len(errors.items)
    result = _LONG_FORMS[type_id](spec, path, errors)
    return result if len(errors.items) == count else None


def _integer(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    gt, lt, geq, leq = (_int_field(spec, key, path, errors) for key in ("gt", "lt", "geq", "leq"))
    result = IntegerType(gt=gt, lt=lt, geq=geq, leq=leq)
    _check_range(result, path, errors)
    return result


def _number(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    gt, lt, geq, leq = (_number_field(spec, key, path, errors) for key in ("gt", "lt", "geq", "leq"))
    infinity_allowed = _bool_field(spec, "infinity_allowed", path, errors)
    nan_allowed = _bool_field(spec, "nan_allowed", path, errors)
    result = NumberType(gt=gt, lt=lt, geq=geq, leq=leq, infinity_allowed=infinity_allowed, nan_allowed=nan_allowed)
    _check_range(result, path, errors)
    return result


def _string(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    min_length = _int_field(spec, "min_length", path, errors, minimum=0)
    max_length = _int_field(spec, "max_length", path, errors, minimum=0)
    if min_length is not None and max_length is not None and min_length > max_length:
        errors.add(path, f"min_length {min_length} is greater than max_length {max_length}")
    return StringType(min_length=min_length or 0, max_length=max_length)


def _enumeration(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    return EnumerationType(values=_enum_values(spec.get("values"), (*path, "values"), errors))


def _datetime(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    after = _datetime_field(spec, "after", path, errors)
    before = _datetime_field(spec, "before", path, errors)
    if after is not None and before is not None and after >= before:
        errors.add(path, "after must be earlier than before")
    return DatetimeType(before=before, after=after)


def _file(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    size, size_bytes = _memory_field(spec, "max_file_size", path, errors)
    formats = _formats(spec, path, errors, FILE_FORMATS)
    return FileType(max_file_size=size, max_file_size_bytes=size_bytes, formats=formats)


def _image(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    size, size_bytes = _memory_field(spec, "max_file_size", path, errors)
    return ImageType(
        max_file_size=size,
        max_file_size_bytes=size_bytes,
        formats=_formats(spec, path, errors, IMAGE_FORMATS),
        max_width=_int_field(spec, "max_width", path, errors, minimum=1),
        max_height=_int_field(spec, "max_height", path, errors, minimum=1),
    )


def _array(spec: Mapping[Any, Any], path: Path, errors: Violations) -> ParameterType | None:
    min_size = _int_field(spec, "min_size", path, errors, minimum=0)
    max_size = _int_field(spec, "max_size", path, errors, minimum=0)
    if min_size is not None and max_size is not None and min_size > max_size:
        errors.add(path, f"min_size {min_size} is greater than max_size {max_size}")
    subtype = parse_type(spec.get("subtype"), (*path, "subtype"), errors)
    return None if subtype is None else ArrayType(subtype=subtype, min_size=min_size, max_size=max_size)


_LONG_FORMS: Final[dict[str, Callable[[Mapping[Any, Any], Path, Violations], ParameterType | None]]] = {
    "integer": _integer,
    "number": _number,
    "string": _string,
    "boolean": lambda spec, path, errors: BooleanType(),
    "enumeration": _enumeration,
    "datetime": _datetime,
    "geometry": lambda spec, path, errors: GeometryType(),
    "file": _file,
    "image": _image,
    "array": _array,
}


def _int_field(
    spec: Mapping[Any, Any], key: str, path: Path, errors: Violations, minimum: int | None = None
) -> int | None:
    raw = spec.get(key)
    if raw is None:
        return None
    value = as_int(raw)
    if value is None:
        errors.add((*path, key), f"must be an integer, got {describe(raw)}")
    elif minimum is not None and value < minimum:
        errors.add((*path, key), f"must be at least {minimum}, got {value}")
        return None
    return value


def _number_field(spec: Mapping[Any, Any], key: str, path: Path, errors: Violations) -> float | None:
    raw = spec.get(key)
    if raw is None:
        return None
    value = as_number(raw)
    if value is None:
        errors.add((*path, key), f"must be a number, got {describe(raw)}")
        return None
    if not math.isfinite(value):
        errors.add((*path, key), "must be a finite number")
        return None
    return float(value)


def _bool_field(spec: Mapping[Any, Any], key: str, path: Path, errors: Violations) -> bool:
    raw = spec.get(key, False)
    if not isinstance(raw, bool):
        errors.add((*path, key), f"must be a boolean, got {describe(raw)}")
        return False
    return raw


def _datetime_field(spec: Mapping[Any, Any], key: str, path: Path, errors: Violations) -> dt.datetime | None:
    raw = spec.get(key)
    if raw is None:
        return None
    value = parse_datetime(raw)
    if value is None:
        errors.add((*path, key), "must be a date-time with a time zone, e.g. 2024-02-23T18:00:00Z")
    return value


def _memory_field(spec: Mapping[Any, Any], key: str, path: Path, errors: Violations) -> tuple[str | None, int | None]:
    raw = spec.get(key)
    if raw is None:
        return None, None
    size = memory_bytes(raw) if isinstance(raw, str) else None
    if size is None:
        errors.add((*path, key), f"must be a memory size such as 100Mi or 2GiB, got {raw!r}")
        return None, None
    return raw, size


def _formats(spec: Mapping[Any, Any], path: Path, errors: Violations, known: tuple[str, ...]) -> tuple[str, ...] | None:
    raw = spec.get("formats")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        errors.add((*path, "formats"), f"must be a non-empty list of {', '.join(known)}")
        return None
    for index, item in enumerate(raw):
        if item not in known:
            expected = ", ".join(known)
            errors.add((*path, "formats", str(index)), f"unknown format {item!r}; expected one of {expected}")
    return tuple(raw)


def _enum_values(raw: object, path: Path, errors: Violations) -> tuple[str, ...]:
    if raw is None:
        errors.add(path, "is required")
        return ()
    if not isinstance(raw, list) or not raw:
        errors.add(path, f"must be a non-empty list of strings, got {describe(raw)}")
        return ()
    seen: set[str] = set()
    for index, item in enumerate(raw):
        item_path = (*path, str(index))
        if not isinstance(item, str):
            errors.add(item_path, f"must be a string, got {describe(item)} (quote values like yes, no or 1)")
        elif not 1 <= len(item) <= _ENUM_ITEM_MAX:
            errors.add(item_path, f"must be 1 to {_ENUM_ITEM_MAX} characters long, got {len(item)}")
        elif "\r" in item or "\n" in item:
            errors.add(item_path, "must be a single line")
        elif item in seen:
            errors.add(item_path, f"duplicate value {item!r}")
        else:
            seen.add(item)
    return tuple(item for item in raw if isinstance(item, str))


def _check_range(spec: IntegerType | NumberType, path: Path, errors: Violations) -> None:
    """Reject bounds no value can satisfy: such a parameter could never be provisioned."""
    lowers = [(spec.gt, True), (spec.geq, False)]
    uppers = [(spec.lt, True), (spec.leq, False)]
    for low, low_strict in lowers:
        for high, high_strict in uppers:
            if low is None or high is None:
                continue
            if low > high or (low == high and (low_strict or high_strict)):
                errors.add(path, "its bounds admit no value")
                return


# --- defaults -----------------------------------------------------------------------------------


def parse_default(ptype: ParameterType, raw: object, path: Path, errors: Violations) -> Default | None:
    """The typed default of an input, checked against its type's constraints."""
    match ptype:
        case BooleanType():
            if isinstance(raw, bool):
                return raw
            errors.add(path, f"must be a boolean, got {describe(raw)}")
        case IntegerType():
            value = as_int(raw)
            if value is None:
                errors.add(path, f"must be an integer, got {describe(raw)}")
            elif _within(ptype, value, path, errors):
                return value
        case NumberType():
            number = as_number(raw)
            if number is None:
                errors.add(path, f"must be a number, got {describe(raw)}")
            elif math.isnan(number):
                if ptype.nan_allowed:
                    return "NaN"
                errors.add(path, "must not be NaN unless nan_allowed is true")
            elif math.isinf(number) and not ptype.infinity_allowed:
                errors.add(path, "must be finite unless infinity_allowed is true")
            elif _within(ptype, number, path, errors):
                # JSON (and so the stored model) has no NaN or infinity: keep them as Java text
                return number if math.isfinite(number) else ("Infinity" if number > 0 else "-Infinity")
        case StringType():
            if not isinstance(raw, str):
                errors.add(path, f"must be a string, got {describe(raw)}")
            elif len(raw) < ptype.min_length:
                errors.add(path, f"must be at least {ptype.min_length} characters long")
            elif ptype.max_length is not None and len(raw) > ptype.max_length:
                errors.add(path, f"must be at most {ptype.max_length} characters long")
            else:
                return raw
        case EnumerationType():
            if isinstance(raw, str) and raw in ptype.values:
                return raw
            errors.add(path, f"must be one of {', '.join(ptype.values)}, got {raw!r}")
        case DatetimeType():
            return _datetime_default(ptype, raw, path, errors)
        case GeometryType():
            return _geometry_default(raw, path, errors)
        case FileType() | ImageType() | ArrayType():
            errors.add(path, f"a {type_id(ptype)} parameter cannot have a default")
    return None


def _within(ptype: IntegerType | NumberType, value: float, path: Path, errors: Violations) -> bool:
    checks = (
        (ptype.gt, operator.gt, "greater than"),
        (ptype.geq, operator.ge, "greater than or equal to"),
        (ptype.lt, operator.lt, "less than"),
        (ptype.leq, operator.le, "less than or equal to"),
    )
    for bound, holds, wording in checks:
        if bound is not None and not holds(value, bound):
            errors.add(path, f"must be {wording} {bound}, got {value}")
            return False
    return True


def _datetime_default(ptype: DatetimeType, raw: object, path: Path, errors: Violations) -> str | None:
    value = parse_datetime(raw)
    if value is None or not isinstance(raw, str):
        errors.add(path, "must be a date-time with a time zone, e.g. 2024-02-23T18:00:00Z")
        return None
    if ptype.before is not None and not value < ptype.before:
        errors.add(path, f"must be before {ptype.before.isoformat()}")
        return None
    if ptype.after is not None and not value > ptype.after:
        errors.add(path, f"must be after {ptype.after.isoformat()}")
        return None
    return raw


def _geometry_default(raw: object, path: Path, errors: Violations) -> str | None:
    """GeoJSON text; a YAML mapping is accepted and kept as its JSON text (upstream's rendering)."""
    try:
        parsed = msgspec.json.decode(raw) if isinstance(raw, str) else raw
        text = raw if isinstance(raw, str) else msgspec.json.encode(raw).decode()
    except (msgspec.DecodeError, TypeError):
        parsed, text = None, ""
    if not isinstance(parsed, Mapping) or not isinstance(parsed.get("type"), str):
        errors.add(path, "must be a GeoJSON object")
        return None
    return text
