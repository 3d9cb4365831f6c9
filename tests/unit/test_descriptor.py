"""Descriptor parsing and validation: the real-world corpus, every rule, the YAML bounds, error bodies."""

from __future__ import annotations

import copy
import datetime as dt
import json
import pathlib
import re
from typing import Any

import msgspec
import pytest
import yaml

from shared.descriptor.fields import duration_seconds, memory_bytes
from shared.descriptor.model import (
    Descriptor,
    DescriptorSyntaxError,
    DescriptorValidationError,
    image_name,
    parse_descriptor,
)
from shared.descriptor.types import ArrayType, DatetimeType, IntegerType, NumberType

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "descriptors"
INDEX = json.loads((FIXTURES / "INDEX.json").read_text())

BASE: dict[str, Any] = {
    "$schema": "https://cytomine.com/schema-store/tasks/task.v0.json",
    "name": "Integers addition",
    "name_short": "add",
    "namespace": "com.example.add",
    "version": "1.0.0",
    "description": "Adds two integers",
    "authors": [
        {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "organization": "Analytical Engines",
            "email": "ada@example.com",
            "is_contact": True,
        }
    ],
    "configuration": {
        "input_folder": "/inputs",
        "output_folder": "/outputs",
        "image": {"file": "/com.example.add-1.0.0.tar"},
    },
    "inputs": {
        "a": {"display_name": "A", "description": "first operand", "type": {"id": "integer", "geq": 0}},
        "b": {"display_name": "B", "description": "second operand", "type": "integer", "default": 2},
        "items": {
            "display_name": "Items",
            "description": "a list",
            "type": {"id": "array", "subtype": "number"},
        },
    },
    "outputs": {
        "sum": {"display_name": "Sum", "description": "a + b", "type": "integer"},
        "copies": {
            "display_name": "Copies",
            "description": "items",
            "type": {"id": "array", "subtype": "number"},
        },
    },
}
DELETE = object()
EXPECTED_TYPES = "integer, number, string, boolean, enumeration, datetime, geometry, file, image, array"
ADD_INTEGER_TASK = (
    "cytomine_Cytomine-app-engine__src_test_resources_artifacts_add_integer_task.zip__descriptor@0fdc2b88.yml"
)
NO_VERSION = "cytomine_Cytomine-app-engine__src_test_resources_artifacts_no_version.zip__descriptor@0fdc2b88.yml"
WSI = "cytomine_dummy-tasks__identity-WSI_com.cytomine.dummy.identity.wsi-1.0.0.zip__descriptor@9f761582.yml"


def build(**changes: object) -> dict[str, Any]:
    """BASE with changes at dotted paths (``inputs__a__type__gt`` style keys use ``__``)."""
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = doc
        for key in parents:
            target = target.setdefault(key, {})
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return doc


def dump(doc: object) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def violations(doc: object) -> list[tuple[str, str]]:
    with pytest.raises(DescriptorValidationError) as caught:
        parse_descriptor(dump(doc))
    return [(v.path, v.message) for v in caught.value.violations]


def syntax_error(data: bytes) -> str:
    with pytest.raises(DescriptorSyntaxError) as caught:
        parse_descriptor(data)
    return caught.value.reason


# --- the corpus of real descriptors ------------------------------------------------------------


def _index_paths(messages: list[str]) -> list[str]:
    """Field paths named by INDEX's jsonschema messages (``authors/0: 'email' is a required property``)."""
    paths = []
    for message in messages:
        location, _, text = message.partition(": ")
        prefix = "" if location == "<root>" else location.replace("/", ".")
        required = re.match(r"'(\w+)' is a required property", text)
        paths.append(".".join(part for part in (prefix, required.group(1) if required else "") if part))
    return paths


@pytest.mark.parametrize("entry", INDEX, ids=[f"{n:02d}-{e['file'][:70]}" for n, e in enumerate(INDEX, start=1)])
def test_real_descriptor_matches_index(entry: dict[str, Any]) -> None:
    data = (FIXTURES / entry["file"]).read_bytes()
    expected = _index_paths(entry["validation"]["SHEAD"])
    if not expected:
        descriptor = parse_descriptor(data)
        assert descriptor.namespace == entry["validation"]["namespace"]
        assert descriptor.version == entry["validation"]["version"]
        return
    with pytest.raises(DescriptorValidationError) as caught:
        parse_descriptor(data)
    found = [v.path for v in caught.value.violations]
    for path in expected:
        assert any(p == path or p.startswith(path + ".") for p in found), (path, found)
    # and nothing INDEX does not know about
    for path in found:
        assert any(path == p or path.startswith(p + ".") for p in expected), (path, expected)


