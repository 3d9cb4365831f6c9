"""What every storage use case needs: the run and its task, parameter look-up, blob writes and
reads, and appending provisioning events.

Where the per-run record of provisioned values lives
----------------------------------------------------
Nowhere but in the blobs and the run log: there is no storage-owned table. The run's
``InputProvisioned``/``InputsCleared`` events say *which* parameters are provisioned (the fold's
``provisioned`` set, with size and checksum per event); the blobs under
``runs/<id>/inputs/<param>`` (task-contract layout) hold *what* the values are, and the task's
descriptor says how to read them. ``GET …/inputs`` reads the (small) value blobs of the
provisioned parameters; zips and tars list the blobs and compute CRCs while streaming. A second
table would be a second source of truth to keep in step with the blobs, with no query it
answers better: reads are per run, and the blobs must be read anyway for zips and tars.

Consistency: a provision validates first, then, holding the run's advisory lock
(:meth:`RunLog.exclusive`), checks the run is still CREATED/PROVISIONED, writes its blobs and
appends its events (``ProvisionInput``, decided again by the domain) on the lock's connection.
The scheduler takes the same lock to move a run on (``RUNNING``, ``PROVISIONED``, deletion),
so a run's input files never change after it was requested to run, and two provisions of one
run never interleave their blob writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, TypeVar

import msgspec

from services.storage import errors as e
from shared import layout
from shared.blobstore import BlobNotFound, BlobStore
from shared.descriptor.model import Descriptor, Input, Output
from shared.domain.decide import Command
from shared.domain.errors import InvalidRunState, RunNotFound
from shared.domain.events import RunStatus
from shared.domain.state import RunState
from shared.runlog.runs import RunLog
from shared.runlog.schema import Conn
from shared.tasks import TaskDirectory

PROVISIONABLE: Final = (RunStatus.CREATED, RunStatus.PROVISIONED)
INDEXES: Final = re.compile(r"^(0(/[0-9]+)*|[1-9][0-9]*(/[0-9]+)*)$")
MAX_VALUE_BLOB: Final = 64 * 1024 * 1024


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_input_file: int
    max_output: int
    max_output_entries: int
    max_array: int
    max_batch: int


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class RunContext(msgspec.Struct, frozen=True, kw_only=True):
    state: RunState
    descriptor: Descriptor

    @property
    def run_id(self) -> uuid.UUID:
        return self.state.run_id

    def input(self, name: str) -> Input:
        return _lookup(self.descriptor.inputs, name)

    def output(self, name: str) -> Output:
        return _lookup(self.descriptor.outputs, name)


P = TypeVar("P", Input, Output)


def _lookup(params: Sequence[P], name: str) -> P:
    """A parameter by name; like upstream, case-insensitively when there is no exact match."""
    found = next((p for p in params if p.name == name), None)
    if found is None:
        folded = [p for p in params if p.name.lower() == name.lower()]
        found = folded[0] if len(folded) == 1 else None
    if found is None:
        raise e.parameter_not_found(name)
    return found


def parse_indexes(parameter: str, text: str | None) -> list[int]:
    if text is None or not INDEXES.match(text) or len(text) > 200:
        raise e.invalid_indexes(parameter, text or "")
    return [int(i) for i in text.split("/")]


def checksum(digests: Sequence[tuple[str, str]]) -> str:
    """One sha256 for a value: the blob's own, or that of the listing of its blobs."""
    if len(digests) == 1 and digests[0][0] == "":
        return f"sha256:{digests[0][1]}"
    listing = "".join(f"{path} {digest}\n" for path, digest in sorted(digests))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


