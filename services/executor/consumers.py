"""The executor's intake: a JetStream pull consumer on the jobs work queue.

One durable consumer (``executors``) is shared by every executor, so each job goes to one of
them at a time. A job is fetched only when a slot is free (``EXECUTOR_SLOTS``), kept alive with
progress acks while its run executes, and acknowledged once the run is terminal or handed back.
The ack/nak/term decision is made in one place, :meth:`Worker._deliver`, by error class.

If an executor dies, its unacked jobs are redelivered after ``JOB_ACK_WAIT`` to another one,
which finds the run PENDING/RUNNING under the dead executor's id and drops the job: recovering
that run is the restarted executor's (adoption) or the scheduler watchdog's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.executor.errors import ExecutorError
from services.executor.handlers import Executor
from services.executor.runtime import Engine
from shared.contracts import RunJob, Subjects
from shared.domain.errors import DomainError
from shared.runlog.store import RunLogError
from shared.service import cancel_and_wait

log = structlog.get_logger("executor.jobs")

DURABLE = "executors"
_decoder = msgspec.json.Decoder(RunJob)
# how long a failed job waits before it is delivered again
_NAK_DELAY = 5.0
# how long a job cancelled at shutdown gets to hand its run back before it is cancelled again
JOB_CANCEL_GRACE = 10.0
_TRANSIENT = (RunLogError, asyncpg.PostgresError, OSError, nats.errors.Error, ExecutorError, TimeoutError)


class Worker:
    """Fetches jobs while slots are free; runs each one (and each adoption) in a slot."""

    def __init__(
        self,
        executor: Executor,
        engine: Engine,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        slots: int,
        ack_wait: float,
    ) -> None:
        self._executor = executor
        self._engine = engine
        self._js = js
        self._subjects = subjects
        self._slots = slots
        self._ack_wait = ack_wait
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Wait for the engine, adopt this executor's containers, then take jobs until stopped."""
        await self._wait_for_engine()
        delay = 1.0
        while True:
            try:
                adoptions = await self._executor.recover()
                break
            except _TRANSIENT as exc:
                log.warning("recovery.retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        for adoption in adoptions:
            self._spawn(self._slot(adoption), "adoption")
        sub = await self._js.pull_subscribe(
            self._subjects.jobs,
            durable=DURABLE,
            stream=self._subjects.jobs_stream,
            config=ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        log.info("jobs.consuming", executor_id=self._executor.id, slots=self._slots)
        while True:
            _unless_cancelled()
            free = self._slots - len(self._running)
            if free <= 0:
                await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await sub.fetch(batch=free, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                # nats-py may raise the builtin TimeoutError from fetch of an idle batch: never let
                # it end intake (the process would heartbeat on while taking no jobs)
                continue
            except nats.errors.Error as exc:
                log.warning("jobs.fetch_failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            if _cancelling():
                # stopping, and the fetch lost the cancellation: give the jobs back at once
                for msg in messages:
                    await _quietly(msg.nak())
                raise asyncio.CancelledError
            for msg in messages:
                self._spawn(self._deliver(msg), "job")

    async def _wait_for_engine(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._engine.check()
                return
            except Exception as exc:  # no engine yet: readiness says so; keep trying
                log.warning("docker.unavailable", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _spawn(self, work: Awaitable[None], kind: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(kind)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _slot(self, adoption: Awaitable[str]) -> None:
        try:
            outcome = await adoption
            log.info("run.adoption_ended", outcome=outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run.adoption_failed")

    async def _deliver(self, msg: Msg) -> None:
        """One job message: the single place where ack, nak and term are decided."""
        try:
            job = _decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("jobs.poison", error=str(exc), data=msg.data[:200])
            await _quietly(msg.term())
            return
        keepalive = asyncio.create_task(self._keep_alive(msg), name=f"progress-{job.run_id}")
        try:
            outcome = await self._executor.handle(job)
        except asyncio.CancelledError:
            # shutdown: no ack; JetStream redelivers after the ack wait
            raise
        except DomainError as exc:
            # the run moved on under us (cancelled, ended): nothing left to do for this job
            log.info("jobs.dropped", run_id=str(job.run_id), reason=str(exc))
            await _quietly(msg.ack())
        except _TRANSIENT as exc:
            log.warning("jobs.retrying", run_id=str(job.run_id), error=repr(exc))
            await _quietly(msg.nak(delay=_NAK_DELAY))
        except Exception:
            log.exception("jobs.failed", run_id=str(job.run_id))
            await _quietly(msg.nak(delay=_NAK_DELAY * 6))
        else:
            log.info("jobs.done", run_id=str(job.run_id), outcome=outcome)
            await _quietly(msg.ack())
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            await _quietly(msg.in_progress())

    async def drain(self, intake: asyncio.Task[None], grace_seconds: float) -> None:
        """Stop ``intake`` (the task running :meth:`run`); let running jobs end within ``grace_seconds``;
        cancel the rest.

        A cancelled run's container keeps running under this executor's label: the executor
        restarted with the same ``EXECUTOR_ID`` adopts it.
        """
        await cancel_and_wait([intake], "jobs", grace=1.0)
        if self._running:
            log.info("jobs.draining", runs=len(self._running), grace_seconds=grace_seconds)
            await asyncio.wait(set(self._running), timeout=grace_seconds)
        # a cancelled job hands its run back (a container removed, an append): let it
        await cancel_and_wait(set(self._running), "job", grace=JOB_CANCEL_GRACE)


def _cancelling() -> bool:
    """Whether the current task was cancelled although no CancelledError reached it: a library
    call under it lost the cancellation (returned or raised something else instead; with NATS
    down nats-py's fetch does). Nothing has called ``uncancel``, so the request is still counted."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _unless_cancelled() -> None:
    if _cancelling():
        raise asyncio.CancelledError


async def _quietly(ack: Awaitable[None]) -> None:
    try:
        await ack
    except (nats.errors.Error, OSError) as exc:
        # lost ack: JetStream redelivers and the handler, idempotent, drops the job
        log.warning("jobs.ack_failed", error=repr(exc))
