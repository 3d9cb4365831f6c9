"""Logs written by earlier versions stay readable and fold to the same state (STYLE rule 5).

The files in tests/fixtures/golden are history: never regenerate them. When an event gains a
defaulted field, these tests prove old records still decode.
"""

from __future__ import annotations

import pathlib
import uuid

import msgspec
import pytest

from shared.domain.events import RUN_EVENT_TYPES, FailureCode, RunEvent, RunStatus, event_tag
from shared.domain.evolve import fold
from shared.domain.state import initial_state

GOLDEN = pathlib.Path(__file__).parent.parent / "fixtures" / "golden"
decoder = msgspec.json.Decoder(list[RunEvent])


def load(name: str) -> list[RunEvent]:
    return decoder.decode((GOLDEN / name).read_bytes())


def test_finished_run_history_folds_to_finished() -> None:
    state = fold(initial_state(uuid.uuid4()), load("run_finished.json"))
    assert state.status is RunStatus.FINISHED
    assert state.version == 10
    assert [o.parameter for o in state.outputs] == ["sum"]
    assert state.time_limit_seconds == 600


def test_retried_cancelled_deleted_history() -> None:
    state = fold(initial_state(uuid.uuid4()), load("run_retried_cancelled_deleted.json"))
    assert state.status is RunStatus.FAILED and state.deleted
    assert state.attempt == 2 and state.executor_id == "executor-2"
    assert state.failure is not None
    assert state.failure.code is FailureCode.CANCELLED and state.failure.exit_code == 143


def test_tags_are_unique_and_stable() -> None:
    tags = [t.__struct_config__.tag for t in RUN_EVENT_TYPES]
    assert len(set(tags)) == len(tags)
    # the wire names of the golden logs: a renamed tag would orphan every stored event
    stored = {
        e["type"]
        for name in ("run_finished.json", "run_retried_cancelled_deleted.json")
        for e in msgspec.json.decode((GOLDEN / name).read_bytes())
    }
    assert stored <= set(tags)


def test_unknown_event_type_fails_loudly() -> None:
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(b'[{"type": "teleported", "at": "2026-01-01T00:00:00Z"}]')


def test_malformed_event_fails_loudly() -> None:
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(
            b'[{"type": "failed", "code": "NOT_A_CODE", "message": "x", "stage": "QUEUE", '
            b'"at": "2026-01-01T00:00:00Z"}]'
        )


def test_event_tag_reads_the_struct_tag() -> None:
    events = load("run_finished.json")
    assert [event_tag(e) for e in events][:2] == ["created", "input_provisioned"]
