"""The append-only event store in PostgreSQL (asyncpg).

Layers, as in pyeventsourcing: :class:`NewEvent` / :class:`StoredEvent` are the records; this
module is the recorder; :mod:`shared.runlog.runs` maps run events to records.

An append is one SQL statement (so one round trip and one implicit transaction) whose
data-modifying CTEs insert the events, queue their positions in the outbox and upsert the run
read model. It does not ``NOTIFY``: PostgreSQL serialises every notifying commit of the whole
cluster on one lock, which capped appends at a third of the plain-insert rate
(``docs/benchmarks.md``). The relay is woken by ``on_commit`` instead.

Optimistic concurrency: the append names the sequence it expects; it inserts nothing unless the
aggregate's head is that sequence, and the primary key ``(aggregate_id, seq)`` makes the loser of
two concurrent appends fail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import asyncpg
import msgspec

from shared.runlog.schema import Conn, check_schema_name

# Called after every committed append: how the relay is woken (see shared/service.py). Best
# effort: the relay also polls, so a lost wake-up only delays publication.
OnCommit = Callable[[], Awaitable[None]]


async def keep_session(conn: asyncpg.Connection) -> None:
    """The ``reset`` of our connection pools: nothing beyond asyncpg's own (a transaction left
    open is rolled back, listeners are dropped).

    asyncpg's default resets every released connection with one more round trip
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): 2-3x the client CPU of a
    one-row query and more than twice its server CPU. Our pooled sessions change no settings,
    listen to nothing and keep no cursor past a transaction; the one session-level lock
    (:meth:`shared.runlog.runs.RunLog.exclusive`) ends its session if it cannot release it.
    """


class RunLogError(Exception):
    """Root of the run log's errors."""


class ConcurrencyError(RunLogError):
    """Another writer appended to the same aggregate first; reload and decide again."""


