"""Task images loaded ahead of the first run: on ``task.registered``, each executor makes sure
its engine has the task's image (``PRELOAD_IMAGES``, on by default).

This is an optimisation only: the first run of a task loads the image when it is missing
(:meth:`~services.executor.handlers.Executor.ensure_image`), so an event missed while the
executor was down costs that run the load, nothing more. Every executor has its own engine, so
each one follows the events on its own ephemeral consumer (new events only, no server state
left behind). Loads run one at a time, newest registrations queued behind.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from services.executor.handlers import Executor
from shared.contracts import Subjects
from shared.runlog.store import StoredEvent

log = structlog.get_logger("executor.preload")

_envelope = msgspec.json.Decoder(StoredEvent)


async def preload_images(executor: Executor, js: JetStreamContext, subjects: Subjects) -> None:
    """Follow ``<p>.task.*.registered`` and load each task's image; runs until cancelled."""
    pending: asyncio.Queue[uuid.UUID] = asyncio.Queue()

    async def on_registered(msg: Msg) -> None:
        try:
            pending.put_nowait(_envelope.decode(msg.data).aggregate_id)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("preload.undecodable", subject=msg.subject)

    sub = await js.subscribe(
        f"{subjects.prefix}.task.*.registered",
        stream=subjects.events_stream,
        cb=on_registered,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    try:
        while True:
            task_id = await pending.get()
            try:
                task = await executor.tasks.by_id(task_id)
                if task is not None:
                    await executor.ensure_image(task)
            except Exception as exc:  # best effort: the first run loads it, or fails saying why
                log.warning("preload.failed", task_id=str(task_id), error=repr(exc))
    finally:
        await sub.unsubscribe()
