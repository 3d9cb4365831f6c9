"""The scheduler's use cases: create runs, state actions, cancel, delete, read and list.

Every change goes through the run log (``RunLog.execute``); what happens next is event-driven:
the ``requested`` event reaches the admission consumer, ``queued`` the dispatcher (see
:mod:`services.scheduler.consumers`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import structlog

from services.scheduler.settings import SchedulerSettings
from services.scheduler.views import local_time
from shared import layout
from shared.blobstore import BlobNotFound, BlobStore
from shared.descriptor.model import Descriptor
from shared.domain.decide import CancelRun, CreateRun, DeleteRun, MarkProvisioned, RequestRun
from shared.domain.errors import InvalidRunState, RunNotFound, UnknownDesiredState
from shared.domain.events import RunStatus
from shared.domain.state import RunState
from shared.runlog.runs import RunLog
from shared.runlog.schema import Conn
from shared.runlog.store import StoredEvent
from shared.tasks import Task, TaskDirectory

log = structlog.get_logger("scheduler")


class TaskNotFound(Exception):
    pass


class BadStateRequest(Exception):
    """The state-action body is not ``{"desired": "<STATE>"}`` (upstream: 400)."""


class NotMatching(Exception):
    """Input arrays declared ``matching`` have different sizes (upstream: 400 at RUNNING); the
    argument is the first parameter's name."""


class BadQuery(Exception):
    pass


class RunListing(msgspec.Struct, frozen=True, kw_only=True):
    run_id: uuid.UUID
    task_id: uuid.UUID
    state: str