def test_corpus_is_complete() -> None:
    assert len(INDEX) == 74
    assert {e["file"] for e in INDEX} == {p.name for p in FIXTURES.iterdir() if p.suffix in (".yml", ".yaml")}


def test_corpus_messages_name_the_fields() -> None:
    by_file = {e["file"]: e for e in INDEX}
    cases = {
        ADD_INTEGER_TASK: [
            ("namespace", "is required"),
            ("authors.0.email", "is required"),
        ],
        NO_VERSION: [("version", "must be a string, got null")],
        "cytomine_task-stardist__descriptor@3fb6daa6.yml": [("outputs.probas.description", "is required")],
        "TissueImageAnalytics_cytomine-app__descriptor@0b57b3d0.yml": [
            ("name", "must be 3 to 30 characters long, got 47")
        ],
    }
    for name, expected in cases.items():
        assert name in by_file
        with pytest.raises(DescriptorValidationError) as caught:
            parse_descriptor((FIXTURES / name).read_bytes())
        assert [(v.path, v.message) for v in caught.value.violations] == expected


def test_wsi_type_is_rejected_naming_the_type_field() -> None:
    data = (FIXTURES / WSI).read_bytes()
    with pytest.raises(DescriptorValidationError) as caught:
        parse_descriptor(data)
    unknown = f"unknown type 'wsi'; expected one of {EXPECTED_TYPES}"
    assert [(v.path, v.message) for v in caught.value.violations] == [
        ("inputs.input.type", unknown),
        ("outputs.output.type", unknown),
    ]


def test_unknown_constraint_keys_are_ignored_as_upstream() -> None:
    data = (
        FIXTURES / "cytomine_Cytomine-app-engine__dev_example_tasks_add_constrainted_integers_descriptor@0fdc2b88.yml"
    ).read_bytes()
    descriptor = parse_descriptor(data)
    assert descriptor.input("a") is not None


def test_real_descriptor_model() -> None:
    descriptor = parse_descriptor((FIXTURES / "cytomine_task-stardist__descriptor@2f955964.yml").read_bytes())
    assert [p.name for p in descriptor.inputs] == [
        "images", "stardist_prob_t", "stardist_nms_t", "stardist_norm_perc_low", "stardist_norm_perc_high"
    ]  # fmt: skip
    images = descriptor.inputs[0]
    assert images.matching == ("outputs/nuclei",)
    assert isinstance(images.type, ArrayType)
    prob = descriptor.inputs[1]
    assert (prob.optional, prob.default) == (True, 0.5)
    assert prob.type == NumberType(geq=0.0, leq=1.0)
    nuclei = descriptor.output("nuclei")
    assert nuclei is not None
    assert (nuclei.derived_from, nuclei.matching) == ("images", ("outputs/probs",))
    assert image_name(descriptor) == "com/cytomine/nuclei-segmentation/stardist:0.1.0"
    assert msgspec.json.decode(msgspec.json.encode(descriptor), type=Descriptor) == descriptor


def test_resources_of_a_real_descriptor() -> None:
    data = (FIXTURES / "TissueImageAnalytics_cytomine-app__cytomine-hovernet_descriptor@5a0edcd1.yml").read_bytes()
    resources = parse_descriptor(data).configuration.resources
    assert (resources.ram, resources.ram_bytes, resources.cpus, resources.gpus) == ("12Gi", 12 * 2**30, 2, 0)


# --- the model and its defaults ----------------------------------------------------------------


def test_base_descriptor_is_valid() -> None:
    descriptor = parse_descriptor(dump(BASE))
    assert descriptor.name_short == "add"
    assert descriptor.authors[0].is_contact is True
    assert descriptor.configuration.image_file == "/com.example.add-1.0.0.tar"
    b = descriptor.input("b")
    assert b is not None
    assert (b.default, b.optional, b.type) == (2, False, IntegerType())
    assert descriptor.output("nope") is None


