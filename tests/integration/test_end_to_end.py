"""Runs end to end through the HTTP API of all four services, with real PostgreSQL, NATS and
Docker, and busybox tasks built FROM scratch.

Every service runs as it does in production (its own aiohttp app, its consumers, its relay
candidate); they share only the database schema, the subject prefix and the blob directory.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.executor.app import build_app as build_executor
from services.executor.settings import ExecutorSettings
from services.storage.app import build_app as build_storage
from services.storage.settings import StorageSettings
from shared.contracts import Subjects
from shared.settings import load_settings
from tests.descriptors import add_descriptor
from tests.images import build_image, make_bundle, require_docker, save_image
from tests.integration.conftest import Client, P, service_env, upload
from tests.support import eventually

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """One saved image per behaviour, built once per session."""
    require_docker()
    work = tmp_path_factory.mktemp("e2e-images")
    scripts = {
        "add": 'echo "add: $(cat /inputs/a) + $(cat /inputs/b)"; echo $(( $(cat /inputs/a) + $(cat /inputs/b) )) '
        "> /outputs/sum",
        "fail": "echo going down >&2; exit 3",
        "missing": "echo no outputs",
        "invalid": "echo not-a-number > /outputs/sum",
        "sleep": 'echo sleeping; trap "exit 143" TERM; sleep 300 & wait',
    }
    saved = {}
    for name, script in scripts.items():
        tag = f"appengine-test/e2e-{name}:1"
        build_image(tag, work, cmd=script)
        saved[name] = save_image(tag, work / f"{name}.tar")
    return saved


@pytest.fixture
async def stack(
    registry: Client,
    scheduler: Client,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
    unique: str,
) -> AsyncIterator[dict[str, Client]]:
    env = service_env(schema, subjects, database_url, nats_url, tmp_path / "data")
    async with TestClient(TestServer(build_storage(load_settings(StorageSettings, env)))) as storage:
        executor_env = env | {
            "STORAGE_URL": str(storage.make_url("")).rstrip("/"),
            "EXECUTOR_ID": f"e2e-{unique}",
            "EXECUTOR_SLOTS": "2",
            "STOP_GRACE_SECONDS": "2",
        }
        async with TestClient(TestServer(build_executor(load_settings(ExecutorSettings, executor_env)))) as ex:
            yield {"registry": registry, "scheduler": scheduler, "storage": storage, "executor": ex}


async def register(
    stack: dict[str, Client], tmp_path: pathlib.Path, image: pathlib.Path, short: str, extra: str = ""
) -> str:
    descriptor = add_descriptor(f"com.cytomine.e2e.{short}", f"add_{short}", extra)
    status, body = await upload(stack["registry"], make_bundle(tmp_path / f"{short}.zip", descriptor, image))
    assert status == 200, body
    return f"{P}/tasks/com.cytomine.e2e.{short}/1.0.0"


async def start_run(stack: dict[str, Client], task: str, a: int = 5, b: int = 10, **create: Any) -> str:
    resp = await stack["scheduler"].post(f"{task}/runs", **create)
    assert resp.status == 200, await resp.text()
    run: str = (await resp.json())["id"]
    for name, value in (("a", a), ("b", b)):
        resp = await stack["storage"].put(
            f"{P}/task-runs/{run}/input-provisions/{name}", json={"parameterName": name, "value": value}
        )
        assert resp.status == 200, await resp.text()
    resp = await stack["scheduler"].post(f"{P}/task-runs/{run}/state-actions", json={"desired": "RUNNING"})
    assert resp.status == 200, await resp.text()
    return run


async def wait_for_state(stack: dict[str, Client], run: str, *states: str, within: float = 90) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await stack["scheduler"].get(f"{P}/task-runs/{run}")).json()
        return body if body["state"] in states else None

    found = await eventually(probe, within=within, interval=0.1, what=f"run in {states}")
    assert found is not None
    return found


def containers_of(run: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.cytomine.appengine.run={run}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


async def no_container_left(run: str) -> None:
    """The executor removes a run's container after the run's end is recorded: wait for it."""

    async def gone() -> bool:
        return containers_of(run) == []

    await eventually(gone, within=20, what="container removed")


async def test_add_two_integers(
    stack: dict[str, Client], images: dict[str, pathlib.Path], tmp_path: pathlib.Path, nats_url: str, subjects: Subjects
) -> None:
    task = await register(stack, tmp_path, images["add"], "add")
    nc = await nats.connect(nats_url)
    seen: list[str] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"{subjects.prefix}.run.>", ordered_consumer=True)
        run = await start_run(stack, task)
        body = await wait_for_state(stack, run, "FINISHED", "FAILED")
        assert body["state"] == "FINISHED", body
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=2)
                envelope = msgspec.json.decode(msg.data)
                if envelope["aggregate_id"] == run and (not seen or seen[-1] != envelope["state"]):
                    seen.append(envelope["state"])
                if seen and seen[-1] == "FINISHED":
                    break
    finally:
        await nc.close()
    assert seen == ["CREATED", "PROVISIONED", "QUEUING", "QUEUED", "PENDING", "RUNNING", "FINISHED"]
    outputs = await (await stack["storage"].get(f"{P}/task-runs/{run}/outputs")).json()
    assert [(o["parameterName"], o["type"], o["value"]) for o in outputs] == [("sum", "INTEGER", 15)]
    logs = await (await stack["scheduler"].get(f"{P}/task-runs/{run}/logs")).text()
    assert "add: 5 + 10" in logs
    await no_container_left(run)


@pytest.mark.parametrize(
    ("image", "code"),
    [("fail", "TASK_EXIT_NONZERO"), ("missing", "OUTPUTS_INVALID"), ("invalid", "OUTPUTS_INVALID")],
)
async def test_failures_end_failed_with_a_reason(
    stack: dict[str, Client], images: dict[str, pathlib.Path], tmp_path: pathlib.Path, image: str, code: str
) -> None:
    task = await register(stack, tmp_path, images[image], image)
    run = await start_run(stack, task)
    body = await wait_for_state(stack, run, "FINISHED", "FAILED")
    assert body["state"] == "FAILED" and body["failure"]["code"] == code, body
    if image == "fail":
        assert body["failure"]["exitCode"] == 3 and body["exitCode"] == 3
    await no_container_left(run)


async def test_cancel_a_running_task(
    stack: dict[str, Client], images: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    task = await register(stack, tmp_path, images["sleep"], "sleep")
    run = await start_run(stack, task)
    await wait_for_state(stack, run, "RUNNING")
    resp = await stack["scheduler"].post(f"{P}/task-runs/{run}/cancel")
    assert resp.status == 200
    body = await wait_for_state(stack, run, "FAILED", within=30)
    assert body["failure"]["code"] == "CANCELLED"
    await no_container_left(run)


async def test_time_limit(stack: dict[str, Client], images: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    task = await register(stack, tmp_path, images["sleep"], "slow")
    run = await start_run(stack, task, json={"timeLimit": 2})
    body = await wait_for_state(stack, run, "FAILED", "FINISHED", within=60)
    assert body["state"] == "FAILED" and body["failure"]["code"] == "TIMEOUT", body
    await no_container_left(run)
