"""``evolve``: apply one event to a run's state. Pure, total, exhaustive.

History is fact: evolve never rejects an event that was validly decided in the past, even if
today's rules would not decide it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_never

import msgspec

from shared.domain.events import (
    CancelRequested,
    FailureCode,
    InputProvisioned,
    InputsCleared,
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
from shared.domain.state import Failure, RunState


def evolve(state: RunState, event: RunEvent) -> RunState:
    """The state after ``event``; ``version`` advances by one."""
    s = msgspec.structs.replace
    match event:
        case RunCreated():
            new = s(
                state,
                status=RunStatus.CREATED,
                task_id=event.task_id,
                task_namespace=event.task_namespace,
                task_version=event.task_version,
                required_inputs=frozenset(event.required_inputs),
                optional_inputs=frozenset(event.optional_inputs),
                time_limit_seconds=event.time_limit_seconds,
                max_attempts=event.max_attempts,
                created_at=event.created_at,
                updated_at=event.created_at,
            )
        case InputProvisioned():
            new = s(state, provisioned=state.provisioned | {event.parameter}, updated_at=event.at)
        case InputsCleared():
            provisioned = state.provisioned - set(event.parameters)
            status = state.status
            if status is RunStatus.PROVISIONED and not state.required_inputs <= provisioned:
                status = RunStatus.CREATED
            new = s(state, provisioned=provisioned, status=status, updated_at=event.at)
        case RunProvisioned():
            new = s(state, status=RunStatus.PROVISIONED, updated_at=event.at)
        case RunRequested():
            new = s(state, status=RunStatus.QUEUING, updated_at=event.at)
        case RunQueued():
            new = s(
                state,
                status=RunStatus.QUEUED,
                queued_at=event.at,
                queue_deadline=event.queue_deadline,
                updated_at=event.at,
            )
        case RunPending():
            new = s(
                state,
                status=RunStatus.PENDING,
                executor_id=event.executor_id,
                attempt=event.attempt,
                container_id=None,
                updated_at=event.at,
            )
        case RunStarted():
            new = s(
                state,
                status=RunStatus.RUNNING,
                container_id=event.container_id,
                started_at=event.at,
                deadline=event.deadline,
                updated_at=event.at,
            )
        case OutputsCollected():
            new = s(state, outputs=event.outputs, exit_code=event.exit_code, updated_at=event.at)
        case RunFinished():
            new = s(state, status=RunStatus.FINISHED, ended_at=event.at, updated_at=event.at)
        case RunFailed():
            failure = Failure(code=event.code, message=event.message, stage=event.stage, exit_code=event.exit_code)
            new = s(
                state,
                status=RunStatus.FAILED,
                failure=failure,
                exit_code=event.exit_code,
                ended_at=event.at,
                updated_at=event.at,
            )
        case CancelRequested():
            code = event.code if event.code is not None else FailureCode.CANCELLED
            new = s(state, cancel_requested=True, cancel_code=code, updated_at=event.at)
        case RunRetried():
            new = s(
                state,
                status=RunStatus.QUEUED,
                executor_id=None,
                container_id=None,
                started_at=None,
                deadline=None,
                queued_at=event.at,
                updated_at=event.at,
            )
        case RunDeleted():
            new = s(state, deleted=True, updated_at=event.at)
        case _:
            assert_never(event)
    return s(new, version=state.version + 1)


def fold(state: RunState, events: Iterable[RunEvent]) -> RunState:
    """Apply events in order."""
    for event in events:
        state = evolve(state, event)
    return state
