"""Input provisioning (reference §2.5.9-2.5.13): JSON single, batch, array items, and binary.

Every endpoint: the run must exist (404) and be CREATED or PROVISIONED (403, checked before any
write and again by the domain's ``ProvisionInput``); the parameter must be an input of the
task (404; in a batch an entry of the 400 batch error); the value is validated completely
before anything is stored, so a refused request leaves the stored inputs as they were. A batch
is all or nothing: every item is validated, then all are stored, then one append records them.

An optional input provisioned with ``null`` is cleared (its blobs deleted, ``InputsCleared``)
instead of upstream's writing of the text ``null``.
"""

from __future__ import annotations

import asyncio
import pathlib
import zipfile
import zlib
from typing import Any, Final

from services.storage import errors as e
from services.storage.errors import ValueRejected
from services.storage.files import check_file, check_image
from services.storage.handlers import RunContext, Storage, checksum, parse_indexes
from services.storage.values import Encoded, encode, encode_item, is_binary, item_type
from shared.descriptor.model import Input
from shared.descriptor.types import ArrayType, FileType, ImageType
from shared.domain.decide import ClearInputs, Command, ProvisionInput
from shared.domain.events import InputKind
from shared.runlog.schema import Conn

WIRE_TYPES: Final = frozenset(
    {"BOOLEAN", "INTEGER", "NUMBER", "STRING", "ENUMERATION", "DATETIME", "GEOMETRY", "IMAGE", "FILE", "ARRAY"}
)
_MISSING: Final = object()


class _Planned:
    """A validated provision waiting to be stored."""

    def __init__(self, param: Input, encoded: Encoded | None) -> None:
        self.param = param
        self.encoded = encoded  # None: clear the optional input

    def echo(self, ctx: RunContext) -> dict[str, Any]:
        value = None if self.encoded is None else self.encoded.echo
        return {"parameterName": self.param.name, "value": value, "taskRunId": str(ctx.run_id)}


def _provision_body(body: object, path_name: str | None) -> tuple[str, object]:
    """``{"parameterName", "value", "type"?}`` → (name, value); unknown keys refused as Jackson does."""
    if not isinstance(body, dict):
        raise e.unprocessable(path_name, "expected a JSON object")
    unknown = set(body) - {"parameterName", "value", "type"}
    if unknown:
        raise e.unprocessable(path_name, f"unknown field {sorted(unknown)[0]!r}")
    kind = body.get("type")
    if kind is not None and kind not in WIRE_TYPES:
        raise e.unprocessable(path_name, "unknown type")
    name = body.get("parameterName")
    if not isinstance(name, str):
        raise e.parameter_not_found(path_name or "")
    return name, body.get("value", _MISSING)