def test_configuration_defaults() -> None:
    descriptor = parse_descriptor(dump(build(configuration={})))
    config = descriptor.configuration
    assert (config.input_folder, config.output_folder, config.image_file) == ("/inputs", "/outputs", None)
    resources = config.resources
    assert (resources.ram, resources.cpus, resources.gpus, resources.internet) == (None, 1, 0, False)
    assert resources.time_limit_seconds is None


def test_description_is_optional_and_null() -> None:
    assert parse_descriptor(dump(build(description=DELETE))).description is None


def test_resources_are_read() -> None:
    resources = {"ram": "1.5Gi", "cpus": 4, "gpus": 1, "internet": True, "time_limit": "1h30m"}
    parsed = parse_descriptor(dump(build(configuration__resources=resources))).configuration.resources
    assert parsed.ram_bytes == 3 * 2**29
    assert (parsed.cpus, parsed.gpus, parsed.internet, parsed.time_limit_seconds) == (4, 1, True, 5400)


@pytest.mark.parametrize(
    ("value", "seconds"), [(3600, 3600), ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400)]
)
def test_time_limit_forms(value: object, seconds: int) -> None:
    doc = build(configuration__resources={"time_limit": value})
    assert parse_descriptor(dump(doc)).configuration.resources.time_limit_seconds == seconds


@pytest.mark.parametrize("value", [0, -5, "0s", "abc", "", "1.5h", "400d", True, [1]])
def test_bad_time_limits(value: object) -> None:
    assert violations(build(configuration__resources={"time_limit": value})) == [
        (
            "configuration.resources.time_limit",
            "must be a positive duration of at most 365 days, in seconds or like 30m, 2h, 1h30m",
        )
    ]


def test_folders_are_normalised() -> None:
    config = parse_descriptor(dump(build(configuration__input_folder="/data/in/"))).configuration
    assert config.input_folder == "/data/in"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2Gi", 2 * 2**30),
        ("512Mi", 512 * 2**20),
        ("512 MiB", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("1k", 1000),
        ("8Kib", 1024),
        ("100MB", 100_000_000),
        ("0.5Ki", 512),
        ("1Q", 10**30),
        ("2", None),
        ("2GiX", None),
        ("Gi", None),
        ("01Gi", None),
        ("-1Gi", None),
    ],
)
def test_memory_sizes(text: str, expected: int | None) -> None:
    assert memory_bytes(text) == expected


def test_durations() -> None:
    assert duration_seconds("1d2h3m4s") == 93784
    assert duration_seconds(2.0) == 2
    assert duration_seconds("1x") is None


def test_image_name() -> None:
    assert image_name(parse_descriptor(dump(BASE))) == "com/example/add:1.0.0"
    mixed = parse_descriptor(dump(build(namespace="Com.Example.My_Task", version="1.0.0-rc.1+build.5")))
    assert image_name(mixed) == "com/example/my_task:1.0.0-rc.1_build.5"


def test_unquoted_timestamps_stay_strings() -> None:
    param = {"display_name": "When", "description": "d", "type": "datetime", "default": "WHEN"}
    text = dump(build(inputs__when=param)).decode()
    assert "default: WHEN\n" in text
    descriptor = parse_descriptor(text.replace("WHEN", "2024-02-23T18:00:00Z").encode())
    when = descriptor.input("when")
    assert when is not None
    assert when.default == "2024-02-23T18:00:00Z"


def test_datetime_constraints_are_parsed() -> None:
    spec = {"id": "datetime", "after": "2024-01-01T00:00:00+01:00", "before": "2025-01-01T00:00:00Z"}
    doc = build(
        inputs__when={
            "display_name": "When",
            "description": "d",
            "type": spec,
            "default": "2024-06-01T00:00:00Z",
        }
    )
    when = parse_descriptor(dump(doc)).input("when")
    assert when is not None
    assert when.type == DatetimeType(
        after=dt.datetime(2023, 12, 31, 23, tzinfo=dt.UTC), before=dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    )


def test_integral_floats_are_integers() -> None:
    a = parse_descriptor(dump(build(inputs__a__type={"id": "integer", "leq": 300.0}))).input("a")
    assert a is not None
    assert a.type == IntegerType(leq=300)


