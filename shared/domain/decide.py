"""Decide functions: state + command + time → events, or a domain error.

Pure code: no I/O, no clock (``now`` is an argument), no random ids. Each command is a frozen
Struct so a sequence of commands can be generated, logged and replayed (the property tests do).
The state machine::

    CREATED → PROVISIONED → QUEUING → QUEUED → PENDING → RUNNING → FINISHED | FAILED
                                         ↑_______retry______|_________|

Cancellation is accepted from any non-terminal state; FINISHED and FAILED absorb everything but
deletion.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import assert_never

import msgspec

from shared.domain.errors import (
    InvalidRunState,
    NotProvisioned,
    RunNotFound,
    UnknownParameter,
)
from shared.domain.events import (
    CancelRequested,
    FailureCode,
    FailureStage,
    InputKind,
    InputProvisioned,
    InputsCleared,
    OutputRecord,
    OutputsCollected,
    RunCreated,
    RunDeleted,
    RunEvent,
    RunFailed,
    RunFinished,
    RunPending,
    RunProvisioned,
    RunQueued,
    RunRequested,
    RunRetried,
    RunStarted,
    RunStatus,
)
from shared.domain.state import RunState

_PROVISIONABLE = (RunStatus.CREATED, RunStatus.PROVISIONED)
_WITHOUT_CONTAINER = (RunStatus.CREATED, RunStatus.PROVISIONED, RunStatus.QUEUING, RunStatus.QUEUED)
_WITH_CONTAINER = (RunStatus.PENDING, RunStatus.RUNNING)


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    pass


class CreateRun(_Command, tag="create", frozen=True, kw_only=True):
    task_id: uuid.UUID
    task_namespace: str
    task_version: str
    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    time_limit_seconds: float | None = None
    max_attempts: int = 3


class ProvisionInput(_Command, tag="provision", frozen=True, kw_only=True):
    parameter: str
    kind: InputKind = InputKind.VALUE
    index: str | None = None
    size: int = 0
    checksum: str | None = None


class ClearInputs(_Command, tag="clear", frozen=True, kw_only=True):
    parameters: tuple[str, ...]


class MarkProvisioned(_Command, tag="mark_provisioned", frozen=True, kw_only=True):
    """A client's ``{"desired": "PROVISIONED"}``."""


class RequestRun(_Command, tag="request_run", frozen=True, kw_only=True):
    """A client's ``{"desired": "RUNNING"}``."""


class MarkQueued(_Command, tag="mark_queued", frozen=True, kw_only=True):
    queue_timeout_seconds: float | None = None


class TakeRun(_Command, tag="take", frozen=True, kw_only=True):
    executor_id: str


class StartRun(_Command, tag="start", frozen=True, kw_only=True):
    container_id: str


class CollectOutputs(_Command, tag="collect", frozen=True, kw_only=True):
    outputs: tuple[OutputRecord, ...]
    exit_code: int = 0


class FailRun(_Command, tag="fail", frozen=True, kw_only=True):
    code: FailureCode
    message: str
    stage: FailureStage
    exit_code: int | None = None


class CancelRun(_Command, tag="cancel", frozen=True, kw_only=True):
    reason: str = "cancelled by request"


class CheckTimeout(_Command, tag="check_timeout", frozen=True, kw_only=True):
    pass


class RetryRun(_Command, tag="retry", frozen=True, kw_only=True):
    reason: str
    code: FailureCode = FailureCode.EXECUTOR_LOST


class DeleteRun(_Command, tag="delete", frozen=True, kw_only=True):
    pass


Command = (
    CreateRun
    | ProvisionInput
    | ClearInputs
    | MarkProvisioned
    | RequestRun
    | MarkQueued
    | TakeRun
    | StartRun
    | CollectOutputs
    | FailRun
    | CancelRun
    | CheckTimeout
    | RetryRun
    | DeleteRun
)


def decide(state: RunState, command: Command, now: dt.datetime) -> list[RunEvent]:
    """The events ``command`` produces on ``state`` at ``now``; raises a DomainError if refused."""
    match command:
        case CreateRun():
            return _create(state, command, now)
        case ProvisionInput():
            return _provision(state, command, now)
        case ClearInputs():
            return _clear(state, command, now)
        case MarkProvisioned():
            return _mark_provisioned(state, now)
        case RequestRun():
            return _request_run(state, now)
        case MarkQueued():
            return _mark_queued(state, command, now)
        case TakeRun():
            return _take(state, command, now)
        case StartRun():
            return _start(state, command, now)
        case CollectOutputs():
            return _collect(state, command, now)
        case FailRun():
            return _fail(state, command, now)
        case CancelRun():
            return _cancel(state, command.reason, FailureCode.CANCELLED, now)
        case CheckTimeout():
            return _check_timeout(state, now)
        case RetryRun():
            return _retry(state, command, now)
        case DeleteRun():
            return _delete(state, now)
        case _:
            assert_never(command)


def _live(state: RunState) -> RunState:
    """The state of a run that exists and is not deleted, else RunNotFound."""
    if not state.exists or state.deleted:
        raise RunNotFound()
    return state


def _require(state: RunState, *allowed: RunStatus) -> None:
    if state.status not in allowed:
        raise InvalidRunState()


