"""The executor's heartbeat: the scheduler's watchdog hands back the runs of a silent executor.

Every ``HEARTBEAT_INTERVAL`` seconds the executor upserts its row in ``executor_heartbeats``
(:mod:`shared.heartbeats`). When it stops (crash, or shutdown leaving containers for adoption),
its PENDING/RUNNING runs are retried elsewhere after the scheduler's ``EXECUTOR_TIMEOUT``; if it
comes back first, it adopts them; if it comes back later, it removes their stale containers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from shared.heartbeats import beat

log = structlog.get_logger("executor.heartbeat")


async def heartbeat(
    pool: asyncpg.Pool, schema: str, executor_id: str, slots: int, running: Callable[[], int], interval: float
) -> None:
    """Beat until cancelled; a failed beat is logged and retried at the next interval."""
    while True:
        try:
            await beat(pool, schema, executor_id, slots, running())
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("heartbeat.failed", error=repr(exc))
        await asyncio.sleep(interval)