class Provisioning:
    def __init__(self, storage: Storage) -> None:
        self.s = storage

    def _plan(self, ctx: RunContext, param: Input, value: object) -> _Planned:
        if value is None or value is _MISSING:
            if param.optional:
                return _Planned(param, None)
            raise ValueRejected(e.TYPE)
        return _Planned(param, encode(param.type, value, max_array=self.s.limits.max_array))

    async def _store(self, ctx: RunContext, planned: list[_Planned]) -> None:
        async with self.s.changing_inputs(ctx) as (ctx, conn):
            commands: list[Command] = []
            for p in planned:
                key = self.s.inputs_key(ctx, p.param.name)
                if p.encoded is None:
                    await self.s.clear(key)
                    await self.s.blobs.delete(f"{key}.geojson")
                    commands.append(ClearInputs(parameters=(p.param.name,)))
                    continue
                await self.s.blobs.delete(f"{key}.geojson")
                size, digest = await self.s.replace(key, p.encoded.files)
                commands.append(
                    ProvisionInput(parameter=p.param.name, kind=InputKind.VALUE, size=size, checksum=digest)
                )
            await self.s.execute_all(ctx, commands, conn)

    async def json_single(self, run_id: str, path_name: str, body: object) -> dict[str, Any]:
        ctx = await self.s.context(run_id)
        param = ctx.input(path_name)
        name, value = _provision_body(body, path_name)
        if name.lower() != param.name.lower():
            raise e.parameter_not_found(path_name)
        self.s.require_provisionable(ctx)
        try:
            planned = self._plan(ctx, param, value)
        except ValueRejected as err:
            raise e.parameter_rejected(path_name, err) from None
        await self._store(ctx, [planned])
        return planned.echo(ctx)

    async def batch(self, run_id: str, body: object) -> list[dict[str, Any]]:
        ctx = await self.s.context(run_id)
        if not isinstance(body, list):
            raise e.unprocessable(None, "expected a JSON array")
        if len(body) > self.s.limits.max_batch:
            raise e.unprocessable(None, f"more than {self.s.limits.max_batch} items")
        self.s.require_provisionable(ctx)
        planned: list[_Planned] = []
        errors: list[dict[str, Any]] = []
        for item in body:
            name = item.get("parameterName") if isinstance(item, dict) else None
            label = name if isinstance(name, str) else ""
            try:
                name, value = _provision_body(item, label)
                planned.append(self._plan(ctx, ctx.input(name), value))
            except ValueRejected as err:
                errors.append(err.body(label))
            except e.StorageError as err:
                errors.append(e.error_body(err.code, err.message, err.details))
        if errors:
            raise e.batch(errors)
        await self._store(ctx, planned)
        return [p.echo(ctx) for p in planned]

    # --- array items ----------------------------------------------------------------------------

    def _array(self, ctx: RunContext, name: str) -> tuple[Input, ArrayType]:
        param = ctx.input(name)
        if not isinstance(param.type, ArrayType):
            raise e.parameter_rejected(name, ValueRejected(e.TYPE))
        return param, param.type

    async def json_item(self, run_id: str, name: str, indexes_text: str | None, body: object) -> dict[str, Any]:
        ctx = await self.s.context(run_id)
        param, atype = self._array(ctx, name)
        indexes = parse_indexes(name, indexes_text)
        if not isinstance(body, dict) or set(body) - {"value", "index", "parameterName"}:
            raise e.unprocessable(name, "expected a JSON object with a value")
        self.s.require_provisionable(ctx)
        try:
            encoded = encode_item(atype, indexes, body.get("value"), max_array=self.s.limits.max_array)
        except ValueRejected as err:
            raise e.parameter_rejected(name, err) from None
        async with self.s.changing_inputs(ctx) as (ctx, conn):
            await self._store_item(ctx, conn, param, indexes, encoded.files)
        index = "/".join(map(str, indexes))
        return {"index": f"{param.name}/{index}", "value": encoded.echo, "taskRunId": str(ctx.run_id)}

    async def _store_item(
        self,
        ctx: RunContext,
        conn: Conn,
        param: Input,
        indexes: list[int],
        files: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...],
        local: dict[str, pathlib.Path] | None = None,
    ) -> None:
        item_parts = [param.name, *map(str, indexes)]
        key = self.s.inputs_key(ctx, *item_parts)
        size, digest = await self.s.replace(key, files, local)
        # every level above the item knows its size: at least up to this index
        for depth, index in enumerate(indexes):
            level = self.s.inputs_key(ctx, *item_parts[: depth + 1])
            current = await self.s.array_size(level) or 0
            if index + 1 > current:
                await self.s.replace(f"{level}/array.yml", [("", f"size: {index + 1}".encode())])
        index_text = "/".join(map(str, indexes))
        command = ProvisionInput(
            parameter=param.name, kind=InputKind.ARRAY_ITEM, index=index_text, size=size, checksum=digest
        )
        await self.s.execute_all(ctx, [command], conn)

    # --- binary ---------------------------------------------------------------------------------

    async def binary(
        self,
        run_id: str,
        name: str,
        indexes_text: str | None,
        received: pathlib.Path,
        sidecar: pathlib.Path | None,
        *,
        received_sha256: str | None = None,
    ) -> dict[str, Any]:
        """A file or image received into ``received`` (and a ``.geojson`` sidecar) for ``name``.

        With the sha256 of ``received`` (hashed while it arrived), a plain file or image is moved
        into the blob store (:meth:`BlobStore.adopt`: a rename on the local backend) instead of
        copied and hashed again."""
        ctx = await self.s.context(run_id)
        param = ctx.input(name)
        indexes = None if indexes_text is None else parse_indexes(name, indexes_text)
        ptype = param.type
        try:
            if indexes is not None:
                if not isinstance(ptype, ArrayType):
                    raise ValueRejected(e.TYPE)
                ptype = item_type(ptype, indexes, max_array=self.s.limits.max_array)
            if not is_binary(ptype):
                raise ValueRejected(e.TYPE)
            dicom = None
            if isinstance(ptype, ImageType):
                dicom = await asyncio.to_thread(check_image, ptype, received, self.s.limits.max_input_file)
            elif isinstance(ptype, FileType):
                check_file(ptype, received)
        except ValueRejected as err:
            raise e.parameter_rejected(name, err) from None
        self.s.require_provisionable(ctx)
        unpacked = received.parent / f"{received.name}.d"
        local = {"": received}
        if dicom is not None:
            try:
                local = await asyncio.to_thread(_unzip, received, unpacked, dicom)
            except ValueRejected as err:
                raise e.parameter_rejected(name, err) from None
        async with self.s.changing_inputs(ctx) as (ctx, conn):
            if indexes is not None:
                item = self.s.inputs_key(ctx, param.name, *map(str, indexes))
                await self.s.blobs.delete(f"{item}.geojson")  # the replaced item's location, if any
                if sidecar is not None:
                    await self.s.blobs.put_file(f"{item}.geojson", sidecar)
                await self._store_item(ctx, conn, param, indexes, (), local)
                index = "/".join(map(str, indexes))
                return {"index": f"{param.name}/{index}", "taskRunId": str(ctx.run_id)}
            key = self.s.inputs_key(ctx, param.name)
            await self.s.blobs.delete(f"{key}.geojson")
            if dicom is None and received_sha256 is not None:
                await self.s.clear(key)
                size = await self.s.blobs.adopt(key, received)
                digest = checksum([("", received_sha256)])
            else:
                size, digest = await self.s.replace(key, (), local)
            if sidecar is not None:
                await self.s.blobs.put_file(f"{key}.geojson", sidecar)
            command = ProvisionInput(parameter=param.name, kind=InputKind.FILE, size=size, checksum=digest)
            await self.s.execute_all(ctx, [command], conn)
        return {"parameterName": param.name, "taskRunId": str(ctx.run_id)}


def _unzip(archive: pathlib.Path, target: pathlib.Path, entries: list[tuple[str, str]]) -> dict[str, pathlib.Path]:
    target.mkdir(parents=True, exist_ok=True)
    files = {}
    try:
        with zipfile.ZipFile(archive) as z:
            for entry, stored in entries:
                path = target / stored
                with z.open(entry) as source, path.open("wb") as out:
                    while chunk := source.read(1024 * 1024):
                        out.write(chunk)
                files[stored] = path
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError):
        # a bad CRC or a broken stream past the headers check_image read (upstream: the
        # unzip's IOException, "invalid parameter type"); never a truncated file kept
        raise ValueRejected(e.TYPE) from None
    return files
