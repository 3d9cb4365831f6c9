"""The task directory every service but the registry uses: tasks as the log knows them.

A task is live when it has a ``registered`` event and no ``deleted`` one. Its descriptor is read
once from the blob store (``tasks/<id>/descriptor.yml``, written by the registry) and cached:
a registered task's descriptor never changes.
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
    deleted: bool = False

    @property
    def id(self) -> uuid.UUID:
        return self.registered.task_id


class TaskDirectory:
    def __init__(self, store: EventStore, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        self._descriptors: dict[uuid.UUID, Descriptor] = {}
        s = store.schema
        self._sql_by_name = (
            f"SELECT e.aggregate_id FROM {s}.events e WHERE e.aggregate = 'task' AND e.type = 'registered' "
            "AND e.payload->>'namespace' = $1 AND e.payload->>'version' = $2 AND NOT EXISTS "
            f"(SELECT 1 FROM {s}.events d WHERE d.aggregate_id = e.aggregate_id AND d.type = 'deleted') "
            "ORDER BY e.position DESC LIMIT 1"
        )

    async def by_id(self, task_id: uuid.UUID, *, include_deleted: bool = False) -> Task | None:
        """The live task with this id (or also a deleted one, with ``include_deleted``)."""
        registered: TaskRegistered | None = None
        deleted = False
        for stored in await self._store.read(task_id):
            if stored.aggregate != "task":
                return None
            event = _decoder.decode(stored.data)
            if isinstance(event, TaskRegistered):
                registered = event
            else:
                deleted = True
        if registered is None or (deleted and not include_deleted):
            return None
        descriptor = await self._descriptor(task_id)
        if descriptor is None and not include_deleted:
            return None
        return Task(registered=registered, descriptor=descriptor, deleted=deleted)

    async def by_name(self, namespace: str, version: str) -> Task | None:
        task_id = await self._store.pool.fetchval(self._sql_by_name, namespace, version)
        return None if task_id is None else await self.by_id(task_id)

    async def _descriptor(self, task_id: uuid.UUID) -> Descriptor | None:
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
