"""The scheduler over HTTP with real PostgreSQL and NATS: runs, state actions, admission and
dispatch to the work queue, cancellation, deletion, listings, history and the watchdog."""

from __future__ import annotations

import pathlib
import re
import uuid
from typing import Any

import msgspec
import nats
import pytest

from shared.contracts import RunJob, Subjects
from shared.domain.decide import ProvisionInput, TakeRun
from shared.runlog.runs import RunLog
from tests.images import make_bundle
from tests.integration.conftest import ADD, Client, P, upload
from tests.support import eventually

TASK = f"{P}/tasks/com.cytomine.dummy.arithmetic.integer.addition/0.1.0"


@pytest.fixture
async def task(registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path) -> dict[str, Any]:
    status, body = await upload(registry, make_bundle(tmp_path / "b.zip", ADD, busybox_tar))
    assert status == 200 and isinstance(body, dict)
    return body


async def create(scheduler: Client, **kwargs: Any) -> dict[str, Any]:
    resp = await scheduler.post(f"{TASK}/runs", **kwargs)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def state_of(scheduler: Client, run_id: str) -> str:
    body = await (await scheduler.get(f"{P}/task-runs/{run_id}")).json()
    return str(body["state"])


async def provision_all(runlog: RunLog, run_id: str) -> None:
    # the storage service's job; the scheduler only sees the resulting events
    for name in ("a", "b"):
        await runlog.execute(uuid.UUID(run_id), ProvisionInput(parameter=name))


async def run_action(scheduler: Client, run_id: str, body: object) -> tuple[int, Any]:
    resp = await scheduler.post(f"{P}/task-runs/{run_id}/state-actions", json=body)
    return resp.status, await resp.json()


async def test_create_and_read_a_run(scheduler: Client, task: dict[str, Any]) -> None:
    run = await create(scheduler)
    assert run["state"] == "CREATED" and run["task"] == task
    by_id = await scheduler.post(f"{P}/tasks/{task['id']}/runs")
    assert by_id.status == 200
    body = await (await scheduler.get(f"{P}/task-runs/{run['id']}")).json()
    assert body["id"] == run["id"] and body["state"] == "CREATED" and body["task"] == task
    assert body["createdAt"] and body["updatedAt"] and "failure" not in body
    listed = await (await scheduler.get(f"{TASK}/runs")).json()
    assert sorted(r["id"] for r in listed) == sorted([run["id"], (await by_id.json())["id"]])


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/no.such/1.0.0/runs",
        "/tasks/00000000-0000-0000-0000-000000000000/runs",
        "/tasks/not-a-uuid/runs",
    ],
)
async def test_runs_of_unknown_tasks_are_404(scheduler: Client, path: str) -> None:
    resp = await scheduler.post(P + path)
    assert resp.status == 404
    assert (await resp.json())["errorCode"] == "APPE-internal-task-not-found"


