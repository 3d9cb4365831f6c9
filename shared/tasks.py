"""The task directory every service but the registry uses: tasks as the log knows them.

A task is live when it has a ``registered`` event and no ``deleted`` one. Its descriptor is read
once from the blob store (``tasks/<id>/descriptor.yml``, written by the registry) and cached:
a registered task's registration and descriptor never change. Whether it is still live is read
from the log whenever a caller needs a live task (``by_id``, ``by_name``); the views of a run's
task (``registration``) do not ask.
"""

from __future__ import annotations

import uuid

import msgspec

from shared import layout
from shared.blobstore import BlobNotFound, BlobStore
from shared.descriptor.model import Descriptor, parse_descriptor
from shared.domain.task_events import TaskEvent, TaskRegistered
from shared.runlog.store import EventStore

_decoder: msgspec.json.Decoder[TaskEvent] = msgspec.json.Decoder(TaskEvent)


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A task as registered. A deleted task keeps its registration (runs still name it) but its
    descriptor may be gone with its files."""

    registered: TaskRegistered
    descriptor: Descriptor | None

    @property
    def id(self) -> uuid.UUID:
        return self.registered.task_id


class TaskDirectory:
    """Tasks by id or name. Registrations and descriptors never change, so they are cached; only
    whether a task is still live (not deleted) is asked of the log each time it matters."""

    def __init__(self, store: EventStore, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        self._descriptors: dict[uuid.UUID, Descriptor] = {}
        self._registrations: dict[uuid.UUID, TaskRegistered] = {}
        s = store.schema
        self._sql_by_name = (
            f"SELECT e.payload::text FROM {s}.events e WHERE e.aggregate = 'task' AND e.type = 'registered' "
            "AND e.payload->>'namespace' = $1 AND e.payload->>'version' = $2 AND NOT EXISTS "
            f"(SELECT 1 FROM {s}.events d WHERE d.aggregate_id = e.aggregate_id AND d.type = 'deleted') "
            "ORDER BY e.position DESC LIMIT 1"
        )

    async def by_id(self, task_id: uuid.UUID) -> Task | None:
        """The live task with this id: registered, not deleted, its descriptor still readable."""
        registered: TaskRegistered | None = None
        for stored in await self._store.read(task_id):
            if stored.aggregate != "task":
                return None
            event = _decoder.decode(stored.data)
            if not isinstance(event, TaskRegistered):
                return None  # deleted
            registered = event
        if registered is None:
            return None
        self._registrations[task_id] = registered
        descriptor = await self.descriptor(task_id)
        return None if descriptor is None else Task(registered=registered, descriptor=descriptor)

    async def by_name(self, namespace: str, version: str) -> Task | None:
        """The live task ``namespace/version`` (the newest registration, should there be several)."""
        payload = await self._store.pool.fetchval(self._sql_by_name, namespace, version)
        if payload is None:
            return None
        registered = _decoder.decode(payload)
        assert isinstance(registered, TaskRegistered)
        self._registrations[registered.task_id] = registered
        descriptor = await self.descriptor(registered.task_id)
        return None if descriptor is None else Task(registered=registered, descriptor=descriptor)

    async def registration(self, task_id: uuid.UUID) -> Task | None:
        """The task as it was registered, deleted since or not: what a run's task was. The
        descriptor is None when the task was deleted before this process first read it."""
        registered = self._registrations.get(task_id)
        if registered is None:
            for stored in await self._store.read(task_id):
                if stored.aggregate != "task":
                    return None
                event = _decoder.decode(stored.data)
                if isinstance(event, TaskRegistered):
                    registered = event
            if registered is None:
                return None
            self._registrations[task_id] = registered
        return Task(registered=registered, descriptor=await self.descriptor(task_id))

    async def descriptor(self, task_id: uuid.UUID) -> Descriptor | None:
        """The task's descriptor (read once from the blob store); None once its files are gone."""
        cached = self._descriptors.get(task_id)
        if cached is not None:
            return cached
        try:
            data = b"".join([chunk async for chunk in self._blobs.get(layout.task_descriptor(task_id))])
        except BlobNotFound:
            return None  # deleted between the event read and now
        descriptor = parse_descriptor(data)
        self._descriptors[task_id] = descriptor
        return descriptor
