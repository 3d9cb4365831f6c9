"""The run log's tables, created idempotently at start-up.

Several processes may start at once against an empty database: migrations run inside one
transaction holding a transaction-level advisory lock, and each step is recorded in
``schema_migrations``, so exactly one process applies each step and the others wait and skip.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    """A PostgreSQL schema name safe to splice into SQL (lower-case identifier)."""
    if not _IDENT.match(schema):
        raise ValueError(f"invalid schema name {schema!r}: use lower-case letters, digits and _")
    return schema


def lock_key(schema: str, purpose: str) -> int:
    """A stable 63-bit advisory-lock key for ``purpose`` in ``schema``."""
    return zlib.crc32(f"{schema}:{purpose}".encode()) | (1 << 40)


# Each step runs once, in order; never edit a step that has shipped, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.events (
        position      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        aggregate     TEXT        NOT NULL,
        aggregate_id  UUID        NOT NULL,
        seq           INTEGER     NOT NULL CHECK (seq >= 1),
        event_id      UUID        NOT NULL UNIQUE,
        type          TEXT        NOT NULL,
        occurred_at   TIMESTAMPTZ NOT NULL,
        recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        state         TEXT,
        payload       JSONB       NOT NULL,
        PRIMARY KEY (aggregate_id, seq)
    );
    CREATE INDEX events_type_time ON {s}.events (aggregate, occurred_at);

    -- The transactional outbox: positions committed but not yet confirmed on JetStream.
    CREATE TABLE {s}.outbox (
        position BIGINT PRIMARY KEY
    );

    -- Read model of runs, kept in the same statement as the append (see store.py).
    CREATE TABLE {s}.runs (
        run_id          UUID PRIMARY KEY,
        task_id         UUID,
        task_namespace  TEXT NOT NULL,
        task_version    TEXT NOT NULL,
        state           TEXT NOT NULL,
        version         INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        executor_id     TEXT,
        deleted         BOOLEAN NOT NULL,
        created_at      TIMESTAMPTZ,
        updated_at      TIMESTAMPTZ,
        ended_at        TIMESTAMPTZ,
        failure         JSONB
    );
    CREATE INDEX runs_task ON {s}.runs (task_id, created_at);
    CREATE INDEX runs_state ON {s}.runs (state, updated_at);

    -- The log is append-only: refuse updates and deletes at the database too.
    CREATE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the event log is append-only';
    END $$;
    CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {s}.events
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {s}.events
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    """,
    # services find live tasks by namespace and version from the task events
    """
    CREATE INDEX events_task_name ON {s}.events ((payload->>'namespace'), (payload->>'version'))
        WHERE aggregate = 'task' AND type = 'registered';
    """,
    # the scheduler's watchdog finds runs whose queue or time limit has passed
    """
    ALTER TABLE {s}.runs ADD COLUMN deadline TIMESTAMPTZ;
    CREATE INDEX runs_deadline ON {s}.runs (deadline) WHERE deadline IS NOT NULL;
    """,
)


# a connection or a pool's proxy of one; asyncpg's classes are generic only to the type checker
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def migrate(conn: Conn, schema: str, component: str = "runlog", steps: tuple[str, ...] = MIGRATIONS) -> int:
    """Bring ``component``'s tables in ``schema`` up to date; returns the steps applied by this call.

    Services add their own tables as components with their own ordered ``steps``; ``{s}`` in a
    step is the schema name.
    """
    s = check_schema_name(schema)
    applied = 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(s, "migrate"))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations (component TEXT NOT NULL, "
            "step INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (component, step))"
        )
        rows = await conn.fetch(f"SELECT step FROM {s}.schema_migrations WHERE component = $1", component)
        done = {r["step"] for r in rows}
        for step, sql in enumerate(steps, start=1):
            if step in done:
                continue
            await conn.execute(sql.format(s=s))
            await conn.execute(f"INSERT INTO {s}.schema_migrations (component, step) VALUES ($1, $2)", component, step)
            applied += 1
    return applied