def test_geometry_default_as_mapping_becomes_json_text() -> None:
    param = {
        "display_name": "G",
        "description": "d",
        "type": "geometry",
        "default": {"type": "Point", "coordinates": [1, 2]},
    }
    g = parse_descriptor(dump(build(inputs__g=param))).input("g")
    assert g is not None
    assert g.default == '{"type":"Point","coordinates":[1,2]}'


@pytest.mark.parametrize(
    ("value", "stored"), [(float("inf"), "Infinity"), (float("-inf"), "-Infinity"), (float("nan"), "NaN")]
)
def test_non_finite_number_defaults_survive_json(value: float, stored: str) -> None:
    spec = {"id": "number", "infinity_allowed": True, "nan_allowed": True}
    descriptor = parse_descriptor(dump(build(inputs__a__type=spec, inputs__a__default=value)))
    assert msgspec.json.decode(msgspec.json.encode(descriptor), type=Descriptor) == descriptor
    a = descriptor.input("a")
    assert a is not None
    assert a.default == stored


def test_output_dependencies_without_derived_from_are_fine() -> None:
    doc = build(outputs__copies__dependencies={"matching": ["inputs/items"]})
    copies = parse_descriptor(dump(doc)).output("copies")
    assert copies is not None
    assert (copies.derived_from, copies.matching) == (None, ("inputs/items",))


# --- every rule, with its exact path and message -----------------------------------------------