def parse_run_id(text: str) -> uuid.UUID:
    """A run id from a path; a malformed one is a run that does not exist (404, not 400)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise RunNotFound() from None


class Scheduler:
    def __init__(self, runlog: RunLog, tasks: TaskDirectory, blobs: BlobStore, settings: SchedulerSettings) -> None:
        self.runlog = runlog
        self.tasks = tasks
        self.blobs = blobs
        self.settings = settings
        self.pool = runlog.store.pool
        self.s = runlog.store.schema

    async def task_by_name(self, namespace: str, version: str) -> Task:
        task = await self.tasks.by_name(namespace, version)
        if task is None:
            raise TaskNotFound(f"{namespace}/{version}")
        return task

    async def task_by_id(self, text: str) -> Task:
        try:
            task_id = uuid.UUID(text)
        except ValueError:
            raise TaskNotFound(text) from None
        task = await self.tasks.by_id(task_id)
        if task is None:
            raise TaskNotFound(text)
        return task

    async def task_of(self, state: RunState) -> Task:
        assert state.task_id is not None
        task = await self.tasks.registration(state.task_id)
        if task is None:
            raise TaskNotFound(str(state.task_id))
        return task

    async def create_run(self, task: Task, time_limit: float | None = None) -> RunState:
        """A new run of ``task`` (CREATED). The time limit: the request's, else the descriptor's,
        else the engine default."""
        d = task.descriptor
        assert d is not None, "live tasks have a descriptor"
        if time_limit is None:
            time_limit = d.configuration.resources.time_limit_seconds or self.settings.default_time_limit or None
        command = CreateRun(
            task_id=task.id,
            task_namespace=d.namespace,
            task_version=d.version,
            required_inputs=tuple(i.name for i in d.inputs if not i.optional),
            optional_inputs=tuple(i.name for i in d.inputs if i.optional),
            time_limit_seconds=time_limit,
            max_attempts=self.settings.max_attempts,
        )
        run_id = uuid.uuid4()
        state, _ = await self.runlog.execute(run_id, command)
        log.info("run.created", run_id=str(run_id), task=f"{d.namespace}/{d.version}")
        return state

    async def get(self, run_id: uuid.UUID, *, conn: Conn | None = None) -> RunState:
        state = await self.runlog.load(run_id, conn=conn)
        if not state.exists or state.deleted:
            raise RunNotFound()
        return state

    async def state_action(self, run_id: uuid.UUID, body: Any) -> RunState:
        """Upstream's ``POST /state-actions``: PROVISIONED and RUNNING from clients; FINISHED
        only ever comes from an executor, so a client asking for it is refused (403)."""
        desired = body.get("desired") if isinstance(body, dict) else None
        if not isinstance(desired, str) or desired not in RunStatus.__members__:
            raise BadStateRequest()
        if desired not in (RunStatus.PROVISIONED, RunStatus.RUNNING):
            await self.get(run_id)  # an unknown run is 404 first, as upstream; no lock to wait for
            if desired == RunStatus.FINISHED:
                raise InvalidRunState("a run finishes only when its execution ends")
            raise UnknownDesiredState()
        command = MarkProvisioned() if desired == RunStatus.PROVISIONED else RequestRun()
        # under the run's lock: a provision in progress ends (and is counted) before the run moves on
        async with self.runlog.exclusive(run_id) as conn:
            state = await self.get(run_id, conn=conn)
            if isinstance(command, RequestRun) and state.status is RunStatus.PROVISIONED:
                # the descriptor comes from this process's cache or the blob store, never from a
                # second pool connection, which a lock holder must not wait for
                assert state.task_id is not None
                descriptor = await self.tasks.descriptor(state.task_id)
                if descriptor is not None:
                    await self._check_matching_inputs(state, descriptor)
            state, _ = await self.runlog.execute(run_id, command, state=state, conn=conn)
        return state

    async def _check_matching_inputs(self, state: RunState, descriptor: Descriptor) -> None:
        """Upstream's before-execution check: input arrays that must match have the same size
        (inputs not provisioned are not compared). Reads blobs only: called under the run lock."""
        for first, second in descriptor.matching_pairs():
            if not (first.startswith("inputs/") and second.startswith("inputs/")):
                continue
            sizes = [await self._input_array_size(state.run_id, ref.removeprefix("inputs/")) for ref in (first, second)]
            if None not in sizes and sizes[0] != sizes[1]:
                raise NotMatching(first.removeprefix("inputs/"))

    async def _input_array_size(self, run_id: uuid.UUID, name: str) -> int | None:
        key = f"{layout.run_input(run_id, name)}/{layout.ARRAY_METADATA}"
        try:
            metadata = b"".join([c async for c in self.blobs.get(key, length=1024)])
        except BlobNotFound:
            return None
        return layout.array_size(metadata)

    async def cancel(self, run_id: uuid.UUID) -> RunState:
        state = await self.get(run_id)
        state, _ = await self.runlog.execute(run_id, CancelRun(), state=state)
        return state

    async def delete(self, run_id: uuid.UUID) -> None:
        """Delete a run: its history stays, its files go, its container is stopped."""
        async with self.runlog.exclusive(run_id) as conn:
            state = await self.get(run_id, conn=conn)
            await self.runlog.execute(run_id, DeleteRun(), state=state, conn=conn)
        await self.blobs.delete_prefix(layout.run_prefix(run_id))
        log.info("run.deleted", run_id=str(run_id))

    async def logs(self, run_id: uuid.UUID) -> bytes:
        await self.get(run_id)
        try:
            return b"".join([c async for c in self.blobs.get(layout.run_log(run_id))])
        except BlobNotFound:
            return b""

    async def history(self, run_id: uuid.UUID) -> list[StoredEvent]:
        """A run's whole history, deleted runs included: deletion removes files, not facts."""
        events = await self.runlog.store.read(run_id)
        if not events or events[0].aggregate != "run":
            raise RunNotFound()
        return events

    async def runs_of_task_id(self, task_id: uuid.UUID, *, active_only: bool = False) -> list[uuid.UUID]:
        sql = f"SELECT run_id FROM {self.s}.runs WHERE task_id = $1 AND NOT deleted"
        if active_only:
            sql += " AND state NOT IN ('FINISHED', 'FAILED')"
        return [r["run_id"] for r in await self.pool.fetch(sql, task_id)]

    async def runs_of_task(self, task: Task) -> list[RunListing]:
        rows = await self.pool.fetch(
            f"SELECT run_id, task_id, state FROM {self.s}.runs WHERE task_id = $1 AND NOT deleted "
            "ORDER BY created_at, run_id",
            task.id,
        )
        return [RunListing(**dict(r)) for r in rows]

    async def listing(
        self,
        *,
        task_id: uuid.UUID | None,
        states: list[str],
        since: dt.datetime | None,
        until: dt.datetime | None,
        offset: int,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int]:
        """Runs of the read model matching the filters, newest first, and their total."""
        where = ["NOT deleted"]
        args: list[object] = []
        if task_id is not None:
            args.append(task_id)
            where.append(f"task_id = ${len(args)}")
        if states:
            args.append(states)
            where.append(f"state = ANY(${len(args)}::text[])")
        if since is not None:
            args.append(since)
            where.append(f"created_at >= ${len(args)}")
        if until is not None:
            args.append(until)
            where.append(f"created_at < ${len(args)}")
        clause = " AND ".join(where)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval(f"SELECT count(*) FROM {self.s}.runs WHERE {clause}", *args)
            rows = await conn.fetch(
                f"SELECT run_id, task_id, task_namespace, task_version, state, attempt, created_at, updated_at, "
                f"ended_at, failure::text AS failure FROM {self.s}.runs WHERE {clause} "
                f"ORDER BY created_at DESC, run_id OFFSET ${len(args) + 1} LIMIT ${len(args) + 2}",
                *args,
                offset,
                limit,
            )
        return [_listing_item(r) for r in rows], int(total)


def _listing_item(row: Any) -> dict[str, Any]:
    failure = msgspec.json.decode(row["failure"]) if row["failure"] else None
    item: dict[str, Any] = {
        "id": str(row["run_id"]),
        "taskId": str(row["task_id"]),
        "taskNamespace": row["task_namespace"],
        "taskVersion": row["task_version"],
        "state": row["state"],
        "attempt": row["attempt"],
        "createdAt": local_time(row["created_at"]),
        "updatedAt": local_time(row["updated_at"]),
        "endedAt": local_time(row["ended_at"]),
    }
    if failure is not None:
        item["failure"] = {
            "code": failure["code"],
            "message": failure["message"],
            "stage": failure["stage"],
            "exitCode": failure["exit_code"],
        }
    return item
