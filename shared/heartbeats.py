"""Executor heartbeats: how the scheduler's watchdog tells a busy executor from a dead one.

Each executor upserts its row every few seconds; a run PENDING or RUNNING on an executor whose
heartbeat is older than ``EXECUTOR_TIMEOUT`` is retried elsewhere (``EXECUTOR_LOST``). The table
is operational state, not history: it is the one mutable table next to the log.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from shared.runlog.schema import Conn, migrate

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.executor_heartbeats (
        executor_id  TEXT PRIMARY KEY,
        last_seen    TIMESTAMPTZ NOT NULL,
        slots        INTEGER NOT NULL,
        running      INTEGER NOT NULL
    );
    """,
)


async def migrate_heartbeats(conn: Conn, schema: str) -> None:
    await migrate(conn, schema, "heartbeats", MIGRATIONS)


async def beat(pool: asyncpg.Pool, schema: str, executor_id: str, slots: int, running: int) -> None:
    await pool.execute(
        f"INSERT INTO {schema}.executor_heartbeats (executor_id, last_seen, slots, running) "
        "VALUES ($1, now(), $2, $3) ON CONFLICT (executor_id) DO UPDATE "
        "SET last_seen = now(), slots = EXCLUDED.slots, running = EXCLUDED.running",
        executor_id,
        slots,
        running,
    )


async def lost_runs(pool: asyncpg.Pool, schema: str, silence: dt.timedelta) -> list[tuple[str, str]]:
    """(run id, executor id) of PENDING/RUNNING runs whose executor has gone quiet.

    A run's executor with no heartbeat row at all counts as lost once the run has been in its
    state longer than the timeout (it may have died before its first beat).
    """
    rows = await pool.fetch(
        f"SELECT r.run_id::text AS run_id, r.executor_id FROM {schema}.runs r "
        f"LEFT JOIN {schema}.executor_heartbeats h ON h.executor_id = r.executor_id "
        "WHERE r.state IN ('PENDING', 'RUNNING') AND r.updated_at < now() - $1::interval "
        "AND (h.last_seen IS NULL OR h.last_seen < now() - $1::interval)",
        silence,
    )
    return [(r["run_id"], r["executor_id"]) for r in rows]
