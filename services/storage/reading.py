"""Reading a run's inputs and outputs (reference §2.5.17) and the executor's ``inputs.tar``.

State rules: ``GET …/inputs`` and ``inputs.zip`` answer 403 while the run is CREATED;
``…/outputs`` and ``outputs.zip`` until it is FINISHED; single output files until it is
FINISHED or FAILED (a failed run keeps the outputs that were valid). Single input files have no
state rule, as upstream. Only parameters the run log says are provisioned are ever served.

Fixed vs upstream: ``…/input/<name>.geojson`` serves the ``.geojson`` sidecar (upstream serves
the image itself); unknown names are a 400 reading error as upstream, never a path outside the
run's storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from services.storage import errors as e
from services.storage.archives import Source, tar_end, tar_header, tar_padding, zip_stream
from services.storage.handlers import RunContext, Storage, parse_indexes
from services.storage.values import parse_output, stored_value, wire_type
from shared.blobstore import BlobNotFound
from shared.descriptor.types import ArrayType, FileType, ImageType, ParameterType
from shared.domain.events import RunStatus

EXECUTING: Final = (RunStatus.QUEUING, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)

Reader = Callable[[ParameterType, bytes], Any]


class Download:
    """A response body: one blob, or a zip made on the fly."""

    def __init__(self, filename: str, content_type: str, chunks: AsyncIterator[bytes], size: int | None = None) -> None:
        self.filename = filename
        self.content_type = content_type
        self.chunks = chunks
        self.size = size


class Reading:
    def __init__(self, storage: Storage) -> None:
        self.s = storage

    # --- JSON values ----------------------------------------------------------------------------

    async def inputs(self, run_id: str) -> list[dict[str, Any]]:
        ctx = await self.s.context(run_id)
        if ctx.state.status is RunStatus.CREATED:
            raise e.state_refused()
        values = []
        for param in ctx.descriptor.inputs:
            if param.name in ctx.state.provisioned:
                key = self.s.inputs_key(ctx, param.name)
                values.append(await self._value(ctx, param.name, param.type, key, stored_value))
        return values

    async def outputs(self, run_id: str) -> list[dict[str, Any]]:
        ctx = await self.s.context(run_id)
        if ctx.state.status is not RunStatus.FINISHED:
            raise e.state_refused()
        values = []
        for param in ctx.descriptor.outputs:
            key = self.s.outputs_key(ctx, param.name)
            if await self.s.blobs.exists(key) or await self.s.blobs.list(key):
                values.append(await self._value(ctx, param.name, param.type, key, parse_output))
        return values

    async def _value(self, ctx: RunContext, name: str, ptype: ParameterType, key: str, read: Reader) -> dict[str, Any]:
        body: dict[str, Any] = {"taskRunId": str(ctx.run_id), "parameterName": name, "type": wire_type(ptype)}
        if isinstance(ptype, ArrayType):
            items, subtype = await self._array(ptype, key, read)
            body.update(value=items, subType=subtype)
        else:
            body["value"] = await self._scalar(ptype, key, read)
        return body

    async def _scalar(self, ptype: ParameterType, key: str, read: Reader) -> Any:
        if isinstance(ptype, FileType | ImageType):
            return None
        try:
            return read(ptype, await self.s.read_small(key))
        except BlobNotFound:
            return None
        except e.ValueRejected:
            return None  # stored outputs were validated; never fail a read on them

    async def _array(self, atype: ArrayType, key: str, read: Reader) -> tuple[list[dict[str, Any]], str]:
        size = await self.s.array_size(key) or 0
        items = []
        for index in range(size):
            item_key = f"{key}/{index}"
            if isinstance(atype.subtype, ArrayType):
                nested, subtype = await self._array(atype.subtype, item_key, read)
                value: Any = {"value": nested, "subType": subtype}
            else:
                # a WSI-DICOM item is a directory: blobs under the key, none at it
                if not await self.s.blobs.exists(item_key) and not await self.s.blobs.list(item_key):
                    continue  # an index not provisioned (item by item)
                value = await self._scalar(atype.subtype, item_key, read)
            items.append({"index": index, "value": value})
        return items, wire_type(atype.subtype)

    # --- files and zips -------------------------------------------------------------------------

    def _source(self, key: str) -> Source:
        return lambda: self.s.blobs.get(key)

    async def _entries(self, keys: list[str], strip: str) -> list[tuple[str, int, Source]]:
        return [(k[len(strip) + 1 :], await self.s.blobs.size(k), self._source(k)) for k in keys]

    async def _provisioned_keys(self, ctx: RunContext) -> list[str]:
        prefix = self.s.inputs_key(ctx)
        keys = await self.s.blobs.list(prefix)
        names = ctx.state.provisioned
        return [k for k in keys if _top(k, prefix) in names]

    async def inputs_zip(self, run_id: str) -> Download:
        ctx = await self.s.context(run_id)
        if ctx.state.status is RunStatus.CREATED:
            raise e.state_refused()
        keys = await self._provisioned_keys(ctx)
        if not keys:
            raise e.provisions_not_found()
        entries = await self._entries(keys, self.s.inputs_key(ctx))
        return Download(f"inputs-{ctx.run_id}.zip", "application/octet-stream", zip_stream(entries))

    async def outputs_zip(self, run_id: str) -> Download:
        ctx = await self.s.context(run_id)
        if ctx.state.status is not RunStatus.FINISHED:
            raise e.state_refused()
        prefix = self.s.outputs_key(ctx)
        keys = await self.s.blobs.list(prefix)
        if not keys:
            raise e.provisions_not_found()
        entries = await self._entries(keys, prefix)
        return Download(f"outputs-{ctx.run_id}.zip", "application/octet-stream", zip_stream(entries))

    async def single(self, run_id: str, which: str, name: str, indexes_text: str | None) -> Download:
        """``input/<name>`` or ``output/<name>`` (optionally ``/indexes?value=``)."""
        ctx = await self.s.context(run_id)
        sidecar = name.endswith(".geojson") and indexes_text is None
        base = name.removesuffix(".geojson") if sidecar else name
        if which == "output":
            if ctx.state.status not in (RunStatus.FINISHED, RunStatus.FAILED):
                raise e.state_refused()
            declared = {p.name for p in ctx.descriptor.outputs}
            root = self.s.outputs_key(ctx)
        else:
            declared = {p.name for p in ctx.descriptor.inputs} & ctx.state.provisioned
            root = self.s.inputs_key(ctx)
        if base not in declared:
            raise e.reading_failed(name, f"no {which} named {name!r}")
        if indexes_text is not None:
            indexes = parse_indexes(name, indexes_text)
            item = "/".join(map(str, indexes))
            key = f"{root}/{base}/{item}"
            filename = f"{base}/{item}" if which == "input" else str(indexes[-1])
            return await self._download(key, f"{root}/{base}", filename, name)
        if sidecar:
            key = f"{root}/{base}.geojson"
            if not await self.s.blobs.exists(key):
                raise e.reading_failed(name, "no .geojson for this parameter")
            return Download(name, "application/geo+json", self.s.blobs.get(key), await self.s.blobs.size(key))
        return await self._download(f"{root}/{base}", root, base, name)

    async def _download(self, key: str, relative_to: str, filename: str, name: str) -> Download:
        if await self.s.blobs.exists(key):
            return Download(
                filename.rsplit("/", 1)[-1],
                "application/octet-stream",
                self.s.blobs.get(key),
                await self.s.blobs.size(key),
            )
        keys = await self.s.blobs.list(key)
        if not keys:
            raise e.reading_failed(name, "not found in storage")
        entries = await self._entries(keys, relative_to)
        return Download(f"{filename.rsplit('/', 1)[-1]}.zip", "application/octet-stream", zip_stream(entries))

    # --- the executor exchange ------------------------------------------------------------------

    async def inputs_tar(self, run_id: str, folder: str = "", empty: Sequence[str] = ()) -> AsyncIterator[bytes]:
        """The run's inputs as the task must see them in its input folder, as a tar stream.

        With ``folder`` (a relative path such as ``inputs``), the entries are under it and the
        tar starts with the folder itself and each of ``empty``: one archive extracted at ``/``
        makes the input folder with the inputs and the (empty) output folder, all 0777.
        """
        ctx = await self.s.context(run_id, live_task=False)
        if ctx.state.status not in EXECUTING:
            raise e.state_refused()
        prefix = self.s.inputs_key(ctx)
        under = f"{folder}/" if folder else ""
        entries = [
            (under + k[len(prefix) + 1 :], k, await self.s.blobs.size(k)) for k in await self._provisioned_keys(ctx)
        ]
        folders = list(dict.fromkeys(f for f in (folder, *empty) if f))
        return self._tar(entries, folders)

    async def _tar(self, entries: list[tuple[str, str, int]], folders: Sequence[str] = ()) -> AsyncIterator[bytes]:
        # only the named folders and those inside them: the engine creates missing parents, and
        # an entry for an existing parent such as /tmp would change its mode
        made: set[str] = set()
        for folder in folders:
            parts = folder.split("/")
            made.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
            yield tar_header(folder, 0, directory=True)
        for name, key, size in entries:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    made.add(folder)
                    yield tar_header(folder, 0, directory=True)
            yield tar_header(name, size)
            sent = 0
            async for chunk in self.s.blobs.get(key):
                sent += len(chunk)
                yield chunk
            if sent != size:  # changed under us: abort the stream rather than send a corrupt tar
                raise RuntimeError(f"blob {key} changed while streaming")
            yield tar_padding(size)
        yield tar_end()


def _top(key: str, prefix: str) -> str:
    first = key[len(prefix) + 1 :].split("/", 1)[0]
    return first.removesuffix(".geojson")