@pytest.mark.parametrize("run_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
async def test_unknown_runs_are_404(scheduler: Client, run_id: str) -> None:
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/logs"), ("POST", "/cancel"), ("GET", "/events")):
        resp = await scheduler.request(method, f"{P}/task-runs/{run_id}{path}")
        assert resp.status == 404, (method, path)
        assert (await resp.json())["errorCode"] == "APPE-internal-run-not-found-error"


async def test_state_action_rules(scheduler: Client, runlog: RunLog, task: dict[str, Any]) -> None:
    run = (await create(scheduler))["id"]
    assert await run_action(scheduler, run, {"desired": "RUNNING"}) == (
        403,
        {"errorCode": "APPE-internal-task-run-provisions-not-found", "message": "not provisioned"},
    )
    status, body = await run_action(scheduler, run, {"desired": "PROVISIONED"})
    assert status == 200 and body["resource"]["state"] == "CREATED"  # honest: inputs are missing
    # StateAction's dates are java.util.Date on the wire, unlike TaskRunResponse's LocalDateTime
    java_date = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
    assert java_date.match(body["resource"]["createdAt"]) and java_date.match(body["resource"]["updatedAt"]), body
    for bad in ({"desired": "running"}, {"desired": 3}, {"nope": 1}, [1]):
        assert (await run_action(scheduler, run, bad))[0] == 400
    raw = await scheduler.post(f"{P}/task-runs/{run}/state-actions", data=b"{not json")
    assert raw.status == 400
    assert (await raw.json())["message"] == "unknown state in transition request"
    assert await run_action(scheduler, run, {"desired": "QUEUED"}) == (
        403,
        {"errorCode": "APPE-internal-task-run-state-error", "message": "unknown state in transition request"},
    )
    status, body = await run_action(scheduler, run, {"desired": "FINISHED"})
    assert status == 403 and body["errorCode"] == "APPE-internal-task-run-state-error"
    assert await state_of(scheduler, run) == "CREATED"


async def test_running_request_is_admitted_and_dispatched(
    scheduler: Client, runlog: RunLog, task: dict[str, Any], nats_url: str, subjects: Subjects
) -> None:
    run = (await create(scheduler))["id"]
    await provision_all(runlog, run)
    assert await state_of(scheduler, run) == "PROVISIONED"
    status, body = await run_action(scheduler, run, {"desired": "RUNNING"})
    assert status == 200 and body["status"] == "success" and body["resource"]["state"] == "QUEUING"

    async def queued() -> bool:
        return await state_of(scheduler, run) == "QUEUED"

    await eventually(queued, within=15, what="run admitted")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subjects.jobs, durable="probe", stream=subjects.jobs_stream)
        msgs = await sub.fetch(1, timeout=10)
        job = msgspec.json.decode(msgs[0].data, type=RunJob)
        assert str(job.run_id) == run and str(job.task_id) == task["id"]
        history = await (await scheduler.get(f"{P}/task-runs/{run}/events")).json()
        assert job.queued_seq == next(e["seq"] for e in history if e["type"] == "queued")
        assert msgs[0].headers is not None and msgs[0].headers["Nats-Msg-Id"] == job.msg_id
    finally:
        await nc.close()
    assert (await run_action(scheduler, run, {"desired": "RUNNING"}))[0] == 403


async def test_cancel_a_queued_run(scheduler: Client, runlog: RunLog, task: dict[str, Any]) -> None:
    run = (await create(scheduler))["id"]
    await provision_all(runlog, run)
    await run_action(scheduler, run, {"desired": "RUNNING"})
    resp = await scheduler.post(f"{P}/task-runs/{run}/cancel")
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "FAILED"
    assert body["failure"]["code"] == "CANCELLED" and body["failure"]["exitCode"] is None
    again = await scheduler.post(f"{P}/task-runs/{run}/cancel")
    assert again.status == 403


async def test_delete_keeps_history(scheduler: Client, task: dict[str, Any]) -> None:
    run = (await create(scheduler))["id"]
    assert (await scheduler.delete(f"{P}/task-runs/{run}")).status == 200
    assert (await scheduler.get(f"{P}/task-runs/{run}")).status == 404
    history = await (await scheduler.get(f"{P}/task-runs/{run}/events")).json()
    assert [e["type"] for e in history] == ["created", "failed", "deleted"]
    assert [e["state"] for e in history] == ["CREATED", "FAILED", "FAILED"]
    assert (await scheduler.get(f"{TASK}/runs")).status == 200
    assert await (await scheduler.get(f"{TASK}/runs")).json() == []


async def test_run_listing_filters_and_pages(scheduler: Client, runlog: RunLog, task: dict[str, Any]) -> None:
    runs = [(await create(scheduler))["id"] for _ in range(4)]
    await scheduler.post(f"{P}/task-runs/{runs[0]}/cancel")
    resp = await scheduler.get(f"{P}/runs", params={"task": task["id"], "limit": "2"})
    page = await resp.json()
    assert resp.headers["X-Total-Count"] == "4" and len(page) == 2
    failed = await (await scheduler.get(f"{P}/runs", params={"state": "FAILED"})).json()
    assert [r["id"] for r in failed] == [runs[0]] and failed[0]["failure"]["code"] == "CANCELLED"
    future = await (await scheduler.get(f"{P}/runs", params={"since": "2999-01-01T00:00:00Z"})).json()
    assert future == []
    for bad in ({"state": "SLEEPING"}, {"limit": "0"}, {"since": "yesterday"}, {"task": "x"}):
        assert (await scheduler.get(f"{P}/runs", params=bad)).status == 400


