"""The task catalogue in PostgreSQL (asyncpg): the registry's own table of tasks.

A task row and its ``task.registered`` / ``task.deleted`` event are written in one transaction,
so the catalogue and the event log never disagree. Deleted tasks keep their row (with
``deleted_at``) and their history; a namespace + version can be registered again afterwards.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import msgspec

from shared.domain.task_events import TaskDeleted, TaskRegistered
from shared.runlog.store import EventStore, NewEvent

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.tasks (
        id                 UUID PRIMARY KEY,
        namespace          TEXT NOT NULL,
        version            TEXT NOT NULL,
        descriptor         JSONB NOT NULL,
        descriptor_key     TEXT NOT NULL,
        descriptor_sha256  TEXT NOT NULL,
        logo_key           TEXT,
        logo_sha256        TEXT,
        image_name         TEXT NOT NULL,
        image_id           TEXT NOT NULL,
        image_size         BIGINT NOT NULL,
        image_key          TEXT NOT NULL,
        created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
        deleted_at         TIMESTAMPTZ
    );
    CREATE UNIQUE INDEX tasks_live_namespace_version ON {s}.tasks (namespace, version)
        WHERE deleted_at IS NULL;
    CREATE INDEX tasks_created ON {s}.tasks (created_at, id);
    """,
)


class TaskExists(Exception):
    """A live task already has this namespace and version."""


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    namespace: str
    version: str
    descriptor: msgspec.Raw  # the validated descriptor model as JSON
    descriptor_key: str
    descriptor_sha256: str
    logo_key: str | None
    logo_sha256: str | None
    image_name: str
    image_id: str
    image_size: int
    image_key: str
    created_at: dt.datetime


_COLUMNS = (
    "id, namespace, version, descriptor::text AS descriptor, descriptor_key, descriptor_sha256, logo_key, "
    "logo_sha256, image_name, image_id, image_size, image_key, created_at"
)
_encoder = msgspec.json.Encoder()


def _record(row: asyncpg.Record) -> TaskRecord:
    values = dict(row)
    values["descriptor"] = msgspec.Raw(values["descriptor"].encode())
    return TaskRecord(**values)


class Catalogue:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.pool = store.pool
        self.s = store.schema

    async def by_id(self, task_id: uuid.UUID) -> TaskRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM {self.s}.tasks WHERE id = $1 AND deleted_at IS NULL", task_id
        )
        return None if row is None else _record(row)

    async def by_name(self, namespace: str, version: str) -> TaskRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM {self.s}.tasks WHERE namespace = $1 AND version = $2 AND deleted_at IS NULL",
            namespace,
            version,
        )
        return None if row is None else _record(row)

    async def listing(self, offset: int = 0, limit: int | None = None) -> tuple[list[TaskRecord], int]:
        """Live tasks in registration order, and how many there are in all."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval(f"SELECT count(*) FROM {self.s}.tasks WHERE deleted_at IS NULL")
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM {self.s}.tasks WHERE deleted_at IS NULL "
                "ORDER BY created_at, id OFFSET $1 LIMIT $2",
                offset,
                limit,
            )
        return [_record(r) for r in rows], int(total)

    async def register(self, record: TaskRecord, event: TaskRegistered) -> None:
        """Insert the task and append ``task.registered`` atomically; TaskExists on a duplicate."""
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    f"INSERT INTO {self.s}.tasks (id, namespace, version, descriptor, descriptor_key, "
                    "descriptor_sha256, logo_key, logo_sha256, image_name, image_id, image_size, image_key, "
                    "created_at) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    record.id,
                    record.namespace,
                    record.version,
                    bytes(record.descriptor).decode(),
                    record.descriptor_key,
                    record.descriptor_sha256,
                    record.logo_key,
                    record.logo_sha256,
                    record.image_name,
                    record.image_id,
                    record.image_size,
                    record.image_key,
                    record.created_at,
                )
            except asyncpg.UniqueViolationError as exc:
                raise TaskExists(f"{record.namespace} {record.version}") from exc
            await self.store.append("task", record.id, 0, [_new_event(event, "REGISTERED")], conn=conn)
        await self.store.wake()

    async def delete(self, record: TaskRecord, event: TaskDeleted) -> bool:
        """Mark the task deleted and append ``task.deleted``; False if it was already gone."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                f"UPDATE {self.s}.tasks SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING id",
                record.id,
                event.at,
            )
            if done is None:
                return False
            await self.store.append("task", record.id, 1, [_new_event(event, "DELETED")], conn=conn)
        await self.store.wake()
        return True


def _new_event(event: TaskRegistered | TaskDeleted, state: str) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type=str(type(event).__struct_config__.tag),
        occurred_at=event.at,
        state=state,
        payload=_encoder.encode(event),
    )
