"""The watchdog: what time alone decides, checked every ``WATCHDOG_INTERVAL`` seconds.

* a QUEUED run past its queue deadline fails TIMEOUT;
* a RUNNING run past its time limit gets a TIMEOUT stop request (its executor stops the
  container and fails the run; the executor enforces the limit itself too);
* a PENDING/RUNNING run whose executor stopped sending heartbeats is retried (``RetryRun``:
  back to QUEUED, or FAILED ``EXECUTOR_LOST`` after ``MAX_ATTEMPTS``).

Deadlines cannot be woken by an event, so this is the one loop that polls; it reads an index
of the read model, not the log. Several schedulers may run it: every command is decided on a
fresh load with optimistic concurrency, so a double check appends nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import structlog

from services.scheduler.handlers import Scheduler
from shared.domain.decide import CheckTimeout, RetryRun
from shared.domain.errors import DomainError
from shared.domain.events import FailureCode
from shared.heartbeats import lost_runs

log = structlog.get_logger("scheduler.watchdog")


async def check_once(scheduler: Scheduler) -> int:
    """One pass; returns how many runs it acted on."""
    s, pool = scheduler.s, scheduler.pool
    acted = 0
    due = await pool.fetch(f"SELECT run_id FROM {s}.runs WHERE deadline <= now()")
    for row in due:
        _, events = await scheduler.runlog.execute(row["run_id"], CheckTimeout())
        acted += bool(events)
    timeout = dt.timedelta(seconds=scheduler.settings.executor_timeout)
    for run_id, executor_id in await lost_runs(pool, s, timeout):
        try:
            _, events = await scheduler.runlog.execute(
                uuid.UUID(run_id),
                RetryRun(reason=f"executor {executor_id} stopped responding", code=FailureCode.EXECUTOR_LOST),
            )
        except DomainError:
            continue
        if events:
            log.warning("run.executor_lost", run_id=run_id, executor_id=executor_id)
            acted += 1
    return acted


async def watch(scheduler: Scheduler) -> None:
    while True:
        try:
            await check_once(scheduler)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watchdog.failed")
        await asyncio.sleep(scheduler.settings.watchdog_interval)