class CorruptLog(RunLogError):
    """A stored event cannot be decoded: the log has a record this code does not understand."""


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event about to be appended: its payload already encoded as JSON."""

    id: uuid.UUID
    type: str
    occurred_at: dt.datetime
    state: str | None
    payload: bytes


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A committed event: the envelope published on NATS and served by the event APIs.

    ``state`` is the aggregate's state after this event, so consumers never need the fold.
    """

    id: uuid.UUID
    aggregate: str
    aggregate_id: uuid.UUID
    seq: int
    position: int
    type: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    state: str | None
    data: msgspec.Raw


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the ``runs`` read model (see :func:`shared.runlog.runs.run_row`)."""

    run_id: uuid.UUID
    task_id: uuid.UUID | None
    task_namespace: str
    task_version: str
    state: str
    version: int
    attempt: int
    executor_id: str | None
    deleted: bool
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    ended_at: dt.datetime | None
    failure: str | None  # JSON text
    deadline: dt.datetime | None = None  # queue deadline while QUEUED, time limit while RUNNING

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.__struct_fields__)


RUN_COLUMNS = RunRow.__struct_fields__
_SELECT_EVENT = (
    "SELECT event_id, aggregate, aggregate_id, seq, position, type, occurred_at, recorded_at, state, "
    "payload::text AS payload FROM {s}.events"
)


def record_to_event(r: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        id=r["event_id"],
        aggregate=r["aggregate"],
        aggregate_id=r["aggregate_id"],
        seq=r["seq"],
        position=r["position"],
        type=r["type"],
        occurred_at=r["occurred_at"],
        recorded_at=r["recorded_at"],
        state=r["state"],
        data=msgspec.Raw(r["payload"].encode()),
    )


class EventStore:
    """Appends to and reads from the event log in one PostgreSQL schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str, on_commit: OnCommit | None = None) -> None:
        self.pool = pool
        self.on_commit = on_commit
        self.schema = s = check_schema_name(schema)
        insert = f"""
            WITH head AS (
                SELECT coalesce(max(seq), 0) AS seq FROM {s}.events WHERE aggregate_id = $2
            ), ev AS (
                INSERT INTO {s}.events
                    (aggregate, aggregate_id, seq, event_id, type, occurred_at, state, payload)
                SELECT $1, $2, $3 + u.ord, u.id, u.type, u.t, u.st, u.p::jsonb
                FROM unnest($4::uuid[], $5::text[], $6::timestamptz[], $7::text[], $8::text[])
                     WITH ORDINALITY AS u(id, type, t, st, p, ord), head
                WHERE head.seq = $3
                ORDER BY u.ord
                RETURNING position, seq, recorded_at
            ), ob AS (
                INSERT INTO {s}.outbox (position) SELECT position FROM ev
            ){{extra}}
            SELECT position, seq, recorded_at FROM ev ORDER BY seq
        """
        cols = ", ".join(RUN_COLUMNS)
        params = ", ".join(f"${i}" for i in range(9, 9 + len(RUN_COLUMNS)))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in RUN_COLUMNS if c != "run_id")
        run_upsert = f""", rm AS (
                INSERT INTO {s}.runs ({cols})
                SELECT {params} WHERE EXISTS (SELECT 1 FROM ev)
                ON CONFLICT (run_id) DO UPDATE SET {updates}
            )"""
        self._sql_append = insert.format(extra="")
        failure = f"${9 + RUN_COLUMNS.index('failure')}"
        self._sql_append_run = insert.format(extra=run_upsert.replace(failure, f"{failure}::jsonb"))
        self._sql_read = _SELECT_EVENT.format(s=s) + " WHERE aggregate_id = $1 AND seq > $2 ORDER BY seq"

    async def append(
        self,
        aggregate: str,
        aggregate_id: uuid.UUID,
        expected_seq: int,
        events: Sequence[NewEvent],
        run_row: RunRow | None = None,
        *,
        conn: Conn | None = None,
    ) -> list[StoredEvent]:
        """Append ``events`` after ``expected_seq``; raises ConcurrencyError if the head moved.

        With ``conn`` the append joins the caller's transaction (so a service can change its own
        tables and record the event atomically); otherwise it is its own transaction.
        """
        if not events:
            return []
        args: list[object] = [
            aggregate,
            aggregate_id,
            expected_seq,
            [e.id for e in events],
            [e.type for e in events],
            [e.occurred_at for e in events],
            [e.state for e in events],
            [e.payload.decode() for e in events],
        ]
        sql = self._sql_append
        if run_row is not None:
            sql = self._sql_append_run
            args.extend(run_row.values())
        try:
            rows = await (conn or self.pool).fetch(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyError(f"{aggregate} {aggregate_id}: sequence {expected_seq} is taken") from exc
        if len(rows) != len(events):
            raise ConcurrencyError(f"{aggregate} {aggregate_id}: head is not at {expected_seq}")
        if conn is None:
            # inside a caller's transaction the commit is the caller's: it calls wake() after
            await self.wake()
        return [
            StoredEvent(
                id=e.id,
                aggregate=aggregate,
                aggregate_id=aggregate_id,
                seq=r["seq"],
                position=r["position"],
                type=e.type,
                occurred_at=e.occurred_at,
                recorded_at=r["recorded_at"],
                state=e.state,
                data=msgspec.Raw(e.payload),
            )
            for e, r in zip(events, rows, strict=True)
        ]

    async def wake(self) -> None:
        """Tell the relay there is something to publish (best effort)."""
        if self.on_commit is not None:
            with contextlib.suppress(Exception):
                await self.on_commit()

    async def read(self, aggregate_id: uuid.UUID, after_seq: int = 0, *, conn: Conn | None = None) -> list[StoredEvent]:
        """An aggregate's events after ``after_seq``, in sequence order."""
        rows = await (conn or self.pool).fetch(self._sql_read, aggregate_id, after_seq)
        return [record_to_event(r) for r in rows]

    async def read_all(
        self,
        *,
        after_position: int = 0,
        limit: int = 1000,
        aggregate: str | None = None,
        since: dt.datetime | None = None,
    ) -> list[StoredEvent]:
        """Events in global position order (the feed auditors replay)."""
        sql = _SELECT_EVENT.format(s=self.schema) + " WHERE position > $1"
        args: list[object] = [after_position]
        if aggregate is not None:
            args.append(aggregate)
            sql += f" AND aggregate = ${len(args)}"
        if since is not None:
            args.append(since)
            sql += f" AND occurred_at >= ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY position LIMIT ${len(args)}"
        rows = await self.pool.fetch(sql, *args)
        return [record_to_event(r) for r in rows]

    async def iter_aggregates(self, aggregate: str) -> AsyncIterator[list[StoredEvent]]:
        """Every aggregate of a kind with its whole history, one at a time (for rebuilds)."""
        sql = _SELECT_EVENT.format(s=self.schema) + " WHERE aggregate = $1 ORDER BY aggregate_id, seq"
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            batch: list[StoredEvent] = []
            async for r in conn.cursor(sql, aggregate, prefetch=500):
                event = record_to_event(r)
                if batch and batch[-1].aggregate_id != event.aggregate_id:
                    yield batch
                    batch = []
                batch.append(event)
            if batch:
                yield batch
