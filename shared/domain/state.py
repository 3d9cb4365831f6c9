"""The state of one run: what its history folds to."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from shared.domain.events import FailureCode, FailureStage, OutputRecord, RunStatus


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a FAILED run failed; exposed as the ``failure`` object of the HTTP API."""

    code: FailureCode
    message: str
    stage: FailureStage
    exit_code: int | None = None


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """A run as of ``version`` events. ``status`` is ``None`` until the run is created."""

    run_id: uuid.UUID
    version: int = 0
    status: RunStatus | None = None
    task_id: uuid.UUID | None = None
    task_namespace: str = ""
    task_version: str = ""
    required_inputs: frozenset[str] = frozenset()
    optional_inputs: frozenset[str] = frozenset()
    provisioned: frozenset[str] = frozenset()
    time_limit_seconds: float | None = None
    max_attempts: int = 3
    attempt: int = 0
    executor_id: str | None = None
    container_id: str | None = None
    cancel_requested: bool = False
    cancel_code: FailureCode | None = None
    deleted: bool = False
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    queue_deadline: dt.datetime | None = None
    started_at: dt.datetime | None = None
    deadline: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    exit_code: int | None = None
    outputs: tuple[OutputRecord, ...] = ()
    failure: Failure | None = None

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def terminal(self) -> bool:
        return self.status is not None and self.status.terminal

    @property
    def inputs(self) -> frozenset[str]:
        return self.required_inputs | self.optional_inputs

    @property
    def fully_provisioned(self) -> bool:
        return self.required_inputs <= self.provisioned


def initial_state(run_id: uuid.UUID) -> RunState:
    """The state of a run before its first event."""
    return RunState(run_id=run_id)
