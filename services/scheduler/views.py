"""The upstream JSON of runs (reference §2.4): TaskRun, TaskRunResponse, StateAction.

Times are rendered as upstream's Java ``LocalDateTime`` (ISO 8601 without a zone; ours are UTC)
so clients parsing upstream's format keep working. Additions never change existing fields:
``failure`` appears on FAILED runs only; ``attempt``, ``exitCode`` and ``endedAt`` are new.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from shared.descriptor.wire import task_description
from shared.domain.state import RunState
from shared.tasks import Task


def local_time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat()


def java_date(value: dt.datetime | None) -> str | None:
    """A time as upstream's Jackson writes a ``java.util.Date``: ``2026-01-23T11:13:34.930+00:00``."""
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def failure_body(state: RunState) -> dict[str, Any] | None:
    if state.failure is None:
        return None
    return {
        "code": state.failure.code.value,
        "message": state.failure.message,
        "stage": state.failure.stage.value,
        "exitCode": state.failure.exit_code,
    }


def task_body(task: Task) -> dict[str, Any]:
    """The ``TaskDescription`` of a run's task; for a deleted task, what its registration kept."""
    if task.descriptor is not None:
        body: dict[str, Any] = msgspec.to_builtins(task_description(task.descriptor, task.id))
        return body
    r = task.registered
    return {
        "id": str(r.task_id),
        "name": r.name,
        "namespace": r.namespace,
        "version": r.version,
        "description": None,
        "authors": [],
    }


def task_run(state: RunState, task: Task) -> dict[str, Any]:
    """``TaskRun``: what run creation and run listings return."""
    assert state.status is not None
    return {"id": str(state.run_id), "task": task_body(task), "state": state.status.value}


def task_run_response(state: RunState, task: Task) -> dict[str, Any]:
    """``TaskRunResponse`` (``GET /task-runs/{id}``) with our additions."""
    body = task_run(state, task)
    body["createdAt"] = local_time(state.created_at)
    body["updatedAt"] = local_time(state.updated_at)
    body["attempt"] = state.attempt
    body["endedAt"] = local_time(state.ended_at)
    body["exitCode"] = state.exit_code
    failure = failure_body(state)
    if failure is not None:
        body["failure"] = failure
    return body


def state_action(state: RunState, task: Task) -> dict[str, Any]:
    """``StateAction``: the answer to a state action. Upstream's ``Resource`` dates are
    ``java.util.Date`` (an offset, milliseconds), unlike the run's ``LocalDateTime``; the values
    are the run's real times, not the time of the answer."""
    resource = task_run(state, task)
    resource["createdAt"] = java_date(state.created_at)
    resource["updatedAt"] = java_date(state.updated_at)
    return {"status": "success", "resource": resource}
