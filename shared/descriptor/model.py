"""The task descriptor (``descriptor.yml``): safe parsing, whole-document validation, typed model.

:func:`parse_descriptor` turns the bytes of a descriptor into a frozen :class:`Descriptor`, or
raises :class:`DescriptorSyntaxError` (not one readable, bounded YAML document; see
:mod:`shared.descriptor.yaml_loader`) or :class:`DescriptorValidationError`, which carries
*every* violation with its field path. Both render the upstream error body (HTTP 400).

Checked beyond the upstream v0 schema (reference §4, §12.2), deliberately:

* ``name_short`` is required (upstream: 500 on upload), so is each parameter's ``display_name``;
* ``configuration.input_folder``/``output_folder`` default to ``/inputs``/``/outputs`` as
  documented, and must be absolute, not ``/``, free of ``..`` and distinct;
* memory sizes are parsed to bytes (``resources.ram`` > 0), ``cpus`` >= 1, ``gpus`` >= 0;
* the namespace must give a valid Docker repository name (see :func:`image_name`);
* types, defaults and dependencies: see :mod:`~shared.descriptor.types` and
  :mod:`~shared.descriptor.parameters`.

Unknown keys are ignored at every level, as upstream does (real descriptors carry ``identifier``,
``external.dois``, ``le:``...).

Engine extension: ``configuration.resources.time_limit`` is the run time limit, an integer number
of seconds or a duration string such as ``90s``, ``30m``, ``2h``, ``1d`` or ``1h30m`` (at most 365
days). Upstream ignores unknown keys under ``resources``, so such a descriptor still uploads there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from shared.descriptor.fields import (
    Fields,
    Violation,
    Violations,
    describe,
    duration_seconds,
    memory_bytes,
)
from shared.descriptor.parameters import Input, Output, parse_parameters
from shared.descriptor.yaml_loader import YamlRejected, load_yaml

__all__ = [
    "Author",
    "Configuration",
    "Descriptor",
    "DescriptorError",
    "DescriptorSyntaxError",
    "DescriptorValidationError",
    "External",
    "Input",
    "Output",
    "Resources",
    "Violation",
    "image_name",
    "parse_descriptor",
    "validate_descriptor",
]

SCHEMA_ERROR_CODE: Final = "APPE-internal-bundle-schema-validation-error"
SCHEMA_ERROR_MESSAGE: Final = "Schema validation failed for the descriptor file"
FIELD_ERROR_CODE: Final = "APPE-internal-bundle-io-schema-validation-error"
EXTRACTION_ERROR_CODE: Final = "APPE-internal-descriptor-extraction-error"
EXTRACTION_ERROR_MESSAGE: Final = "failed to extract descriptor.yml from from bundle"  # sic, upstream
MAX_TIME_LIMIT_SECONDS: Final = 365 * 24 * 3600


# --- errors -------------------------------------------------------------------------------------


class DescriptorError(Exception):
    """Root of the descriptor errors; :meth:`body` is the upstream error body (HTTP 400)."""

    error_code: str = SCHEMA_ERROR_CODE
    message: str = SCHEMA_ERROR_MESSAGE

    def body(self) -> dict[str, Any]:
        return {"errorCode": self.error_code, "message": self.message, "details": {"type": "empty"}}


class DescriptorSyntaxError(DescriptorError):
    """Not one readable YAML document within bounds: there is nothing to validate."""

    error_code = EXTRACTION_ERROR_CODE
    message = EXTRACTION_ERROR_MESSAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def body(self) -> dict[str, Any]:
        details = {"type": "related", "parameterName": "descriptor.yml", "description": self.reason}
        return {"errorCode": self.error_code, "message": self.message, "details": details}


class DescriptorValidationError(DescriptorError):
    """The descriptor breaks the schema; ``violations`` lists every fault found."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.path}: {v.message}" for v in violations))
        self.violations = tuple(violations)

    def body(self) -> dict[str, Any]:
        """The upstream batch body: one ``parameter`` entry per violation, named by its path."""
        errors = [
            {
                "errorCode": FIELD_ERROR_CODE,
                "message": f"{v.path or 'descriptor'}: {v.message}",
                "details": {"type": "parameter", "parameterName": v.path},
            }
            for v in self.violations
        ]
        return {
            "errorCode": self.error_code,
            "message": self.message,
            "details": {"type": "batch", "errors": errors},
        }


# --- the model ----------------------------------------------------------------------------------


class Author(msgspec.Struct, frozen=True, kw_only=True):
    first_name: str
    last_name: str
    organization: str
    email: str
    is_contact: bool = False