async def test_global_event_feed_pages_by_position(scheduler: Client, task: dict[str, Any]) -> None:
    await create(scheduler)
    first = await (await scheduler.get(f"{P}/events", params={"limit": "1"})).json()
    assert [e["type"] for e in first["events"]] == ["registered"]
    rest = await (await scheduler.get(f"{P}/events", params={"after": str(first["next"])})).json()
    assert [e["type"] for e in rest["events"]] == ["created"]
    runs_only = await (await scheduler.get(f"{P}/events", params={"aggregate": "run"})).json()
    assert all(e["aggregate"] == "run" for e in runs_only["events"])


async def test_deleting_a_task_cancels_its_active_runs(
    scheduler: Client, registry: Client, task: dict[str, Any]
) -> None:
    run = (await create(scheduler))["id"]
    assert (await registry.delete(TASK)).status == 200

    async def cancelled() -> bool:
        body = await (await scheduler.get(f"{P}/task-runs/{run}")).json()
        return bool(body["state"] == "FAILED" and body["failure"]["code"] == "CANCELLED")

    await eventually(cancelled, within=15, what="run cancelled after its task was deleted")
    body = await (await scheduler.get(f"{P}/task-runs/{run}")).json()
    assert body["task"]["namespace"] == "com.cytomine.dummy.arithmetic.integer.addition"


async def test_time_limit_override_must_be_sane(scheduler: Client, task: dict[str, Any]) -> None:
    assert (await create(scheduler, json={"timeLimit": 60}))["state"] == "CREATED"
    for bad in ({"timeLimit": -1}, {"timeLimit": "soon"}, {"timeLimit": True}):
        assert (await scheduler.post(f"{TASK}/runs", json=bad)).status == 400
    assert (await scheduler.post(f"{TASK}/runs", data=b"{oops")).status == 400


@pytest.mark.parametrize("scheduler_env", [{"WATCHDOG_INTERVAL": "0.2", "QUEUE_TIMEOUT": "1"}])
async def test_queue_timeout_fails_the_run(scheduler: Client, runlog: RunLog, task: dict[str, Any]) -> None:
    run = (await create(scheduler))["id"]
    await provision_all(runlog, run)
    await run_action(scheduler, run, {"desired": "RUNNING"})

    async def timed_out() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await scheduler.get(f"{P}/task-runs/{run}")).json()
        return body if body["state"] == "FAILED" else None

    body = await eventually(timed_out, within=15, what="queue timeout")
    assert body is not None
    assert body["failure"]["code"] == "TIMEOUT" and body["failure"]["stage"] == "QUEUE"


@pytest.mark.parametrize("scheduler_env", [{"WATCHDOG_INTERVAL": "0.2", "EXECUTOR_TIMEOUT": "0.5"}])
async def test_a_run_whose_executor_vanished_is_requeued(
    scheduler: Client, runlog: RunLog, task: dict[str, Any]
) -> None:
    run = (await create(scheduler))["id"]
    await provision_all(runlog, run)
    await run_action(scheduler, run, {"desired": "RUNNING"})

    async def queued() -> bool:
        return await state_of(scheduler, run) == "QUEUED"

    await eventually(queued, within=15, what="run admitted")
    await runlog.execute(uuid.UUID(run), TakeRun(executor_id="ghost-executor"))  # never beats

    async def requeued() -> list[str] | None:
        history = await (await scheduler.get(f"{P}/task-runs/{run}/events")).json()
        types = [e["type"] for e in history if e["type"] in ("pending", "retried")]
        return types if "retried" in types else None

    assert await eventually(requeued, within=15, what="retry") == ["pending", "retried"]
    body = await (await scheduler.get(f"{P}/task-runs/{run}")).json()
    assert body["state"] == "QUEUED" and body["attempt"] == 1