RULES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("name_short missing", {"name_short": DELETE}, [("name_short", "is required")]),
    ("name_short blank", {"name_short": " "}, [("name_short", "must not be empty")]),
    ("schema missing", {"$schema": DELETE}, [("$schema", "is required")]),
    ("schema not a uri", {"$schema": "task v0"}, [("$schema", "must be a URI")]),
    ("name short", {"name": "ab"}, [("name", "must be 3 to 30 characters long, got 2")]),
    ("name chars", {"name": "add!"}, [("name", "may contain only letters, digits, spaces, '_' and '-'")]),
    ("name type", {"name": 123}, [("name", "must be a string, got integer")]),
    (
        "namespace form",
        {"namespace": "nodots"},
        [("namespace", "must be in reverse domain name notation, e.g. com.example.my_task")],
    ),
    (
        "namespace docker",
        {"namespace": "com.example.-task"},
        [("namespace", "cannot name a Docker image: each part must start and end with a letter or a digit")],
    ),
    ("version semver", {"version": "1.0"}, [("version", "must be a semantic version such as 1.0.0")]),
    ("version number", {"version": 1.0}, [("version", "must be a string, got number")]),
    ("version null", {"version": None}, [("version", "must be a string, got null")]),
    (
        "description long",
        {"description": "x" * 2049},
        [("description", "must be at most 2048 characters long, got 2049")],
    ),
    ("authors empty", {"authors": []}, [("authors", "must list at least one author")]),
    ("authors type", {"authors": "ada"}, [("authors", "must be a list, got string")]),
    ("author type", {"authors": ["ada"]}, [("authors.0", "must be a mapping, got string")]),
    (
        "author fields",
        {"authors": [{"first_name": "A", "organization": "O", "email": "nope", "is_contact": "yes!"}]},
        [
            ("authors.0.last_name", "is required"),
            ("authors.0.email", "must be an email address"),
            ("authors.0.is_contact", "must be a boolean, got string"),
        ],
    ),
    ("external doi", {"external": {"doi": ["not a uri"]}}, [("external.doi.0", "must be a URI")]),
    ("configuration missing", {"configuration": DELETE}, [("configuration", "is required")]),
    ("configuration type", {"configuration": "x"}, [("configuration", "must be a mapping, got string")]),
    (
        "input folder relative",
        {"configuration__input_folder": "in"},
        [("configuration.input_folder", "must be an absolute path")],
    ),
    (
        "input folder root",
        {"configuration__input_folder": "/"},
        [("configuration.input_folder", "must not be the root directory")],
    ),
    (
        "output folder dots",
        {"configuration__output_folder": "/a/../b"},
        [("configuration.output_folder", "must not contain '..'")],
    ),
    (
        "output folder null",
        {"configuration__output_folder": None},
        [("configuration.output_folder", "must be a string, got null")],
    ),
    (
        "same folders",
        {"configuration__output_folder": "/inputs/"},
        [("configuration.output_folder", "must differ from input_folder")],
    ),
    (
        "image file dots",
        {"configuration__image__file": "../x.tar"},
        [("configuration.image.file", "must not contain '..'")],
    ),
    (
        "ram without unit",
        {"configuration__resources": {"ram": "2"}},
        [("configuration.resources.ram", "must be a memory size such as 2Gi or 512Mi, got '2'")],
    ),
    (
        "ram zero",
        {"configuration__resources": {"ram": "0Gi"}},
        [("configuration.resources.ram", "must be more than 0 bytes")],
    ),
    (
        "ram number",
        {"configuration__resources": {"ram": 2}},
        [("configuration.resources.ram", "must be a string, got integer")],
    ),
    (
        "cpus zero",
        {"configuration__resources": {"cpus": 0}},
        [("configuration.resources.cpus", "must be at least 1, got 0")],
    ),
    (
        "cpus float",
        {"configuration__resources": {"cpus": 1.5}},
        [("configuration.resources.cpus", "must be an integer, got number")],
    ),
    (
        "gpus negative",
        {"configuration__resources": {"gpus": -1}},
        [("configuration.resources.gpus", "must be at least 0, got -1")],
    ),
    (
        "internet",
        {"configuration__resources": {"internet": 1}},
        [("configuration.resources.internet", "must be a boolean, got integer")],
    ),
    ("inputs missing", {"inputs": DELETE}, [("inputs", "is required")]),
    ("outputs list", {"outputs": []}, [("outputs", "must be a mapping, got list")]),
    (
        "parameter name",
        {"inputs__bad-name": {"display_name": "x", "description": "x", "type": "integer"}},
        [("inputs.bad-name", "parameter names may contain only letters, digits and '_'")],
    ),
    ("parameter not a mapping", {"inputs__a": "integer"}, [("inputs.a", "must be a mapping, got string")]),
    ("display_name missing", {"inputs__a__display_name": DELETE}, [("inputs.a.display_name", "is required")]),
    (
        "display_name empty",
        {"outputs__sum__display_name": ""},
        [("outputs.sum.display_name", "must not be empty")],
    ),
    (
        "description missing",
        {"outputs__sum__description": DELETE},
        [("outputs.sum.description", "is required")],
    ),
    ("type missing", {"inputs__a__type": DELETE}, [("inputs.a.type", "is required")]),
    (
        "optional type",
        {"inputs__a__optional": "yes please"},
        [("inputs.a.optional", "must be a boolean, got string")],
    ),
    (
        "enumeration short form",
        {"inputs__a__type": "enumeration"},
        [("inputs.a.type", "type 'enumeration' needs the long form: a mapping with its id and constraints")],
    ),
    ("type id missing", {"inputs__a__type": {"gt": 1}}, [("inputs.a.type.id", "is required")]),
    (
        "type id unknown",
        {"inputs__a__type": {"id": "float"}},
        [
            (
                "inputs.a.type.id",
                f"unknown type 'float'; expected one of {EXPECTED_TYPES}",
            )
        ],
    ),
    (
        "type list",
        {"inputs__a__type": ["integer"]},
        [("inputs.a.type", "must be a type name or a mapping with an id, got list")],
    ),
    (
        "integer bound float",
        {"inputs__a__type": {"id": "integer", "lt": 1.5}},
        [("inputs.a.type.lt", "must be an integer, got number")],
    ),
    (
        "integer bounds empty",
        {"inputs__a__type": {"id": "integer", "gt": 5, "lt": 3}},
        [("inputs.a.type", "its bounds admit no value")],
    ),
    (
        "integer bounds touch",
        {"inputs__a__type": {"id": "integer", "geq": 3, "lt": 3}},
        [("inputs.a.type", "its bounds admit no value")],
    ),
    (
        "number nan bound",
        {"inputs__a__type": {"id": "number", "gt": float("nan")}},
        [("inputs.a.type.gt", "must be a finite number")],
    ),
    (
        "number inf bound",
        {"inputs__a__type": {"id": "number", "leq": float("inf")}},
        [("inputs.a.type.leq", "must be a finite number")],
    ),
    (
        "number flag",
        {"inputs__a__type": {"id": "number", "nan_allowed": "true"}},
        [("inputs.a.type.nan_allowed", "must be a boolean, got string")],
    ),
    (
        "string lengths",
        {"inputs__a__type": {"id": "string", "min_length": 5, "max_length": 3}},
        [("inputs.a.type", "min_length 5 is greater than max_length 3")],
    ),
    (
        "string negative",
        {"inputs__a__type": {"id": "string", "min_length": -1}},
        [("inputs.a.type.min_length", "must be at least 0, got -1")],
    ),
    (
        "enumeration values missing",
        {"inputs__a__type": {"id": "enumeration"}},
        [("inputs.a.type.values", "is required")],
    ),
    (
        "enumeration values empty",
        {"inputs__a__type": {"id": "enumeration", "values": []}},
        [("inputs.a.type.values", "must be a non-empty list of strings, got list")],
    ),
    (
        "enumeration values bad",
        {"inputs__a__type": {"id": "enumeration", "values": ["A", True, "", "x\ny", "A", "z" * 257]}},
        [
            ("inputs.a.type.values.1", "must be a string, got boolean (quote values like yes, no or 1)"),
            ("inputs.a.type.values.2", "must be 1 to 256 characters long, got 0"),
            ("inputs.a.type.values.3", "must be a single line"),
            ("inputs.a.type.values.4", "duplicate value 'A'"),
            ("inputs.a.type.values.5", "must be 1 to 256 characters long, got 257"),
        ],
    ),
    (
        "datetime bad bound",
        {"inputs__a__type": {"id": "datetime", "before": "2024-01-01"}},
        [("inputs.a.type.before", "must be a date-time with a time zone, e.g. 2024-02-23T18:00:00Z")],
    ),
    (
        "datetime no zone",
        {"inputs__a__type": {"id": "datetime", "after": "2024-01-01T00:00:00"}},
        [("inputs.a.type.after", "must be a date-time with a time zone, e.g. 2024-02-23T18:00:00Z")],
    ),
    (
        "datetime empty range",
        {
            "inputs__a__type": {
                "id": "datetime",
                "after": "2025-01-01T00:00:00Z",
                "before": "2024-01-01T00:00:00Z",
            }
        },
        [("inputs.a.type", "after must be earlier than before")],
    ),
    (
        "file formats",
        {"inputs__a__type": {"id": "file", "formats": ["binary", "gif"]}},
        [("inputs.a.type.formats.1", "unknown format 'gif'; expected one of binary, text")],
    ),
    (
        "image formats empty",
        {"inputs__a__type": {"id": "image", "formats": []}},
        [("inputs.a.type.formats", "must be a non-empty list of dicom, jpeg, png, tiff, wsidicom")],
    ),
    (
        "image size",
        {"inputs__a__type": {"id": "image", "max_file_size": "100", "max_width": 0}},
        [
            ("inputs.a.type.max_file_size", "must be a memory size such as 100Mi or 2GiB, got '100'"),
            ("inputs.a.type.max_width", "must be at least 1, got 0"),
        ],
    ),
    (
        "array no subtype",
        {"inputs__items__type": {"id": "array"}},
        [("inputs.items.type.subtype", "is required")],
    ),
    (
        "array nested unknown",
        {"inputs__items__type": {"id": "array", "subtype": {"id": "array", "subtype": "wsi"}}},
        [
            (
                "inputs.items.type.subtype.subtype",
                f"unknown type 'wsi'; expected one of {EXPECTED_TYPES}",
            )
        ],
    ),
    (
        "array sizes",
        {"inputs__items__type": {"id": "array", "subtype": "integer", "min_size": 3, "max_size": 1}},
        [("inputs.items.type", "min_size 3 is greater than max_size 1")],
    ),
    ("default type", {"inputs__b__default": "5"}, [("inputs.b.default", "must be an integer, got string")]),
    (
        "default out of range",
        {"inputs__a__default": -1},
        [("inputs.a.default", "must be greater than or equal to 0, got -1")],
    ),
    (
        "default above",
        {"inputs__a__type": {"id": "number", "lt": 1}, "inputs__a__default": 1},
        [("inputs.a.default", "must be less than 1.0, got 1")],
    ),
    (
        "default infinite",
        {"inputs__a__type": "number", "inputs__a__default": float("inf")},
        [("inputs.a.default", "must be finite unless infinity_allowed is true")],
    ),
    (
        "default nan",
        {"inputs__a__type": "number", "inputs__a__default": float("nan")},
        [("inputs.a.default", "must not be NaN unless nan_allowed is true")],
    ),
    (
        "default string length",
        {"inputs__a__type": {"id": "string", "max_length": 2}, "inputs__a__default": "abc"},
        [("inputs.a.default", "must be at most 2 characters long")],
    ),
    (
        "default enumeration",
        {"inputs__a__type": {"id": "enumeration", "values": ["A", "B"]}, "inputs__a__default": "C"},
        [("inputs.a.default", "must be one of A, B, got 'C'")],
    ),
    (
        "default boolean",
        {"inputs__a__type": "boolean", "inputs__a__default": 1},
        [("inputs.a.default", "must be a boolean, got integer")],
    ),
    (
        "default datetime",
        {
            "inputs__a__type": {"id": "datetime", "before": "2024-01-01T00:00:00Z"},
            "inputs__a__default": "2024-06-01T00:00:00Z",
        },
        [("inputs.a.default", "must be before 2024-01-01T00:00:00+00:00")],
    ),
    (
        "default geometry",
        {"inputs__a__type": "geometry", "inputs__a__default": "POINT (1 2)"},
        [("inputs.a.default", "must be a GeoJSON object")],
    ),
    (
        "default file",
        {"inputs__a__type": "file", "inputs__a__default": "x"},
        [("inputs.a.default", "a file parameter cannot have a default")],
    ),
    (
        "derived_from unknown",
        {"outputs__sum__dependencies": {"derived_from": "inputs/c"}},
        [("outputs.sum.dependencies.derived_from", "references an unknown input 'c'")],
    ),
    (
        "derived_from output",
        {"outputs__sum__dependencies": {"derived_from": "outputs/copies"}},
        [
            (
                "outputs.sum.dependencies.derived_from",
                "must reference an input as inputs/<name>, got 'outputs/copies'",
            )
        ],
    ),
    (
        "derived_from nested",
        {"outputs__sum__dependencies": {"derived_from": "inputs/a/b"}},
        [
            (
                "outputs.sum.dependencies.derived_from",
                "must reference an input as inputs/<name>, got 'inputs/a/b'",
            )
        ],
    ),
    (
        "derived_from on input",
        {"inputs__a__dependencies": {"derived_from": "inputs/b"}},
        [("inputs.a.dependencies.derived_from", "is only allowed on outputs")],
    ),
    (
        "dependencies type",
        {"outputs__sum__dependencies": "inputs/a"},
        [("outputs.sum.dependencies", "must be a mapping, got string")],
    ),
    (
        "matching non-array owner",
        {"inputs__a__dependencies": {"matching": ["outputs/copies"]}},
        [("inputs.a.dependencies.matching", "only array parameters can match other parameters")],
    ),
    (
        "matching targets",
        {"inputs__items__dependencies": {"matching": ["outputs/sum", "outputs/nope", "inputs/items", "copies", 3]}},
        [
            ("inputs.items.dependencies.matching.0", "references 'outputs/sum', which is not an array"),
            ("inputs.items.dependencies.matching.1", "references an unknown parameter 'outputs/nope'"),
            ("inputs.items.dependencies.matching.2", "a parameter cannot match itself"),
            (
                "inputs.items.dependencies.matching.3",
                "must reference a parameter as inputs/<name> or outputs/<name>, got 'copies'",
            ),
            (
                "inputs.items.dependencies.matching.4",
                "must reference a parameter as inputs/<name> or outputs/<name>, got 3",
            ),
        ],
    ),
    (
        "matching list",
        {"outputs__copies__dependencies": {"matching": "inputs/items"}},
        [("outputs.copies.dependencies.matching", "must be a list, got string")],
    ),
]