class External(msgspec.Struct, frozen=True, kw_only=True):
    source_code: str | None = None
    doi: tuple[str, ...] = ()


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """What a run needs. ``ram`` is ``None`` when not declared: the operator's default applies
    (upstream's is 4Gi, although its schema documents 1Gi)."""

    ram: str | None = None
    ram_bytes: int | None = None
    cpus: int = 1
    gpus: int = 0
    internet: bool = False
    time_limit_seconds: int | None = None


class Configuration(msgspec.Struct, frozen=True, kw_only=True):
    input_folder: str = "/inputs"
    output_folder: str = "/outputs"
    image_file: str | None = None
    """``configuration.image.file`` as written (often with a leading ``/``), if any."""
    resources: Resources = Resources()


class Descriptor(msgspec.Struct, frozen=True, kw_only=True):
    """A validated v0 descriptor. Inputs and outputs keep the descriptor's order."""

    schema: str
    name: str
    name_short: str
    namespace: str
    version: str
    description: str | None
    authors: tuple[Author, ...]
    external: External | None
    configuration: Configuration
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    def output(self, name: str) -> Output | None:
        return next((o for o in self.outputs if o.name == name), None)

    def matching_pairs(self) -> list[tuple[str, str]]:
        """The pairs of array parameters that must have the same size (``dependencies.matching``),
        as ``inputs/<name>``/``outputs/<name>`` references, each pair once whichever side (or both)
        declared it: matching is symmetric."""
        pairs: dict[tuple[str, str], None] = {}
        for kind, params in (("inputs", self.inputs), ("outputs", self.outputs)):
            for param in params:
                me = f"{kind}/{param.name}"
                for other in param.matching:
                    first, second = sorted((me, other))
                    pairs[first, second] = None
        return list(pairs)


def image_name(descriptor: Descriptor) -> str:
    """The task image's reference: ``namespace`` with ``.`` → ``/``, tagged with the version.

    Docker repositories are lower case, so the repository is lower-cased (validation guarantees
    the rest is a valid name), and ``+`` (SemVer build metadata) is not allowed in a tag, so it
    becomes ``_``. Two tasks may thus share a name: run images by id, not by this name.
    """
    return f"{_repository(descriptor.namespace)}:{descriptor.version.replace('+', '_')}"


def _repository(namespace: str) -> str:
    return namespace.replace(".", "/").lower()


# --- parsing and validation ---------------------------------------------------------------------


def parse_descriptor(data: bytes) -> Descriptor:
    """Load and validate a descriptor; raises a :class:`DescriptorError` subclass."""
    try:
        tree = load_yaml(data)
    except YamlRejected as err:
        raise DescriptorSyntaxError(err.reason) from None
    return validate_descriptor(tree)


