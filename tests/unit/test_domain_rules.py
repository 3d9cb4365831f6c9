"""The run state machine's rules, one example each, with the upstream error codes."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.domain.decide import (
    CancelRun,
    CheckTimeout,
    ClearInputs,
    CollectOutputs,
    Command,
    CreateRun,
    DeleteRun,
    FailRun,
    MarkProvisioned,
    MarkQueued,
    ProvisionInput,
    RequestRun,
    RetryRun,
    StartRun,
    TakeRun,
    decide,
)
from shared.domain.errors import InvalidRunState, NotProvisioned, RunNotFound, UnknownParameter
from shared.domain.events import (
    CancelRequested,
    FailureCode,
    FailureStage,
    OutputRecord,
    RunFailed,
    RunRetried,
    RunStatus,
)
from shared.domain.evolve import fold
from shared.domain.state import RunState, initial_state

RUN = uuid.uuid4()
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def apply(state: RunState, *commands: Command, at: dt.datetime = T0) -> RunState:
    for command in commands:
        state = fold(state, decide(state, command, at))
    return state


def created(required: tuple[str, ...] = ("a", "b"), time_limit: float | None = None, attempts: int = 2) -> RunState:
    return apply(
        initial_state(RUN),
        CreateRun(
            task_id=uuid.uuid4(),
            task_namespace="ns",
            task_version="1",
            required_inputs=required,
            optional_inputs=("opt",),
            time_limit_seconds=time_limit,
            max_attempts=attempts,
        ),
    )


def running(**kwargs: object) -> RunState:
    state = created(**kwargs)  # type: ignore[arg-type]
    return apply(
        state,
        ProvisionInput(parameter="a"),
        ProvisionInput(parameter="b"),
        RequestRun(),
        MarkQueued(),
        TakeRun(executor_id="ex"),
        StartRun(container_id="c1"),
    )


def test_happy_path_goes_through_every_state_in_order() -> None:
    state = created()
    seen = [state.status]
    for command in (
        ProvisionInput(parameter="a"),
        ProvisionInput(parameter="b"),
        RequestRun(),
        MarkQueued(),
        TakeRun(executor_id="ex"),
        StartRun(container_id="c1"),
        CollectOutputs(outputs=(OutputRecord(parameter="sum"),)),
    ):
        state = apply(state, command)
        seen.append(state.status)
    assert seen == [
        RunStatus.CREATED,
        RunStatus.CREATED,
        RunStatus.PROVISIONED,
        RunStatus.QUEUING,
        RunStatus.QUEUED,
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.FINISHED,
    ]


def test_running_requested_before_provisioning_is_not_provisioned() -> None:
    with pytest.raises(NotProvisioned) as err:
        decide(created(), RequestRun(), T0)
    assert err.value.error_code == "APPE-internal-task-run-provisions-not-found"
    assert err.value.message == "not provisioned"


def test_provisioning_only_in_created_or_provisioned() -> None:
    state = running()
    with pytest.raises(InvalidRunState) as err:
        decide(state, ProvisionInput(parameter="a"), T0)
    assert err.value.error_code == "APPE-internal-task-run-state-error"


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(UnknownParameter) as err:
        decide(created(), ProvisionInput(parameter="nope"), T0)
    assert err.value.error_code == "APPE-internal-parameter-not-found"


def test_task_without_required_inputs_is_provisioned_by_request() -> None:
    state = created(required=())
    assert apply(state, MarkProvisioned()).status is RunStatus.PROVISIONED


def test_mark_provisioned_with_missing_inputs_keeps_created() -> None:
    assert decide(created(), MarkProvisioned(), T0) == []


def test_clearing_a_required_input_goes_back_to_created() -> None:
    state = apply(created(), ProvisionInput(parameter="a"), ProvisionInput(parameter="b"))
    assert state.status is RunStatus.PROVISIONED
    assert apply(state, ClearInputs(parameters=("a",))).status is RunStatus.CREATED


def test_cancel_before_a_container_fails_at_once() -> None:
    state = apply(created(), CancelRun())
    assert state.status is RunStatus.FAILED
    assert state.failure is not None and state.failure.code is FailureCode.CANCELLED


def test_cancel_while_running_asks_the_executor_and_is_idempotent() -> None:
    state = running()
    events = decide(state, CancelRun(), T0)
    assert [type(e) for e in events] == [CancelRequested]
    state = fold(state, events)
    assert decide(state, CancelRun(), T0) == []
    failed = apply(state, FailRun(code=FailureCode.CANCELLED, message="stopped", stage=FailureStage.EXECUTE))
    assert failed.status is RunStatus.FAILED


def test_terminal_runs_refuse_cancel() -> None:
    state = apply(running(), CollectOutputs(outputs=()))
    with pytest.raises(InvalidRunState):
        decide(state, CancelRun(), T0)


def test_time_limit_asks_for_a_timeout_stop() -> None:
    state = running(time_limit=10)
    assert decide(state, CheckTimeout(), T0 + dt.timedelta(seconds=9)) == []
    events = decide(state, CheckTimeout(), T0 + dt.timedelta(seconds=10))
    assert isinstance(events[0], CancelRequested) and events[0].code is FailureCode.TIMEOUT


def test_queue_timeout_fails_the_run() -> None:
    state = apply(
        created(),
        ProvisionInput(parameter="a"),
        ProvisionInput(parameter="b"),
        RequestRun(),
        MarkQueued(queue_timeout_seconds=5),
    )
    events = decide(state, CheckTimeout(), T0 + dt.timedelta(seconds=6))
    assert isinstance(events[0], RunFailed) and events[0].code is FailureCode.TIMEOUT


def test_retry_requeues_until_attempts_are_spent() -> None:
    state = running(attempts=2)
    events = decide(state, RetryRun(reason="executor lost"), T0)
    assert isinstance(events[0], RunRetried)
    state = apply(fold(state, events), TakeRun(executor_id="ex2"))
    assert state.attempt == 2
    final = decide(state, RetryRun(reason="executor lost"), T0)
    assert isinstance(final[0], RunFailed) and final[0].code is FailureCode.EXECUTOR_LOST


def test_deleted_runs_are_not_found_but_keep_their_history() -> None:
    state = apply(created(), DeleteRun())
    assert state.deleted and state.status is RunStatus.FAILED
    with pytest.raises(RunNotFound):
        decide(state, ProvisionInput(parameter="a"), T0)


def test_commands_on_a_missing_run_are_not_found() -> None:
    with pytest.raises(RunNotFound):
        decide(initial_state(RUN), RequestRun(), T0)
