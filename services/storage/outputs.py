"""Validation of a task's output folder, unpacked on local disk (reference §6.4, task-contract §4).

Each declared output is checked on its own, so one report lists every fault:

* missing → ``APPE-internal-missing-output-files`` (optional outputs may be missing);
* a directory where a file is expected → ``APPE-internal-is-directory``;
* text outputs are read as UTF-8, trimmed, blank → ``APPE-internal-is-blank``, then parsed and
  constrained as :func:`~services.storage.values.parse_output` says;
* arrays: a directory with ``array.yml`` (``size: N``) at every level
  (``APPE-internal-missing-metadata`` / ``APPE-internal-invalid-metadata``), items ``0..N-1``,
  nothing else inside (``APPE-internal-extra-output-files``), sizes within ``min_size``/``max_size``;
* images: a file (signature, dimensions, size as for inputs) or a directory of DICOM files
  (WSI-DICOM); files: one regular file;
* arrays declared ``matching`` (output-output and input-output) must have the same size
  (``APPE-internal-not-matching``).

Undeclared top-level entries of the output folder are ignored, as upstream's local mode does
(its cluster mode fails the run on them instead).
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from services.storage import errors as e
from services.storage.errors import ValueRejected
from services.storage.files import check_file, check_image
from services.storage.values import parse_output, wire_type
from shared import layout
from shared.descriptor.model import Output
from shared.descriptor.types import ArrayType, FileType, ImageType, ParameterType

MAX_TEXT: Final = 64 * 1024 * 1024
NOT_MATCHING: Final = "collections don't have the same size"


class Collected(msgspec.Struct, frozen=True, kw_only=True):
    """A valid output: its files (path relative to the output, local path) and JSON value."""

    parameter: str
    files: tuple[tuple[str, str], ...]
    size: int
    checksum: str
    value: Any
    array_size: int | None = None


def _missing() -> ValueRejected:
    return ValueRejected("file structure for primitive parameter is missing", "APPE-internal-missing-output-files")


def _is_directory() -> ValueRejected:
    return ValueRejected("file structure for primitive parameter is a directory", "APPE-internal-is-directory")


def _extra() -> ValueRejected:
    return ValueRejected("file structure for parameter contains extra files", "APPE-internal-extra-output-files")


def _no_metadata() -> ValueRejected:
    return ValueRejected("collection does not have array.yml file", "APPE-internal-missing-metadata")


def _bad_metadata() -> ValueRejected:
    return ValueRejected("collection array.yml is malformed", "APPE-internal-invalid-metadata")


def validate_outputs(
    outputs: tuple[Output, ...],
    root: pathlib.Path,
    matching: Sequence[tuple[str, str]] = (),
    input_sizes: Mapping[str, int | None] | None = None,
) -> tuple[list[Collected], list[dict[str, Any]]]:
    """The valid outputs and the error bodies of the others.

    ``matching``: pairs of ``inputs/<name>``/``outputs/<name>`` arrays that must have the same
    size (:meth:`Descriptor.matching_pairs`); ``input_sizes`` the provisioned input arrays' sizes.
    """
    collected: list[Collected] = []
    errors: list[dict[str, Any]] = []
    for output in outputs:
        path = root / output.name
        if not path.exists() and not path.is_symlink() and output.optional:
            continue
        try:
            files: list[tuple[str, pathlib.Path]] = []
            value = _read(output.type, path, "", files)
        except ValueRejected as err:
            errors.append(err.body(output.name))
            continue
        digests = [(rel, _sha256(p)) for rel, p in files]
        listing = "".join(f"{rel} {d}\n" for rel, d in sorted(digests))
        digest = (
            digests[0][1] if len(files) == 1 and files[0][0] == "" else hashlib.sha256(listing.encode()).hexdigest()
        )
        collected.append(
            Collected(
                parameter=output.name,
                files=tuple((rel, str(p)) for rel, p in files),
                size=sum(p.stat().st_size for _, p in files),
                checksum=f"sha256:{digest}",
                value=value,
                array_size=len(value) if isinstance(output.type, ArrayType) else None,
            )
        )
    sizes: dict[str, int | None] = {f"outputs/{c.parameter}": c.array_size for c in collected}
    sizes.update((f"inputs/{name}", size) for name, size in (input_sizes or {}).items())
    for first, second in matching:
        if not (first.startswith("outputs/") or second.startswith("outputs/")):
            continue  # two inputs: checked when the run was requested
        a, b = sizes.get(first), sizes.get(second)
        if a is not None and b is not None and a != b:
            name = (first if first.startswith("outputs/") else second).removeprefix("outputs/")
            errors.append(
                ValueRejected("collections don't have the same size", "APPE-internal-not-matching").body(name)
            )
    return collected, errors


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read(ptype: ParameterType, path: pathlib.Path, rel: str, files: list[tuple[str, pathlib.Path]]) -> Any:
    """Check the entry at ``path`` for ``ptype``; append its files; return its JSON value."""
    if path.is_symlink() or not path.exists():
        raise _missing()
    if isinstance(ptype, ArrayType):
        return _array(ptype, path, rel, files)
    if isinstance(ptype, ImageType) and path.is_dir():
        found = sorted(p for p in path.iterdir())
        if not found or any(not p.is_file() or p.is_symlink() or not _is_dicom(p) for p in found):
            raise ValueRejected(e.IMAGE_FORMAT)
        files.extend((f"{rel}/{p.name}" if rel else p.name, p) for p in found)
        return None
    if path.is_dir():
        raise _is_directory()
    if not path.is_file():
        raise _missing()
    files.append((rel, path))
    if isinstance(ptype, ImageType):
        check_image(ptype, path)
        return None
    if isinstance(ptype, FileType):
        check_file(ptype, path)
        return None
    if path.stat().st_size > MAX_TEXT:
        raise ValueRejected(e.TYPE)
    return parse_output(ptype, path.read_bytes())


def _is_dicom(path: pathlib.Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _array(atype: ArrayType, path: pathlib.Path, rel: str, files: list[tuple[str, pathlib.Path]]) -> Any:
    if not path.is_dir():
        raise _no_metadata()
    metadata = path / layout.ARRAY_METADATA
    if not metadata.is_file() or metadata.is_symlink():
        raise _no_metadata()
    if metadata.stat().st_size > 1024:
        raise _bad_metadata()
    size = layout.array_size(metadata.read_bytes())
    if size is None:
        raise _bad_metadata()
    if (atype.min_size is not None and size < atype.min_size) or (atype.max_size is not None and size > atype.max_size):
        raise e.dimensions()
    expected = {"array.yml", *map(str, range(size))} if size <= 1_000_000 else None
    if expected is None or any(p.name not in expected for p in path.iterdir()):
        raise _extra()
    files.append((f"{rel}/array.yml" if rel else "array.yml", metadata))
    items = []
    for index in range(size):
        item_rel = f"{rel}/{index}" if rel else str(index)
        value = _read(atype.subtype, path / str(index), item_rel, files)
        if isinstance(atype.subtype, ArrayType):
            value = {"value": value, "subType": wire_type(atype.subtype.subtype)}
        items.append({"index": index, "value": value})
    return items
