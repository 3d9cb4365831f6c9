"""Reading descriptor fields: violations, typed field access and the quantities fields hold.

Validation never stops at the first fault: every check appends a :class:`Violation` (field path
and message) to a :class:`Violations` collector and carries on, so a descriptor is reported with
all its faults at once. Paths are dot-separated keys and list indexes: ``inputs.a.type.geq``,
``authors.0.email``; the empty path is the document itself.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

Path = tuple[str, ...]


class Violation(msgspec.Struct, frozen=True):
    """One fault of a descriptor: where (``inputs.a.type.id``) and what."""

    path: str
    message: str


class Violations:
    """Collects every violation found while validating one descriptor."""

    def __init__(self) -> None:
        self.items: list[Violation] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append(Violation(".".join(path), message))

    def __len__(self) -> int:
        return len(self.items)


def describe(value: object) -> str:
    """The JSON kind of a YAML value, for messages."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "list"
        case Mapping():
            return "mapping"
        case _:
            return type(value).__name__


def as_int(value: object) -> int | None:
    """An integer in the JSON-schema sense: ``3`` and ``3.0`` are, ``true`` and ``3.5`` are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


class Fields:
    """Typed reads of one mapping's fields, recording a violation for each bad one.

    An absent key and an explicit ``null`` both read as ``None``; a required field reports
    ``is required`` when absent and ``must be a <kind>, got null`` when null (``version:`` with
    nothing after it is the classic).
    """

    def __init__(self, raw: Mapping[Any, Any], path: Path, errors: Violations) -> None:
        self.raw, self.path, self.errors = raw, path, errors

    def add(self, key: str, message: str) -> None:
        self.errors.add((*self.path, key), message)

    def _get(self, key: str, kind: type, kind_name: str, required: bool) -> Any:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.add(key, "is required" if key not in self.raw else f"must be a {kind_name}, got null")
            return None
        # bool is an int in Python, never in YAML/JSON
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.add(key, f"must be a {kind_name}, got {describe(value)}")
            return None
        return value

    def text(
        self,
        key: str,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        max_length: int | None = None,
        non_empty: bool = False,
    ) -> str | None:
        value: str | None = self._get(key, str, "string", required)
        if value is None:
            return None
        problem = None
        if non_empty and not value.strip():
            problem = "must not be empty"
        elif max_length is not None and len(value) > max_length:
            problem = f"must be at most {max_length} characters long, got {len(value)}"
        elif pattern is not None and not pattern.match(value):
            problem = hint
        if problem:
            self.add(key, problem)
            return None
        return value

    def integer(self, key: str, minimum: int) -> int | None:
        raw = self.raw.get(key)
        if raw is None:
            return None
        value = as_int(raw)
        if value is None:
            self.add(key, f"must be an integer, got {describe(raw)}")
        elif value < minimum:
            self.add(key, f"must be at least {minimum}, got {value}")
            return None
        return value

    def boolean(self, key: str) -> bool:
        return bool(self._get(key, bool, "boolean", False))

    def mapping(self, key: str, required: bool = False) -> Mapping[Any, Any] | None:
        value: Mapping[Any, Any] | None = self._get(key, Mapping, "mapping", required)
        return value

    def sequence(self, key: str, required: bool = False) -> list[Any] | None:
        value: list[Any] | None = self._get(key, list, "list", required)
        return value


# --- quantities ---------------------------------------------------------------------------------

_MEMORY = re.compile(r"^(0|[1-9]\d*)(\.\d+)?\s*(Ki|Mi|Gi|Ti|Pi|Ei|Zi|Yi|k|M|G|T|P|E|Z|Y|R|Q)(B|Byte|byte|b|bit)?$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DECIMAL_PREFIXES: Final = "kMGTPEZYRQ"
_BINARY_PREFIXES: Final = "KMGTPEZY"


def memory_bytes(text: str) -> int | None:
    """Bytes in a memory size such as ``2Gi``, ``512 MiB`` or ``1.5G`` (``None`` if malformed).

    The unit prefix is mandatory as in the upstream schema (``2`` alone is rejected); the ``B``
    or ``bit`` suffix of upstream's unit parser is accepted too, and the end is anchored
    (upstream's schema pattern is not, so ``2Gifoo`` passed there). Rounded to the nearest byte
    as upstream's ``Unit`` does.
    """
    match = _MEMORY.match(text)
    if match is None:
        return None
    whole, fraction, prefix, suffix = match.group(1, 2, 3, 4)
    multiplier: int
    if prefix.endswith("i"):
        multiplier = 1 << (10 * (_BINARY_PREFIXES.index(prefix[0]) + 1))
    else:
        multiplier = 1000 ** (_DECIMAL_PREFIXES.index(prefix) + 1)
    # exact rational arithmetic: a float would lose bytes on sizes past 2**53
    numerator = int(whole + (fraction or "")[1:])
    denominator: int = 10 ** (len(fraction) - 1 if fraction else 0)
    if suffix in ("b", "bit"):
        denominator *= 8
    return (numerator * multiplier * 2 + denominator) // (2 * denominator)


def duration_seconds(value: object) -> int | None:
    """Seconds in ``3600``, ``"3600"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or ``"1h30m"``."""
    seconds = as_int(value)
    if seconds is not None or not isinstance(value, str):
        return seconds
    text = value.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not text or match is None:
        return None
    days, hours, minutes, secs = (int(group or 0) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def parse_datetime(value: object) -> dt.datetime | None:
    """An RFC 3339 date-time with a time zone, normalised to UTC (``None`` if not one)."""
    if not isinstance(value, str) or "T" not in value.upper():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(dt.UTC)
