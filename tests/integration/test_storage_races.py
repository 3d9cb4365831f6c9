"""Provisioning racing the run's moves: what a run executes is what its log recorded.

Storage writes an input's files and then appends its event; the scheduler moves the run on. Both
hold the run's advisory lock, so whichever comes second sees the first one's outcome: a
provision that lost the race is refused (403) and leaves the files as they were; one that won
is recorded before ``requested``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import msgspec
import pytest

from services.storage.handlers import checksum
from tests.integration.conftest import Client, P
from tests.integration.test_storage_fixtures import Env, env_fixture, form  # noqa: F401  (fixture)


async def send_file(env: Env, run_id: uuid.UUID, data: bytes) -> int:
    resp = await env.storage.post(env.url(run_id, "input-provisions/doc"), data=form(data))
    await resp.read()
    return resp.status


async def request_run(scheduler: Client, run_id: uuid.UUID, delay: float) -> int:
    await asyncio.sleep(delay)
    resp = await scheduler.post(f"{P}/task-runs/{run_id}/state-actions", json={"desired": "RUNNING"})
    return resp.status


async def recorded(env: Env, run_id: uuid.UUID) -> tuple[list[str], str | None]:
    """The run's event types, and the checksum of the last recorded value of ``doc``."""
    events = await env.runlog.store.read(run_id)
    last = None
    for event in events:
        if event.type == "input_provisioned":
            data = msgspec.json.decode(event.data)
            if data["parameter"] == "doc":
                last = data["checksum"]
    return [e.type for e in events], last


async def test_a_run_executes_exactly_the_inputs_its_log_recorded(env: Env, scheduler: Client) -> None:
    for attempt in range(12):
        run_id = await env.new_run()
        resp = await env.storage.put(env.url(run_id, "input-provisions/ig"), json={"parameterName": "ig", "value": 1})
        assert resp.status == 200
        old = b"old value"
        assert await send_file(env, run_id, old) == 200
        new = os.urandom(3 * 1024 * 1024)

        # the request moves across the provision's window from one attempt to the next
        provision_status, run_status = await asyncio.gather(
            send_file(env, run_id, new), request_run(scheduler, run_id, delay=0.002 * attempt)
        )
        assert run_status == 200
        stored = env.blob(run_id, "inputs", "doc").read_bytes()
        types, last = await recorded(env, run_id)
        # the bytes the task will get are the bytes the log vouches for
        assert last == checksum([("", hashlib.sha256(stored).hexdigest())])
        if provision_status == 200:
            assert stored == new
            provisions = [i for i, t in enumerate(types) if t == "input_provisioned"]
            assert provisions[-1] < types.index("requested")
        else:
            assert provision_status == 403 and stored == old


async def test_many_provisions_at_once_neither_deadlock_nor_interleave(env: Env) -> None:
    """More lock holders than pool connections: each holder needs no second connection."""
    runs = [await env.new_run() for _ in range(4)]
    values = range(1, 10)

    async def provision(run_id: uuid.UUID, value: int) -> int:
        body = [{"parameterName": "ig", "value": value}, {"parameterName": "s", "value": f"v{value}"}]
        resp = await env.storage.put(env.url(run_id, "input-provisions"), json=body)
        return resp.status

    async with asyncio.timeout(60):
        statuses = await asyncio.gather(*(provision(r, v) for r in runs for v in values))
    assert set(statuses) == {200}
    for run_id in runs:
        # the files are one provision's, whole: never ig of one and s of another
        ig = env.blob(run_id, "inputs", "ig").read_text()
        assert env.blob(run_id, "inputs", "s").read_text() == f"v{ig}"
        state = await env.state(run_id)
        # created, two values per batch, and PROVISIONED once: no batch lost or applied twice
        assert state.version == 1 + 2 * len(values) + 1


@pytest.fixture
def scheduler_env() -> dict[str, str]:
    """A scheduler with a pool of two connections: far fewer than the requests below."""
    return {"WATCHDOG_INTERVAL": "0.2", "DATABASE_POOL_SIZE": "2"}


async def test_more_run_requests_at_once_than_pool_connections(env: Env, scheduler: Client) -> None:
    runs = [await env.new_run() for _ in range(12)]
    for run_id in runs:
        resp = await env.storage.put(env.url(run_id, "input-provisions/ig"), json={"parameterName": "ig", "value": 1})
        assert resp.status == 200
    async with asyncio.timeout(60):
        statuses = await asyncio.gather(*(request_run(scheduler, run_id, delay=0) for run_id in runs))
    assert statuses == [200] * len(runs)
