"""Run events: the facts a run's history is made of.

Every event is a frozen, keyword-only msgspec Struct with an explicit, stable tag (the ``type``
field on the wire). Tags and field meanings never change: the schema evolves only by adding
fields with defaults or new event types, so every log ever written stays readable (see the
golden logs in ``tests/fixtures``).

Events carry no sequence number, id or state: those belong to the stored envelope
(:mod:`shared.runlog.records`), which the run log builds when it appends.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Literal

import msgspec


class RunStatus(enum.StrEnum):
    """The upstream run states, spelled as on the wire."""

    CREATED = "CREATED"
    PROVISIONED = "PROVISIONED"
    QUEUING = "QUEUING"
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.FAILED)


class FailureCode(enum.StrEnum):
    """Why a run ended FAILED. Documented in ``docs/runs.md``; values never change meaning."""

    TASK_EXIT_NONZERO = "TASK_EXIT_NONZERO"
    OUTPUTS_INVALID = "OUTPUTS_INVALID"
    OOM_KILLED = "OOM_KILLED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    IMAGE_UNAVAILABLE = "IMAGE_UNAVAILABLE"
    EXECUTOR_LOST = "EXECUTOR_LOST"
    INFRASTRUCTURE = "INFRASTRUCTURE"
    TASK_DELETED = "TASK_DELETED"


class FailureStage(enum.StrEnum):
    """The stage of the run's path in which it failed."""

    QUEUE = "QUEUE"
    PREPARE = "PREPARE"
    EXECUTE = "EXECUTE"
    COLLECT = "COLLECT"


class InputKind(enum.StrEnum):
    VALUE = "value"
    FILE = "file"
    ARRAY_ITEM = "array_item"


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every run event; ``type`` is the tag."""


class RunCreated(_Event, tag="created", frozen=True, kw_only=True):
    """A run of a task was created (state CREATED).

    ``required_inputs`` are the task's non-optional input names, frozen at creation so the
    run's own history decides when it is provisioned.
    """

    task_id: uuid.UUID
    task_namespace: str
    task_version: str
    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    time_limit_seconds: float | None = None
    max_attempts: int = 3
    created_at: dt.datetime


class InputProvisioned(_Event, tag="input_provisioned", frozen=True, kw_only=True):
    """An input value, file or array item was stored for the run (new or replacing)."""

    parameter: str
    kind: InputKind
    index: str | None = None
    size: int = 0
    checksum: str | None = None
    at: dt.datetime


class InputsCleared(_Event, tag="inputs_cleared", frozen=True, kw_only=True):
    """Provisioned inputs were removed (the run goes back to CREATED if it was PROVISIONED)."""

    parameters: tuple[str, ...]
    at: dt.datetime


class RunProvisioned(_Event, tag="provisioned", frozen=True, kw_only=True):
    """Every non-optional input has a value (state PROVISIONED)."""

    at: dt.datetime


class RunRequested(_Event, tag="requested", frozen=True, kw_only=True):
    """A client asked for the run to execute (state QUEUING)."""

    at: dt.datetime


class RunQueued(_Event, tag="queued", frozen=True, kw_only=True):
    """The run was admitted and published on the work queue (state QUEUED)."""

    at: dt.datetime
    queue_deadline: dt.datetime | None = None


class RunPending(_Event, tag="pending", frozen=True, kw_only=True):
    """An executor took the run: it prepares image, container and inputs (state PENDING)."""

    executor_id: str
    attempt: int
    at: dt.datetime


class RunStarted(_Event, tag="started", frozen=True, kw_only=True):
    """The task container was started (state RUNNING)."""

    container_id: str
    at: dt.datetime
    deadline: dt.datetime | None = None


class OutputRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One collected output file or array item."""

    parameter: str
    index: str | None = None
    size: int = 0
    checksum: str | None = None


class OutputsCollected(_Event, tag="outputs_collected", frozen=True, kw_only=True):
    """The container exited and every declared output was stored and valid."""

    outputs: tuple[OutputRecord, ...]
    exit_code: int = 0
    at: dt.datetime


class RunFinished(_Event, tag="finished", frozen=True, kw_only=True):
    """The run succeeded (state FINISHED, terminal)."""

    at: dt.datetime


class RunFailed(_Event, tag="failed", frozen=True, kw_only=True):
    """The run failed (state FAILED, terminal)."""

    code: FailureCode
    message: str
    stage: FailureStage
    exit_code: int | None = None
    at: dt.datetime


class CancelRequested(_Event, tag="cancel_requested", frozen=True, kw_only=True):
    """Cancellation of a run whose container may exist; the executor stops it and fails the run."""

    reason: str = "cancelled by request"
    # what the run fails with once stopped: CANCELLED, or TIMEOUT when its time limit expired
    code: FailureCode | None = None
    at: dt.datetime


class RunRetried(_Event, tag="retried", frozen=True, kw_only=True):
    """An infrastructure failure sent the run back to the work queue (state QUEUED)."""

    reason: str
    code: FailureCode
    at: dt.datetime


class RunDeleted(_Event, tag="deleted", frozen=True, kw_only=True):
    """The run was deleted: its files go, its history stays."""

    at: dt.datetime


RunEvent = (
    RunCreated
    | InputProvisioned
    | InputsCleared
    | RunProvisioned
    | RunRequested
    | RunQueued
    | RunPending
    | RunStarted
    | OutputsCollected
    | RunFinished
    | RunFailed
    | CancelRequested
    | RunRetried
    | RunDeleted
)

RUN_EVENT_TYPES: tuple[type[RunEvent], ...] = (
    RunCreated,
    InputProvisioned,
    InputsCleared,
    RunProvisioned,
    RunRequested,
    RunQueued,
    RunPending,
    RunStarted,
    OutputsCollected,
    RunFinished,
    RunFailed,
    CancelRequested,
    RunRetried,
    RunDeleted,
)


def event_tag(event: RunEvent) -> str:
    """The stable wire tag of an event (``created``, ``failed``, ...)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


AggregateKind = Literal["run", "task"]
