"""The inputs and outputs of a task descriptor, with their dependencies.

Beyond the upstream schema (reference §4.3, §12.2 items 4-5):

* ``display_name`` is required and non-empty (upstream dereferences it and answers 500);
* ``dependencies.derived_from`` is for outputs only and must name an existing input as
  ``inputs/<name>`` (upstream's schema never reaches its own pattern); an output with
  ``dependencies`` but no ``derived_from`` is fine (upstream: 500);
* ``dependencies.matching`` links array parameters that exist, never the parameter itself.
  Only one level (``inputs/<name>``) is accepted: the schema's nested form
  (``inputs/a/b``) has no documented meaning and no real descriptor uses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from shared.descriptor.fields import Fields, Path, Violations, describe
from shared.descriptor.types import ArrayType, Default, ParameterType, parse_default, parse_type

_PARAMETER_NAME: Final = re.compile(r"^[a-zA-Z0-9_]+$")
_REFERENCE: Final = re.compile(r"^(inputs|outputs)/([a-zA-Z0-9_]+)$")


class Input(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    display_name: str
    description: str
    type: ParameterType
    optional: bool = False
    default: Default | None = None
    matching: tuple[str, ...] = ()
    """References (``inputs/<name>``, ``outputs/<name>``) of arrays that must have this one's size."""


class Output(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    display_name: str
    description: str
    type: ParameterType
    optional: bool = False
    derived_from: str | None = None
    """The name of the input this output derives from (without ``inputs/``)."""
    matching: tuple[str, ...] = ()


def parse_parameters(
    inputs_raw: Mapping[Any, Any], outputs_raw: Mapping[Any, Any], errors: Violations
) -> tuple[list[Input], list[Output]]:
    """The valid inputs and outputs, in descriptor order; violations for the others."""
    inputs = [i for name, spec in _named(inputs_raw, "inputs", errors) if (i := _input(name, spec, errors))]
    outputs = [o for name, spec in _named(outputs_raw, "outputs", errors) if (o := _output(name, spec, errors))]
    types: dict[str, ParameterType] = {f"inputs/{p.name}": p.type for p in inputs}
    types |= {f"outputs/{p.name}": p.type for p in outputs}
    declared = {f"inputs/{name}" for name in inputs_raw} | {f"outputs/{name}" for name in outputs_raw}
    references = _References(types, declared, inputs_raw, errors)
    with_inputs = []
    for param in inputs:
        matching, _ = references.dependencies("inputs", param.name, inputs_raw[param.name])
        with_inputs.append(msgspec.structs.replace(param, matching=matching))
    with_outputs = []
    for output in outputs:
        matching, derived = references.dependencies("outputs", output.name, outputs_raw[output.name])
        with_outputs.append(msgspec.structs.replace(output, matching=matching, derived_from=derived))
    return with_inputs, with_outputs


def _named(raw: Mapping[Any, Any], kind: str, errors: Violations) -> list[tuple[str, Mapping[Any, Any]]]:
    found = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not _PARAMETER_NAME.match(name):
            errors.add((kind, str(name)), "parameter names may contain only letters, digits and '_'")
        elif not isinstance(spec, Mapping):
            errors.add((kind, name), f"must be a mapping, got {describe(spec)}")
        else:
            found.append((name, spec))
    return found


def _common(name: str, spec: Mapping[Any, Any], path: Path, errors: Violations) -> dict[str, Any] | None:
    fields = Fields(spec, path, errors)
    count = len(errors)
    common = {
        "name": name,
        "display_name": fields.text("display_name", required=True, non_empty=True),
        "description": fields.text("description", required=True),
        "type": parse_type(spec.get("type"), (*path, "type"), errors),
        "optional": fields.boolean("optional"),
    }
    return common if len(errors) == count else None


def _input(name: str, spec: Mapping[Any, Any], errors: Violations) -> Input | None:
    path = ("inputs", name)
    common = _common(name, spec, path, errors)
    if common is None:
        return None
    default = None
    if spec.get("default") is not None:
        count = len(errors)
        default = parse_default(common["type"], spec["default"], (*path, "default"), errors)
        if len(errors) != count:
            return None
    return Input(**common, default=default)


def _output(name: str, spec: Mapping[Any, Any], errors: Violations) -> Output | None:
    # a ``default`` on an output means nothing; like any unknown key it is ignored
    common = _common(name, spec, ("outputs", name), errors)
    return None if common is None else Output(**common)


class _References:
    """Resolves ``dependencies`` references against the declared parameters."""

    def __init__(
        self,
        types: dict[str, ParameterType],
        declared: set[str],
        inputs_raw: Mapping[Any, Any],
        errors: Violations,
    ) -> None:
        self.types, self.declared, self.inputs_raw, self.errors = types, declared, inputs_raw, errors

    def dependencies(self, kind: str, name: str, spec: Mapping[Any, Any]) -> tuple[tuple[str, ...], str | None]:
        path = (kind, name, "dependencies")
        deps = Fields(spec, (kind, name), self.errors).mapping("dependencies")
        if deps is None:
            return (), None
        return self._matching(deps, path, f"{kind}/{name}"), self._derived_from(deps, path, kind)

    def _derived_from(self, deps: Mapping[Any, Any], path: Path, kind: str) -> str | None:
        raw = deps.get("derived_from")
        if raw is None:
            return None
        where = (*path, "derived_from")
        match = _REFERENCE.match(raw) if isinstance(raw, str) else None
        if kind == "inputs":
            self.errors.add(where, "is only allowed on outputs")
        elif match is None or match.group(1) != "inputs":
            self.errors.add(where, f"must reference an input as inputs/<name>, got {raw!r}")
        elif match.group(2) not in self.inputs_raw:
            self.errors.add(where, f"references an unknown input {match.group(2)!r}")
        else:
            return match.group(2)
        return None

    def _matching(self, deps: Mapping[Any, Any], path: Path, me: str) -> tuple[str, ...]:
        raw = Fields(deps, path, self.errors).sequence("matching")
        if raw is None:
            return ()
        where = (*path, "matching")
        if me in self.types and not isinstance(self.types[me], ArrayType):
            self.errors.add(where, "only array parameters can match other parameters")
            return ()
        found: list[str] = []
        for index, ref in enumerate(raw):
            problem = None
            if not isinstance(ref, str) or not _REFERENCE.match(ref):
                problem = f"must reference a parameter as inputs/<name> or outputs/<name>, got {ref!r}"
            elif ref == me:
                problem = "a parameter cannot match itself"
            elif ref not in self.types:
                # a declared parameter that failed validation has its own violation already
                problem = None if ref in self.declared else f"references an unknown parameter {ref!r}"
            elif not isinstance(self.types[ref], ArrayType):
                problem = f"references {ref!r}, which is not an array"
            else:
                found.append(ref)
            if problem:
                self.errors.add((*where, str(index)), problem)
        return tuple(found)