@pytest.mark.parametrize(("changes", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(changes: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert violations(build(**changes)) == expected


def test_every_violation_is_collected() -> None:
    doc = build(
        name_short=DELETE,
        version="one",
        configuration__resources={"ram": "lots"},
        inputs__a__type="wsi",
        inputs__b__display_name=DELETE,
        outputs__sum__dependencies={"derived_from": "inputs/zzz"},
    )
    assert [path for path, _ in violations(doc)] == [
        "name_short",
        "version",
        "configuration.resources.ram",
        "inputs.a.type",
        "inputs.b.display_name",
        "outputs.sum.dependencies.derived_from",
    ]


def test_a_broken_parameter_is_not_also_an_unknown_reference() -> None:
    doc = build(inputs__items__type={"id": "array"}, outputs__copies__dependencies={"matching": ["inputs/items"]})
    assert violations(doc) == [("inputs.items.type.subtype", "is required")]


def test_document_must_be_a_mapping() -> None:
    assert violations(["a"]) == [("", "the descriptor must be a mapping, got list")]


# --- error bodies ------------------------------------------------------------------------------


def test_validation_error_body() -> None:
    with pytest.raises(DescriptorValidationError) as caught:
        parse_descriptor(dump(build(name_short=DELETE, inputs__a__type="wsi")))
    field = "APPE-internal-bundle-io-schema-validation-error"
    assert caught.value.body() == {
        "errorCode": "APPE-internal-bundle-schema-validation-error",
        "message": "Schema validation failed for the descriptor file",
        "details": {
            "type": "batch",
            "errors": [
                {
                    "errorCode": field,
                    "message": "name_short: is required",
                    "details": {"type": "parameter", "parameterName": "name_short"},
                },
                {
                    "errorCode": field,
                    "message": "inputs.a.type: unknown type 'wsi'; expected one of integer, number, string, "
                    "boolean, enumeration, datetime, geometry, file, image, array",
                    "details": {"type": "parameter", "parameterName": "inputs.a.type"},
                },
            ],
        },
    }


def test_syntax_error_body() -> None:
    with pytest.raises(DescriptorSyntaxError) as caught:
        parse_descriptor(b"name: [unclosed")
    body = caught.value.body()
    assert body["errorCode"] == "APPE-internal-descriptor-extraction-error"
    assert body["message"] == "failed to extract descriptor.yml from from bundle"
    assert body["details"]["type"] == "related"
    assert body["details"]["parameterName"] == "descriptor.yml"
    assert body["details"]["description"].startswith("invalid YAML: while parsing a flow sequence")


# --- hostile YAML ------------------------------------------------------------------------------


def test_billion_laughs_is_refused() -> None:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    reason = syntax_error("\n".join(lines).encode())
    assert reason.startswith("invalid YAML: more than 100000 nodes once aliases are expanded")


def test_reasonable_aliases_are_fine() -> None:
    text = dump(BASE).decode().replace("authors:\n", "authors: &people\n", 1) + "maintainers: *people\n"
    assert parse_descriptor(text.encode()).authors[0].first_name == "Ada"


def test_recursive_alias_is_refused() -> None:
    assert syntax_error(b"a: &a [1, *a]").startswith("invalid YAML: recursive alias *a")


def test_deep_nesting_is_refused() -> None:
    assert syntax_error(b"a: " + b"[" * 100 + b"]" * 100).startswith("invalid YAML: nesting deeper than 64 levels")


def test_large_document_is_refused() -> None:
    data = dump(BASE) + b"#" + b"x" * (1024 * 1024)
    assert syntax_error(data) == "the document is larger than 1048576 bytes"


def test_duplicate_keys_are_refused() -> None:
    data = b"inputs:\n  a: {type: integer}\n  a: {type: string}\n"
    assert syntax_error(data).startswith("invalid YAML: duplicate key 'a'")


def test_not_utf8_is_refused() -> None:
    assert syntax_error(b"name: \xff\xfe").startswith("the document is not UTF-8 text")


def test_several_documents_are_refused() -> None:
    assert syntax_error(b"a: 1\n---\nb: 2\n").startswith("invalid YAML: expected a single document")


def test_python_tags_are_refused() -> None:
    reason = syntax_error(b"name: !!python/object/apply:os.system ['true']")
    assert reason.startswith("invalid YAML: could not determine a constructor")


def test_huge_integer_literal_is_refused() -> None:
    assert syntax_error(b"cpus: " + b"9" * 5000).startswith("invalid YAML: ")


def test_byte_order_mark_is_accepted() -> None:
    assert parse_descriptor(b"\xef\xbb\xbf" + dump(BASE)).name == "Integers addition"
