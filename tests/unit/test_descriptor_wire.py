"""The upstream JSON of tasks, inputs, outputs and types (reference §2.4)."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import msgspec
import pytest
import yaml

from shared.descriptor.model import parse_descriptor
from shared.descriptor.wire import (
    default_text,
    parameter_id,
    task_description,
    task_inputs,
    task_outputs,
)

TASK_ID = uuid.UUID("acde070d-8c4c-4f0d-9d8a-162843c10333")

DESCRIPTOR = """
$schema: https://cytomine.com/schema-store/tasks/task.v0.json
name: Every type
name_short: every
namespace: com.example.every
version: 1.2.3
authors:
  - {first_name: Ada, last_name: Lovelace, organization: AE, email: ada@example.com, is_contact: true}
  - {first_name: Charles, last_name: Babbage, organization: AE, email: cb@example.com}
configuration: {}
inputs:
  i: {display_name: I, description: an integer, type: {id: integer, gt: 0, leq: 10}, default: 5}
  n: {display_name: N, description: a number, type: {id: number, geq: 0, lt: 1}, default: 0.25,
      optional: true}
  s: {display_name: S, description: a string, type: string, default: hello}
  s2: {display_name: S2, description: bounded, type: {id: string, min_length: 1, max_length: 8}}
  b: {display_name: B, description: a boolean, type: boolean, default: false}
  e: {display_name: E, description: an enum, type: {id: enumeration, values: [A, B]}, default: B}
  d: {display_name: D, description: a date, type: {id: datetime, after: "2024-01-01T00:00:00Z"}}
  g: {display_name: G, description: a geometry, type: geometry}
  f: {display_name: F, description: a file, type: {id: file, formats: [text], max_file_size: 1Mi}}
  im: {display_name: Im, description: an image, type: {id: image, max_width: 100}}
  a:
    display_name: A
    description: an array
    type: {id: array, min_size: 1, subtype: {id: array, subtype: integer}}
outputs:
  out:
    display_name: Out
    description: derived
    type: {id: array, subtype: geometry}
    dependencies: {derived_from: inputs/im}
  plain: {display_name: Plain, description: nothing special, type: number, optional: true}
"""


def _json(value: object) -> Any:
    return json.loads(msgspec.json.encode(value))


@pytest.fixture(scope="module")
def descriptor() -> Any:
    return parse_descriptor(DESCRIPTOR.encode())


def test_task_description(descriptor: Any) -> None:
    assert _json(task_description(descriptor, TASK_ID)) == {
        "id": str(TASK_ID),
        "name": "Every type",
        "namespace": "com.example.every",
        "version": "1.2.3",
        "description": None,
        "authors": [
            {
                "firstName": "Ada",
                "lastName": "Lovelace",
                "organization": "AE",
                "email": "ada@example.com",
                "isContact": True,
            },
            {
                "firstName": "Charles",
                "lastName": "Babbage",
                "organization": "AE",
                "email": "cb@example.com",
                "isContact": False,
            },
        ],
    }


def test_task_input_fields_in_upstream_order(descriptor: Any) -> None:
    first = msgspec.json.encode(task_inputs(descriptor, TASK_ID)[0]).decode()
    expected = {
        "id": str(parameter_id(TASK_ID, "inputs", "i")),
        "default": "5",
        "name": "i",
        "display_name": "I",
        "description": "an integer",
        "optional": False,
        "type": {"id": "integer", "gt": 0, "leq": 10},
    }
    assert first == json.dumps(expected, separators=(",", ":"))


def test_input_types_and_defaults(descriptor: Any) -> None:
    rendered = {p["name"]: (p["default"], p["optional"], p["type"]) for p in _json(task_inputs(descriptor, TASK_ID))}
    assert rendered == {
        "i": ("5", False, {"id": "integer", "gt": 0, "leq": 10}),
        "n": ("0.25", True, {"id": "number", "geq": 0.0, "lt": 1.0, "infinityAllowed": False, "nanAllowed": False}),
        "s": ("hello", False, {"id": "string", "minLength": 0}),
        "s2": ("null", False, {"id": "string", "minLength": 1, "maxLength": 8}),
        "b": ("false", False, {"id": "boolean"}),
        "e": ("B", False, {"id": "enumeration", "values": ["A", "B"]}),
        "d": ("null", False, {"id": "datetime", "after": "2024-01-01T00:00:00Z"}),
        "g": ("null", False, {"id": "geometry"}),
        "f": ("null", False, {"id": "file", "formats": ["text"]}),
        "im": ("null", False, {"id": "image", "formats": None}),
        "a": ("null", False, {"id": "array", "minSize": 1, "subType": {"id": "array", "subType": {"id": "integer"}}}),
    }


def test_outputs(descriptor: Any) -> None:
    assert _json(task_outputs(descriptor, TASK_ID)) == [
        {
            "id": str(parameter_id(TASK_ID, "outputs", "out")),
            "name": "out",
            "displayName": "Out",
            "description": "derived",
            "optional": False,
            "type": {"id": "array", "subType": {"id": "geometry"}},
            "derivedFrom": "im",
        },
        {
            "id": str(parameter_id(TASK_ID, "outputs", "plain")),
            "name": "plain",
            "displayName": "Plain",
            "description": "nothing special",
            "optional": True,
            "type": {"id": "number", "infinityAllowed": False, "nanAllowed": False},
            "derivedFrom": None,
        },
    ]


def test_parameter_ids_are_stable_and_distinct() -> None:
    assert parameter_id(TASK_ID, "inputs", "x") == parameter_id(TASK_ID, "inputs", "x")
    assert parameter_id(TASK_ID, "inputs", "x") != parameter_id(TASK_ID, "outputs", "x")
    assert parameter_id(TASK_ID, "inputs", "x") != parameter_id(uuid.uuid4(), "inputs", "x")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (-3, "-3"),
        (1.0, "1.0"),
        (0.5, "0.5"),
        (0.001, "0.001"),
        (1e7, "1.0E7"),
        (12345678.0, "1.2345678E7"),
        (1.5e-5, "1.5E-5"),
        (-2.5e20, "-2.5E20"),
        (math.inf, "Infinity"),
        (math.nan, "NaN"),
        ("A", "A"),
    ],
)
def test_default_text(value: Any, text: str) -> None:
    assert default_text(value) == text


def test_integer_default_of_a_number_parameter_keeps_its_form() -> None:
    doc = yaml.safe_load(DESCRIPTOR)
    doc["inputs"]["n"]["default"] = 0
    inputs = task_inputs(parse_descriptor(yaml.safe_dump(doc).encode()), TASK_ID)
    assert next(p.default for p in inputs if p.name == "n") == "0"