_NAME = re.compile(r"^[a-zA-Z0-9_\s\-]+$")
_NAMESPACE = re.compile(r"^[a-zA-Z0-9_]*(\.[a-zA-Z0-9_-]+)+$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_DOCKER_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def validate_descriptor(tree: object) -> Descriptor:
    """Validate a loaded descriptor tree; raises :class:`DescriptorValidationError`."""
    errors = Violations()
    if not isinstance(tree, Mapping):
        errors.add((), f"the descriptor must be a mapping, got {describe(tree)}")
        raise DescriptorValidationError(errors.items)
    top = Fields(tree, (), errors)
    schema = top.text("$schema", required=True, pattern=_URI, hint="must be a URI")
    name = top.text("name", required=True)
    if name is not None and not 3 <= len(name) <= 30:
        top.add("name", f"must be 3 to 30 characters long, got {len(name)}")
    elif name is not None and not _NAME.match(name):
        top.add("name", "may contain only letters, digits, spaces, '_' and '-'")
    name_short = top.text("name_short", required=True, non_empty=True)
    namespace = top.text(
        "namespace", True, _NAMESPACE, "must be in reverse domain name notation, e.g. com.example.my_task"
    )
    if namespace is not None and not all(_DOCKER_COMPONENT.match(c) for c in _repository(namespace).split("/")):
        top.add("namespace", "cannot name a Docker image: each part must start and end with a letter or a digit")
    version = top.text("version", True, _SEMVER, "must be a semantic version such as 1.0.0")
    description = top.text("description", max_length=2048)
    authors = _authors(top.sequence("authors", required=True), errors)
    external = _external(top.mapping("external"), errors)
    configuration = _configuration(top.mapping("configuration", required=True), errors)
    inputs_raw = top.mapping("inputs", required=True) or {}
    outputs_raw = top.mapping("outputs", required=True) or {}
    inputs, outputs = parse_parameters(inputs_raw, outputs_raw, errors)
    if errors.items:
        raise DescriptorValidationError(errors.items)
    # no violation means every required field was read
    assert schema and name and name_short and namespace and version  # noqa: PT018
    assert configuration is not None
    return Descriptor(
        schema=schema,
        name=name,
        name_short=name_short,
        namespace=namespace,
        version=version,
        description=description,
        authors=tuple(authors),
        external=external,
        configuration=configuration,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )


def _authors(raw: list[Any] | None, errors: Violations) -> list[Author]:
    if raw is None:
        return []
    if not raw:
        errors.add(("authors",), "must list at least one author")
    authors = []
    for index, item in enumerate(raw):
        path = ("authors", str(index))
        if not isinstance(item, Mapping):
            errors.add(path, f"must be a mapping, got {describe(item)}")
            continue
        fields = Fields(item, path, errors)
        first, last, org = (fields.text(k, required=True) for k in ("first_name", "last_name", "organization"))
        email = fields.text("email", required=True, pattern=_EMAIL, hint="must be an email address")
        is_contact = fields.boolean("is_contact")
        if first is not None and last is not None and org is not None and email is not None:
            authors.append(
                Author(first_name=first, last_name=last, organization=org, email=email, is_contact=is_contact)
            )
    return authors


def _external(raw: Mapping[Any, Any] | None, errors: Violations) -> External | None:
    if raw is None:
        return None
    fields = Fields(raw, ("external",), errors)
    source = fields.text("source_code", pattern=_URI, hint="must be a URI")
    dois = fields.sequence("doi") or []
    for index, doi in enumerate(dois):
        if not isinstance(doi, str) or not _URI.match(doi):
            errors.add(("external", "doi", str(index)), "must be a URI")
    return External(source_code=source, doi=tuple(d for d in dois if isinstance(d, str)))


def _configuration(raw: Mapping[Any, Any] | None, errors: Violations) -> Configuration | None:
    if raw is None:
        return None
    fields = Fields(raw, ("configuration",), errors)
    input_folder = _folder(fields, "input_folder", "/inputs")
    output_folder = _folder(fields, "output_folder", "/outputs")
    if input_folder is not None and input_folder == output_folder:
        fields.add("output_folder", "must differ from input_folder")
    image_file = None
    image = fields.mapping("image")
    if image is not None:
        image_fields = Fields(image, ("configuration", "image"), errors)
        image_file = image_fields.text("file")
        if image_file is not None and ".." in image_file.split("/"):
            image_fields.add("file", "must not contain '..'")
    return Configuration(
        input_folder=input_folder or "/inputs",
        output_folder=output_folder or "/outputs",
        image_file=image_file,
        resources=_resources(fields.mapping("resources"), errors),
    )


def _folder(fields: Fields, key: str, default: str) -> str | None:
    if key not in fields.raw:
        return default
    value = fields.text(key, required=True)
    if value is None:
        return None
    problem = None
    if not value.startswith("/"):
        problem = "must be an absolute path"
    elif value.rstrip("/") == "":
        problem = "must not be the root directory"
    elif ".." in value.split("/"):
        problem = "must not contain '..'"
    if problem:
        fields.add(key, problem)
        return None
    return value.rstrip("/")


def _resources(raw: Mapping[Any, Any] | None, errors: Violations) -> Resources:
    if raw is None:
        return Resources()
    fields = Fields(raw, ("configuration", "resources"), errors)
    ram = fields.text("ram")
    ram_bytes = None if ram is None else memory_bytes(ram)
    if ram is not None and ram_bytes is None:
        fields.add("ram", f"must be a memory size such as 2Gi or 512Mi, got {ram!r}")
    elif ram_bytes == 0:
        fields.add("ram", "must be more than 0 bytes")
    time_limit = None
    if raw.get("time_limit") is not None:
        time_limit = duration_seconds(raw["time_limit"])
        if time_limit is None or not 0 < time_limit <= MAX_TIME_LIMIT_SECONDS:
            fields.add(
                "time_limit",
                "must be a positive duration of at most 365 days, in seconds or like 30m, 2h, 1h30m",
            )
            time_limit = None
    return Resources(
        ram=ram,
        ram_bytes=ram_bytes,
        cpus=fields.integer("cpus", 1) or 1,
        gpus=fields.integer("gpus", 0) or 0,
        internet=fields.boolean("internet"),
        time_limit_seconds=time_limit,
    )
