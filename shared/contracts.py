"""The NATS contract: every subject, stream and message type, declared once.

Subjects (``<p>`` is the configurable prefix, default ``appengine``):

* ``<p>.run.<run_id>.<type>``: run events, JetStream stream ``<P>_EVENTS``;
* ``<p>.task.<task_id>.<type>``: task events, same stream;
* ``<p>.jobs.run``: work queue from scheduler to executors, stream ``<P>_JOBS``;
* ``<p>.logs.<run_id>``: live log lines of a run (core NATS, not persisted);
* ``<p>.outbox.<schema>``: empty wake-up messages from appenders to the relay (core NATS).

The message on the event subjects is :class:`shared.runlog.store.StoredEvent` encoded as JSON,
with header ``Nats-Msg-Id`` = the event id (JetStream drops duplicates by it). The same
contract is published as an AsyncAPI document in ``docs/asyncapi.yaml``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import msgspec
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

_PREFIX = re.compile(r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*$")

# How long JetStream remembers message ids: a relay that dies after publishing and before
# confirming republishes within seconds, so ten minutes leaves a wide margin.
DUPLICATE_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class Subjects:
    """Subject and stream names under one prefix (tests use one prefix each)."""

    prefix: str = "appengine"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"invalid NATS subject prefix {self.prefix!r}")

    @property
    def _stream_base(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix).upper()

    @property
    def events_stream(self) -> str:
        return f"{self._stream_base}_EVENTS"

    @property
    def jobs_stream(self) -> str:
        return f"{self._stream_base}_JOBS"

    def event(self, aggregate: str, aggregate_id: uuid.UUID | str, event_type: str) -> str:
        return f"{self.prefix}.{aggregate}.{aggregate_id}.{event_type}"

    def run_events(self, run_id: uuid.UUID | str = "*") -> str:
        """Filter for one run's events (or every run's with the default)."""
        return f"{self.prefix}.run.{run_id}.*"

    def task_events(self) -> str:
        return f"{self.prefix}.task.*.*"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}.jobs.run"

    def logs(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}.logs.{run_id}"

    def outbox_wake(self, schema: str) -> str:
        """Core NATS subject on which appenders wake the relay of ``schema`` after a commit."""
        return f"{self.prefix}.outbox.{schema}"

    def events_stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.events_stream,
            subjects=[f"{self.prefix}.run.>", f"{self.prefix}.task.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            discard=DiscardPolicy.OLD,
        )

    def jobs_stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.jobs_stream,
            subjects=[self.jobs],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )


class RunJob(msgspec.Struct, frozen=True, kw_only=True):
    """A run to execute, published on ``<p>.jobs.run`` (JetStream work queue).

    ``Nats-Msg-Id`` is ``<run_id>:<queued_seq>`` so a scheduler that republishes after a crash
    does not queue the same admission twice. ``queued_seq`` is the run's sequence number of the
    ``queued`` or ``retried`` event this job belongs to: an executor drops a job whose run has
    moved on (cancelled, already taken) instead of running it.
    """

    run_id: uuid.UUID
    task_id: uuid.UUID
    queued_seq: int

    @property
    def msg_id(self) -> str:
        return f"{self.run_id}:{self.queued_seq}"


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line a task printed, published live on ``<p>.logs.<run_id>`` (not persisted there)."""

    run_id: uuid.UUID
    stream: str  # "stdout" or "stderr"
    line: str
    at: str  # RFC 3339
