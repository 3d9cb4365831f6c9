"""Properties of the run domain over arbitrary command sequences (hypothesis)."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

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
from shared.domain.errors import DomainError
from shared.domain.events import (
    FailureCode,
    FailureStage,
    OutputRecord,
    RunDeleted,
    RunEvent,
    RunStatus,
)
from shared.domain.evolve import evolve, fold
from shared.domain.state import RunState, initial_state

RUN = uuid.UUID("00000000-0000-0000-0000-000000000001")
TASK = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PARAMS = ("a", "b", "c")

commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        CreateRun,
        task_id=st.just(TASK),
        task_namespace=st.just("com.example.add"),
        task_version=st.just("1.0.0"),
        required_inputs=st.just(("a", "b")),
        optional_inputs=st.just(("c",)),
        time_limit_seconds=st.one_of(st.none(), st.floats(1, 100)),
        max_attempts=st.integers(1, 3),
    ),
    st.builds(ProvisionInput, parameter=st.sampled_from((*PARAMS, "zzz"))),
    st.builds(ClearInputs, parameters=st.lists(st.sampled_from(PARAMS), max_size=2).map(tuple)),
    st.just(MarkProvisioned()),
    st.just(RequestRun()),
    st.builds(MarkQueued, queue_timeout_seconds=st.one_of(st.none(), st.floats(1, 100))),
    st.builds(TakeRun, executor_id=st.sampled_from(("ex-1", "ex-2"))),
    st.builds(StartRun, container_id=st.just("c0ffee")),
    st.builds(CollectOutputs, outputs=st.just((OutputRecord(parameter="sum", size=2),))),
    st.builds(
        FailRun,
        code=st.sampled_from(FailureCode),
        message=st.just("boom"),
        stage=st.sampled_from(FailureStage),
        exit_code=st.one_of(st.none(), st.integers(0, 255)),
    ),
    st.just(CancelRun()),
    st.just(CheckTimeout()),
    st.builds(RetryRun, reason=st.just("executor lost")),
    st.just(DeleteRun()),
)


def run_commands(cmds: list[tuple[Command, float]]) -> tuple[RunState, list[RunEvent], list[RunState]]:
    """Apply commands as a service would; returns final state, history, and every state seen."""
    state = initial_state(RUN)
    history: list[RunEvent] = []
    seen = [state]
    now = T0
    for command, advance in cmds:
        now += dt.timedelta(seconds=advance)
        try:
            events = decide(state, command, now)
        except DomainError:
            continue
        for event in events:
            state = evolve(state, event)
            history.append(event)
            seen.append(state)
    return state, history, seen


sequences = st.lists(st.tuples(commands, st.floats(0, 60)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(sequences)
def test_fold_of_history_equals_the_state_decisions_saw(cmds: list[tuple[Command, float]]) -> None:
    state, history, _ = run_commands(cmds)
    assert fold(initial_state(RUN), history) == state


@settings(max_examples=400, deadline=None)
@given(sequences)
def test_versions_are_contiguous(cmds: list[tuple[Command, float]]) -> None:
    _, history, seen = run_commands(cmds)
    assert [s.version for s in seen] == list(range(len(history) + 1))


@settings(max_examples=400, deadline=None)
@given(sequences)
def test_terminal_states_absorb(cmds: list[tuple[Command, float]]) -> None:
    _, history, seen = run_commands(cmds)
    first_terminal = next((i for i, s in enumerate(seen) if s.terminal), None)
    if first_terminal is None:
        return
    final = seen[first_terminal].status
    assert all(s.status == final for s in seen[first_terminal:])
    # after a terminal state only deletion may still be recorded
    assert all(isinstance(e, RunDeleted) for e in history[first_terminal:])


@settings(max_examples=300, deadline=None)
@given(sequences)
def test_provisioned_only_with_every_required_input(cmds: list[tuple[Command, float]]) -> None:
    _, _, seen = run_commands(cmds)
    for s in seen:
        if s.status is RunStatus.PROVISIONED:
            assert s.required_inputs <= s.provisioned


@settings(max_examples=300, deadline=None)
@given(sequences)
def test_failed_runs_say_why_and_finished_runs_have_outputs(cmds: list[tuple[Command, float]]) -> None:
    state, _, _ = run_commands(cmds)
    if state.status is RunStatus.FAILED:
        assert state.failure is not None
    if state.status is RunStatus.FINISHED:
        assert state.failure is None and state.outputs