def _create(state: RunState, c: CreateRun, now: dt.datetime) -> list[RunEvent]:
    if state.exists:
        raise InvalidRunState("run already exists")
    return [
        RunCreated(
            task_id=c.task_id,
            task_namespace=c.task_namespace,
            task_version=c.task_version,
            required_inputs=c.required_inputs,
            optional_inputs=c.optional_inputs,
            time_limit_seconds=c.time_limit_seconds,
            max_attempts=c.max_attempts,
            created_at=now,
        )
    ]


def _provision(state: RunState, c: ProvisionInput, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    _require(state, *_PROVISIONABLE)
    if c.parameter not in state.inputs:
        raise UnknownParameter(c.parameter)
    events: list[RunEvent] = [
        InputProvisioned(parameter=c.parameter, kind=c.kind, index=c.index, size=c.size, checksum=c.checksum, at=now)
    ]
    if state.status is RunStatus.CREATED and state.required_inputs <= state.provisioned | {c.parameter}:
        events.append(RunProvisioned(at=now))
    return events


def _clear(state: RunState, c: ClearInputs, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    _require(state, *_PROVISIONABLE)
    unknown = [p for p in c.parameters if p not in state.inputs]
    if unknown:
        raise UnknownParameter(unknown[0])
    present = tuple(p for p in c.parameters if p in state.provisioned)
    return [InputsCleared(parameters=present, at=now)] if present else []


def _mark_provisioned(state: RunState, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    _require(state, RunStatus.CREATED)
    return [RunProvisioned(at=now)] if state.fully_provisioned else []


def _request_run(state: RunState, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    if state.status is RunStatus.CREATED:
        raise NotProvisioned()
    _require(state, RunStatus.PROVISIONED)
    return [RunRequested(at=now)]


def _mark_queued(state: RunState, c: MarkQueued, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    _require(state, RunStatus.QUEUING)
    deadline = None
    if c.queue_timeout_seconds is not None:
        deadline = now + dt.timedelta(seconds=c.queue_timeout_seconds)
    return [RunQueued(at=now, queue_deadline=deadline)]


def _take(state: RunState, c: TakeRun, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    _require(state, RunStatus.QUEUED)
    return [RunPending(executor_id=c.executor_id, attempt=state.attempt + 1, at=now)]


def _start(state: RunState, c: StartRun, now: dt.datetime) -> list[RunEvent]:
    # a deleted run may still be executing until its executor sees the cancellation
    _require(state, RunStatus.PENDING)
    if state.cancel_requested:
        raise InvalidRunState("run is being cancelled")
    deadline = None
    if state.time_limit_seconds is not None:
        deadline = now + dt.timedelta(seconds=state.time_limit_seconds)
    return [RunStarted(container_id=c.container_id, at=now, deadline=deadline)]


def _collect(state: RunState, c: CollectOutputs, now: dt.datetime) -> list[RunEvent]:
    _require(state, RunStatus.RUNNING)
    if state.cancel_requested:
        raise InvalidRunState("run is being cancelled")
    return [OutputsCollected(outputs=c.outputs, exit_code=c.exit_code, at=now), RunFinished(at=now)]


def _fail(state: RunState, c: FailRun, now: dt.datetime) -> list[RunEvent]:
    if not state.exists or state.terminal:
        raise InvalidRunState()
    return [RunFailed(code=c.code, message=c.message, stage=c.stage, exit_code=c.exit_code, at=now)]


def _cancel(state: RunState, reason: str, code: FailureCode, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    if state.terminal:
        raise InvalidRunState()
    if state.status in _WITHOUT_CONTAINER:
        return [RunFailed(code=code, message=reason, stage=FailureStage.QUEUE, at=now)]
    if state.cancel_requested:
        return []  # already on its way down: cancelling twice is not an error
    return [CancelRequested(reason=reason, code=code, at=now)]


def _check_timeout(state: RunState, now: dt.datetime) -> list[RunEvent]:
    if not state.exists or state.terminal:
        return []
    if state.status is RunStatus.QUEUED and state.queue_deadline is not None and now >= state.queue_deadline:
        return [
            RunFailed(
                code=FailureCode.TIMEOUT,
                message="run waited too long in the queue",
                stage=FailureStage.QUEUE,
                at=now,
            )
        ]
    if state.status is RunStatus.RUNNING and state.deadline is not None and now >= state.deadline:
        if state.cancel_requested:
            return []
        reason = f"run exceeded its time limit of {state.time_limit_seconds:g} s"
        return [CancelRequested(reason=reason, code=FailureCode.TIMEOUT, at=now)]
    return []


def _retry(state: RunState, c: RetryRun, now: dt.datetime) -> list[RunEvent]:
    _require(state, *_WITH_CONTAINER)
    if state.cancel_requested or state.deleted:
        code = state.cancel_code or FailureCode.CANCELLED
        return [RunFailed(code=code, message="run cancelled", stage=FailureStage.EXECUTE, at=now)]
    if state.attempt >= state.max_attempts:
        message = f"{c.reason} (gave up after {state.attempt} attempts)"
        return [RunFailed(code=c.code, message=message, stage=FailureStage.EXECUTE, at=now)]
    return [RunRetried(reason=c.reason, code=c.code, at=now)]


def _delete(state: RunState, now: dt.datetime) -> list[RunEvent]:
    _live(state)
    events: list[RunEvent] = []
    if not state.terminal:
        events = _cancel(state, "run deleted", FailureCode.CANCELLED, now)
    return [*events, RunDeleted(at=now)]