class Storage:
    """The storage service's use cases share this: run loading, blobs, events."""

    def __init__(self, runlog: RunLog, tasks: TaskDirectory, blobs: BlobStore, limits: Limits) -> None:
        self.runlog = runlog
        self.tasks = tasks
        self.blobs = blobs
        self.limits = limits

    async def context(self, run_id: str, *, live_task: bool = True) -> RunContext:
        """The live run (RunNotFound for malformed or unknown ids) and its task's descriptor.

        ``live_task``: the task must not be deleted (clients' requests). The executor's exchange
        of a run under way passes False and saves the read: the run is already past that check,
        and a deletion cancels it anyway.
        """
        try:
            parsed = uuid.UUID(run_id)
        except ValueError:
            raise RunNotFound() from None
        state = await self.runlog.load(parsed)
        if not state.exists or state.deleted or state.task_id is None:
            raise RunNotFound()
        if live_task:
            task = await self.tasks.by_id(state.task_id)
            descriptor = None if task is None else task.descriptor
        else:
            descriptor = await self.tasks.descriptor(state.task_id)
        if descriptor is None:
            raise e.Missing("APPE-internal-task-not-found", "Task not found.")
        return RunContext(state=state, descriptor=descriptor)

    @staticmethod
    def require_provisionable(ctx: RunContext) -> None:
        if ctx.state.status not in PROVISIONABLE:
            raise InvalidRunState()

    @contextlib.asynccontextmanager
    async def changing_inputs(self, ctx: RunContext) -> AsyncIterator[tuple[RunContext, Conn]]:
        """The run locked, reloaded and still provisionable (403 otherwise), with the lock's
        connection for :meth:`execute_all`: write input blobs only inside this block."""
        async with self.runlog.exclusive(ctx.run_id) as conn:
            state = await self.runlog.load(ctx.run_id, conn=conn)
            if not state.exists or state.deleted:
                raise RunNotFound()
            locked = RunContext(state=state, descriptor=ctx.descriptor)
            self.require_provisionable(locked)
            yield locked, conn

    async def execute_all(self, ctx: RunContext, commands: Sequence[Command], conn: Conn | None = None) -> RunState:
        """Decide ``commands`` in order on the run's state and append all their events at once
        (first on the state ``ctx`` was loaded with: the append checks it is still current)."""
        return (await self.runlog.execute_all(ctx.run_id, commands, state=ctx.state, conn=conn))[0]

    # --- blobs ----------------------------------------------------------------------------------

    async def replace(
        self, key: str, files: Sequence[tuple[str, bytes]], local: Mapping[str, pathlib.Path] | None = None
    ) -> tuple[int, str]:
        """Store ``files`` (bytes) and ``local`` (files on disk), paths relative to ``key``, in
        place of whatever ``key`` held: their total size and the value's checksum."""
        await self.clear(key)
        digests = []
        size = 0
        for path, data in files:
            info = await self.blobs.put_stream(f"{key}/{path}" if path else key, _once(data))
            digests.append((path, info.sha256))
            size += info.size
        for path, source in (local or {}).items():
            info = await self.blobs.put_file(f"{key}/{path}" if path else key, source)
            digests.append((path, info.sha256))
            size += info.size
        return size, checksum(digests)

    async def clear(self, key: str) -> None:
        # the blobs under the key first: on the local backend a value that was a directory (an
        # array, a WSI-DICOM image) is a folder, which deleting the key as a file cannot remove
        await self.blobs.delete_prefix(key)
        await self.blobs.delete(key)

    async def read_small(self, key: str) -> bytes:
        """A value blob's bytes (bounded: values are small; files are never read this way)."""
        if await self.blobs.size(key) > MAX_VALUE_BLOB:
            raise e.reading_failed(key.rsplit("/", 1)[-1], "value too large to read")
        return b"".join([chunk async for chunk in self.blobs.get(key)])

    async def array_size(self, key: str) -> int | None:
        """The ``size`` in ``key/array.yml``, or None without one."""
        try:
            return layout.array_size(await self.read_small(f"{key}/{layout.ARRAY_METADATA}"))
        except BlobNotFound:
            return None

    @staticmethod
    def inputs_key(ctx: RunContext, *parts: str) -> str:
        return "/".join((layout.run_inputs(ctx.run_id), *parts))

    @staticmethod
    def outputs_key(ctx: RunContext, *parts: str) -> str:
        return "/".join((layout.run_outputs(ctx.run_id), *parts))
