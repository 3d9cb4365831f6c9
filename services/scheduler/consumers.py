"""The scheduler's reactions to events, as durable JetStream consumers on the event stream.

* ``run.*.requested`` → admission: the run is QUEUED (with its queue deadline);
* ``run.*.queued`` / ``run.*.retried`` → dispatch: a :class:`RunJob` goes on the work queue;
* ``task.*.deleted`` → the task's active runs are cancelled.

Delivery is at least once and every handler is idempotent: a run that has moved on refuses the
command (a domain error), which is acknowledged and dropped; a job published twice has the same
``Nats-Msg-Id`` and the work queue keeps one. Whether to ack or retry is decided in one place,
:func:`_settle`, by error class. Several scheduler replicas share each durable consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.scheduler.handlers import Scheduler
from shared.contracts import RunJob, Subjects
from shared.domain.decide import CancelRun, MarkQueued
from shared.domain.errors import DomainError
from shared.runlog.store import StoredEvent

log = structlog.get_logger("scheduler.consumers")

_envelope = msgspec.json.Decoder(StoredEvent)
_encoder = msgspec.json.Encoder()
Handler = Callable[[StoredEvent], Awaitable[None]]


async def _settle(msg: Msg, handle: Handler) -> None:
    """Handle one message and decide its fate by what happened."""
    try:
        event = _envelope.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.error("consumer.undecodable", subject=msg.subject)
        await msg.term()  # never decodable: redelivery cannot help
        return
    try:
        await handle(event)
    except DomainError as exc:
        # the run moved on (already queued, cancelled, finished): nothing left to do
        log.info("consumer.skipped", subject=msg.subject, reason=exc.message)
        await msg.ack()
    except Exception:
        log.exception("consumer.failed", subject=msg.subject)
        await msg.nak(delay=1.0)  # infrastructure trouble: try again shortly
    else:
        await msg.ack()


async def consume(js: JetStreamContext, stream: str, durable: str, subject: str, handle: Handler) -> None:
    """Pull and settle messages of ``subject`` until cancelled."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30,
        max_deliver=-1,
        filter_subject=subject,
    )
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    try:
        await _pull(sub, durable, handle)
    finally:
        # leave the durable consumer on the server; only this process's interest goes
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _pull(sub: JetStreamContext.PullSubscription, durable: str, handle: Handler) -> None:
    while True:
        try:
            msgs = await sub.fetch(batch=64, timeout=5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except nats.errors.ConnectionClosedError:
            raise
        except Exception as exc:  # NATS restarting: keep trying
            log.warning("consumer.fetch_failed", durable=durable, error=repr(exc))
            await asyncio.sleep(1)
            continue
        for msg in msgs:
            await _settle(msg, handle)


class Reactions:
    """The handlers behind the consumers."""

    # runs whose task this process learnt at admission (a run's task never changes)
    KNOWN_TASKS = 10_000

    def __init__(self, scheduler: Scheduler, js: JetStreamContext, subjects: Subjects) -> None:
        self.scheduler = scheduler
        self.js = js
        self.subjects = subjects
        self._task_of_run: collections.OrderedDict[uuid.UUID, uuid.UUID] = collections.OrderedDict()

    async def admit(self, event: StoredEvent) -> None:
        timeout = self.scheduler.settings.queue_timeout
        state, _ = await self.scheduler.runlog.execute(event.aggregate_id, MarkQueued(queue_timeout_seconds=timeout))
        if state.task_id is not None:
            self._task_of_run[state.run_id] = state.task_id
            if len(self._task_of_run) > self.KNOWN_TASKS:
                self._task_of_run.popitem(last=False)

    async def dispatch(self, event: StoredEvent) -> None:
        # the job needs the run's task: known from admission in this process, else from the log.
        # A run that ended meanwhile still gets its job; the executor drops it (not QUEUED at
        # the job's sequence), so the load is not needed to tell
        task_id = self._task_of_run.pop(event.aggregate_id, None)
        if task_id is None:
            state = await self.scheduler.runlog.load(event.aggregate_id)
            if state.terminal or state.task_id is None:
                return
            task_id = state.task_id
        job = RunJob(run_id=event.aggregate_id, task_id=task_id, queued_seq=event.seq)
        await self.js.publish(self.subjects.jobs, _encoder.encode(job), headers={"Nats-Msg-Id": job.msg_id})
        log.info("run.dispatched", run_id=str(job.run_id), seq=job.queued_seq)

    async def task_deleted(self, event: StoredEvent) -> None:
        for run in await self.scheduler.runs_of_task_id(event.aggregate_id, active_only=True):
            with contextlib.suppress(DomainError):
                await self.scheduler.runlog.execute(run, CancelRun(reason="task deleted"))


def consumer_tasks(reactions: Reactions, subjects: Subjects) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    """The consumers to run, as coroutine factories."""
    js, stream, p = reactions.js, subjects.events_stream, subjects.prefix
    name = stream.lower()
    return [
        lambda: consume(js, stream, f"{name}-admit", f"{p}.run.*.requested", reactions.admit),
        lambda: consume(js, stream, f"{name}-dispatch-queued", f"{p}.run.*.queued", reactions.dispatch),
        lambda: consume(js, stream, f"{name}-dispatch-retried", f"{p}.run.*.retried", reactions.dispatch),
        lambda: consume(js, stream, f"{name}-task-deleted", f"{p}.task.*.deleted", reactions.task_deleted),
    ]
