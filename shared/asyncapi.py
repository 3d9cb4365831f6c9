"""The AsyncAPI document of the NATS contract, generated from the message types themselves.

``python -m shared.asyncapi > docs/asyncapi.yaml`` writes it; a test fails when the committed
document differs from what the code defines, so it cannot drift.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import yaml

from shared.contracts import LogLine, RunJob
from shared.domain.events import RunEvent
from shared.domain.task_events import TaskEvent
from shared.runlog.store import StoredEvent


def document() -> dict[str, Any]:
    (envelope, run_events, task_events, job, log_line), components = msgspec.json.schema_components(
        [StoredEvent, RunEvent, TaskEvent, RunJob, LogLine], ref_template="#/components/schemas/{name}"
    )
    envelope_description = (
        "Every event on the stream: the envelope as stored in the log. `data` is the event "
        "(one of RunEvent or TaskEvent, by `type`); `state` is the aggregate's state after it."
    )
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "Cytomine App Engine events",
            "version": "1.0.0",
            "description": (
                "Subjects are under a configurable prefix (NATS_SUBJECT_PREFIX, default `appengine`). "
                "Run and task events are on the JetStream stream `<PREFIX>_EVENTS` (replay by sequence "
                "or time with a durable consumer); each message has header `Nats-Msg-Id` = event id. "
                "One run's events are published in sequence order. The same history is served by "
                "`GET /app-engine/v1/events` and `GET /app-engine/v1/task-runs/{id}/events`."
            ),
        },
        "channels": {
            "{prefix}.run.{runId}.{type}": {
                "description": "Run events. " + envelope_description,
                "parameters": _parameters("runId", "type"),
                "subscribe": {"message": {"name": "RunEventEnvelope", "payload": envelope}},
            },
            "{prefix}.task.{taskId}.{type}": {
                "description": "Task events (registered, deleted). " + envelope_description,
                "parameters": _parameters("taskId", "type"),
                "subscribe": {"message": {"name": "TaskEventEnvelope", "payload": envelope}},
            },
            "{prefix}.jobs.run": {
                "description": (
                    "Work queue (stream `<PREFIX>_JOBS`, WorkQueue retention) from schedulers to "
                    "executors; `Nats-Msg-Id` = `<runId>:<queuedSeq>`."
                ),
                "parameters": _parameters(),
                "publish": {"message": {"name": "RunJob", "payload": job}},
            },
            "{prefix}.logs.{runId}": {
                "description": "Live log lines of a run (core NATS, not persisted; the full log is "
                "served by `GET /task-runs/{id}/logs`).",
                "parameters": _parameters("runId"),
                "subscribe": {"message": {"name": "LogLine", "payload": log_line}},
            },
        },
        "components": {
            "schemas": components | {"RunEventData": run_events, "TaskEventData": task_events},
        },
    }


def _parameters(*names: str) -> dict[str, Any]:
    params = {"prefix": {"description": "NATS_SUBJECT_PREFIX", "schema": {"type": "string"}}}
    for name in names:
        params[name] = {"schema": {"type": "string"}}
    return params


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
