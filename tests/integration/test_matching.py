"""``dependencies.matching``: arrays that must have the same size.

Input against input is checked when the run is asked to run (upstream: 400, the run stays
PROVISIONED); anything involving an output when the outputs are collected (the run FAILS with
``APPE-internal-not-matching``). Registry, scheduler and storage run as services over HTTP.
"""

from __future__ import annotations

import contextlib
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.storage.app import build_app
from services.storage.settings import StorageSettings
from shared.contracts import Subjects
from shared.domain.decide import MarkQueued, StartRun, TakeRun
from shared.domain.errors import DomainError
from shared.runlog.runs import RunLog
from shared.settings import load_settings
from tests.images import make_bundle
from tests.integration.conftest import Client, P, service_env, upload
from tests.integration.test_storage_fixtures import output_tar

DESCRIPTOR = (pathlib.Path(__file__).parents[1] / "fixtures" / "storage" / "matching.yml").read_bytes()
NOT_MATCHING = "collections don't have the same size"


def items(*values: int) -> list[dict[str, int]]:
    return [{"index": i, "value": v} for i, v in enumerate(values)]


def array(*values: int) -> dict[str, bytes | None]:
    """An output array's entries for :func:`output_tar`, under its own folder."""
    entries: dict[str, bytes | None] = {"array.yml": f"size: {len(values)}".encode()}
    entries.update((str(i), str(v).encode()) for i, v in enumerate(values))
    return entries


def under(name: str, entries: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {name: None} | {f"{name}/{k}": v for k, v in entries.items()}


@pytest.fixture
async def services(
    registry: Client,
    scheduler: Client,
    busybox_tar: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
) -> AsyncIterator[dict[str, Client]]:
    status, body = await upload(registry, make_bundle(tmp_path / "matching.zip", DESCRIPTOR, busybox_tar))
    assert status == 200, body
    env = service_env(schema, subjects, database_url, nats_url, tmp_path / "data") | {"RELAY_ENABLED": "false"}
    async with TestClient(TestServer(build_app(load_settings(StorageSettings, env)))) as storage:
        yield {"scheduler": scheduler, "storage": storage}


async def provisioned_run(services: dict[str, Client], xs: list[int], ys: list[int]) -> str:
    resp = await services["scheduler"].post(f"{P}/tasks/com.cytomine.test.storage.matching/1.0.0/runs")
    assert resp.status == 200, await resp.text()
    run: str = (await resp.json())["id"]
    body = [{"parameterName": "xs", "value": items(*xs)}, {"parameterName": "ys", "value": items(*ys)}]
    resp = await services["storage"].put(f"{P}/task-runs/{run}/input-provisions", json=body)
    assert resp.status == 200, await resp.text()
    return run


async def request_run(services: dict[str, Client], run: str) -> tuple[int, Any]:
    resp = await services["scheduler"].post(f"{P}/task-runs/{run}/state-actions", json={"desired": "RUNNING"})
    return resp.status, await resp.json()


async def test_input_arrays_of_different_sizes_are_refused_at_running(services: dict[str, Client]) -> None:
    run = await provisioned_run(services, [1, 2, 3], [7, 8])
    status, body = await request_run(services, run)
    assert (status, body) == (
        400,
        {
            "errorCode": "APPE-internal-not-matching",
            "message": NOT_MATCHING,
            "details": {"type": "parameter", "parameterName": "xs"},
        },
    )
    run_body = await (await services["scheduler"].get(f"{P}/task-runs/{run}")).json()
    assert run_body["state"] == "PROVISIONED"  # nothing changed: fix the inputs and ask again
    resp = await services["storage"].put(
        f"{P}/task-runs/{run}/input-provisions/ys", json={"parameterName": "ys", "value": items(7, 8, 9)}
    )
    assert resp.status == 200
    status, body = await request_run(services, run)
    assert status == 200 and body["resource"]["state"] == "QUEUING", body


async def collect(services: dict[str, Client], runlog: RunLog, run: str, entries: dict[str, bytes | None]) -> Any:
    status, _ = await request_run(services, run)
    assert status == 200
    run_id = uuid.UUID(run)
    with contextlib.suppress(DomainError):  # the scheduler's admission may have queued it already
        await runlog.execute(run_id, MarkQueued())
    for command in (TakeRun(executor_id="test"), StartRun(container_id="c")):
        await runlog.execute(run_id, command)
    resp = await services["storage"].put(
        f"/internal/runs/{run}/outputs.tar", params={"exit_code": "0"}, data=output_tar(entries)
    )
    assert resp.status == 200
    return await resp.json()


@pytest.mark.parametrize(
    ("outputs", "failed"),
    [
        (under("zs", array(1, 2, 3)), []),
        (under("zs", array(1, 2, 3)) | under("ws", array(4, 5, 6)), []),
        (under("zs", array(1, 2)), ["zs"]),  # against the input xs
        (under("zs", array(1, 2, 3)) | under("ws", array(4)), ["ws"]),  # against the output zs
    ],
)
async def test_outputs_must_match_their_input_and_output_arrays(
    services: dict[str, Client], runlog: RunLog, outputs: dict[str, bytes | None], failed: list[str]
) -> None:
    run = await provisioned_run(services, [1, 2, 3], [7, 8, 9])
    answer = await collect(services, runlog, run, outputs)
    expected_errors = [
        {"errorCode": "APPE-internal-not-matching", "message": NOT_MATCHING, "details": details(name)}
        for name in failed
    ]
    assert answer == {"state": "FAILED" if failed else "FINISHED", "errors": expected_errors}


def details(name: str) -> dict[str, str]:
    return {"type": "parameter", "parameterName": name}
