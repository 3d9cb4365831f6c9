"""The upstream JSON of a task (reference §2.4): TaskDescription, TaskInput, TaskOutput, types.

Upstream's quirks are kept because clients read them: ``display_name`` on inputs but
``displayName`` on outputs, ``default`` as a string (``"null"`` when absent, Java's rendering of
numbers), ``derivedFrom`` as the bare input name. Encode the structs with ``msgspec.json``.

Parameter ids are derived, not stored: :func:`parameter_id` is a UUIDv5 of the task id and the
parameter's reference, so every replica renders the same ids without a lookup.

One deliberate difference: an output's ``optional`` is what the descriptor says (upstream always
answers ``false`` although, since 2026-02, it skips missing optional outputs).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Literal

import msgspec

from shared.descriptor.model import Descriptor, Input, Output
from shared.descriptor.types import (
    ArrayType,
    BooleanType,
    DatetimeType,
    Default,
    EnumerationType,
    FileType,
    GeometryType,
    ImageType,
    IntegerType,
    NumberType,
    ParameterType,
    StringType,
)


class TaskAuthor(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    first_name: str
    last_name: str
    organization: str
    email: str
    is_contact: bool


class TaskDescription(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    namespace: str
    version: str
    description: str | None
    authors: tuple[TaskAuthor, ...]


# --- types: absent constraints are omitted, except where upstream always writes the field -------


class _WireType(msgspec.Struct, frozen=True, kw_only=True, tag_field="id", rename="camel"):
    pass


class IntegerWire(_WireType, frozen=True, kw_only=True, tag="integer", omit_defaults=True):
    gt: int | None = None
    lt: int | None = None
    geq: int | None = None
    leq: int | None = None


class NumberWire(_WireType, frozen=True, kw_only=True, tag="number", omit_defaults=True):
    gt: float | None = None
    geq: float | None = None
    lt: float | None = None
    leq: float | None = None
    infinity_allowed: bool
    nan_allowed: bool


class StringWire(_WireType, frozen=True, kw_only=True, tag="string", omit_defaults=True):
    min_length: int
    max_length: int | None = None


class BooleanWire(_WireType, frozen=True, kw_only=True, tag="boolean"):
    pass


class EnumerationWire(_WireType, frozen=True, kw_only=True, tag="enumeration"):
    values: tuple[str, ...]


class DatetimeWire(_WireType, frozen=True, kw_only=True, tag="datetime", omit_defaults=True):
    before: dt.datetime | None = None
    after: dt.datetime | None = None


class GeometryWire(_WireType, frozen=True, kw_only=True, tag="geometry"):
    pass


class ImageWire(_WireType, frozen=True, kw_only=True, tag="image"):
    formats: tuple[str, ...] | None


class FileWire(_WireType, frozen=True, kw_only=True, tag="file"):
    formats: tuple[str, ...] | None


class ArrayWire(_WireType, frozen=True, kw_only=True, tag="array", omit_defaults=True):
    min_size: int | None = None
    max_size: int | None = None
    sub_type: WireType


WireType = (
    IntegerWire
    | NumberWire
    | StringWire
    | BooleanWire
    | EnumerationWire
    | DatetimeWire
    | GeometryWire
    | ImageWire
    | FileWire
    | ArrayWire
)


class TaskInput(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    default: str
    name: str
    display_name: str
    description: str
    optional: bool
    type: WireType


class TaskOutput(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: uuid.UUID
    name: str
    display_name: str
    description: str
    optional: bool
    type: WireType
    derived_from: str | None


# --- rendering ----------------------------------------------------------------------------------


def parameter_id(task_id: uuid.UUID, kind: Literal["inputs", "outputs"], name: str) -> uuid.UUID:
    """The stable id of a task's parameter."""
    return uuid.uuid5(task_id, f"{kind}/{name}")


def task_description(descriptor: Descriptor, task_id: uuid.UUID) -> TaskDescription:
    authors = tuple(
        TaskAuthor(
            first_name=a.first_name,
            last_name=a.last_name,
            organization=a.organization,
            email=a.email,
            is_contact=a.is_contact,
        )
        for a in descriptor.authors
    )
    return TaskDescription(
        id=task_id,
        name=descriptor.name,
        namespace=descriptor.namespace,
        version=descriptor.version,
        description=descriptor.description,
        authors=authors,
    )


def task_inputs(descriptor: Descriptor, task_id: uuid.UUID) -> list[TaskInput]:
    return [task_input(p, task_id) for p in descriptor.inputs]


def task_outputs(descriptor: Descriptor, task_id: uuid.UUID) -> list[TaskOutput]:
    return [task_output(p, task_id) for p in descriptor.outputs]


def task_input(param: Input, task_id: uuid.UUID) -> TaskInput:
    return TaskInput(
        id=parameter_id(task_id, "inputs", param.name),
        default=default_text(param.default),
        name=param.name,
        display_name=param.display_name,
        description=param.description,
        optional=param.optional,
        type=wire_type(param.type),
    )


def task_output(param: Output, task_id: uuid.UUID) -> TaskOutput:
    return TaskOutput(
        id=parameter_id(task_id, "outputs", param.name),
        name=param.name,
        display_name=param.display_name,
        description=param.description,
        optional=param.optional,
        type=wire_type(param.type),
        derived_from=param.derived_from,
    )


def wire_type(ptype: ParameterType) -> WireType:
    """The ``type`` object of a parameter as upstream renders it."""
    match ptype:
        case IntegerType(gt=gt, lt=lt, geq=geq, leq=leq):
            return IntegerWire(gt=gt, lt=lt, geq=geq, leq=leq)
        case NumberType():
            return NumberWire(
                gt=ptype.gt,
                geq=ptype.geq,
                lt=ptype.lt,
                leq=ptype.leq,
                infinity_allowed=ptype.infinity_allowed,
                nan_allowed=ptype.nan_allowed,
            )
        case StringType(min_length=min_length, max_length=max_length):
            return StringWire(min_length=min_length, max_length=max_length)
        case BooleanType():
            return BooleanWire()
        case EnumerationType(values=values):
            return EnumerationWire(values=values)
        case DatetimeType(before=before, after=after):
            return DatetimeWire(before=before, after=after)
        case GeometryType():
            return GeometryWire()
        case ImageType(formats=formats):
            return ImageWire(formats=formats)
        case FileType(formats=formats):
            return FileWire(formats=formats)
        case ArrayType(subtype=subtype, min_size=min_size, max_size=max_size):
            return ArrayWire(min_size=min_size, max_size=max_size, sub_type=wire_type(subtype))


def default_text(value: Default | None) -> str:
    """A default as upstream's ``String.valueOf`` writes it: ``"null"``, ``"true"``, ``"0.5"``."""
    match value:
        case None:
            return "null"
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            return _java_double(value)
        case _:
            return value


def _java_double(value: float) -> str:
    """Java's ``Double.toString``: ``1.0``, ``0.001``, ``1.0E7``, ``1.5E-5``, ``NaN``, ``Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)
    # shortest round-trip digits (repr), laid out as d.dddE<exp>
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{exponent + len(digits) - 1}"
