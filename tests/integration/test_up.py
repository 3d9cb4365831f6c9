"""`app-engine up` as a newcomer runs it: no DATABASE_URL or NATS_URL, so it starts its own
PostgreSQL and NATS; the whole API answers on one port; Ctrl-C leaves no process behind; the data
(a run in the log, its event on JetStream) survives a restart on the same data directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import psutil
import pytest

from shared.contracts import Subjects
from shared.domain.decide import CreateRun
from shared.runlog.runs import RunLog
from shared.runlog.store import EventStore
from tests.support import eventually, free_port

pytestmark = pytest.mark.slow

APP_ENGINE = Path(sys.executable).parent / "app-engine"
SERVICES = ("registry", "scheduler", "storage", "executor")
SCHEMA = os.environ.get("DATABASE_SCHEMA", "appengine")
SUBJECTS = Subjects(prefix=os.environ.get("NATS_SUBJECT_PREFIX", "appengine"))
STOP_DEADLINE = 60.0


class Stack:
    """One `app-engine up` process, its output in a file (a pipe nobody reads could fill up)."""

    def __init__(self, data_dir: Path, output: Path) -> None:
        self.data_dir = data_dir
        self.output = output
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # as on a newcomer's machine: nothing configured, so the embedded servers start
        unset = ("DATABASE_URL", "NATS_URL", "PORT", "HOST", "DATA_DIR")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        with output.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(APP_ENGINE), "up", "--data-dir", str(data_dir), "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        state = json.loads((self.data_dir / "embedded.json").read_text())
        assert isinstance(state, dict)
        return state

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self) -> int:
        """Ctrl-C: the exit code, within the deadline."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=STOP_DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    """The stacks a test starts, stopped at the end whatever happens; their output shown on failure."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.kill()
    for stack in started:
        sys.stdout.write(f"--- output of app-engine up on port {stack.port}:\n{stack.log()}\n")


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_up(stack: Stack, session: aiohttp.ClientSession) -> None:
    async def ping() -> bool:
        assert stack.proc.poll() is None, f"app-engine up exited with {stack.proc.returncode}"
        try:
            status, body = await get_json(session, f"{stack.base}/ping")
        except aiohttp.ClientError:
            return False
        return status == 200 and body["status"] == "UP"

    await eventually(ping, within=80, interval=0.2, what="app-engine up answering /ping")

    # the gateway answers a moment before the banner: up checks Docker and writes its state first
    async def announced() -> bool:
        return "App Engine is up: API at " in stack.log()

    await eventually(announced, within=15, what="app-engine up announcing itself")


async def check_services(stack: Stack, session: aiohttp.ClientSession) -> None:
    for name in SERVICES:
        status, body = await get_json(session, f"{stack.base}/services/{name}/ping")
        assert status == 200 and body["status"] == "UP", (name, body)
        status, body = await get_json(session, f"{stack.base}/services/{name}/health")
        assert status == 200 and body == {"status": "UP", "service": name}

        async def dependencies_up(name: str = name) -> bool:
            # the executor may be DOWN for want of a Docker engine; PostgreSQL and NATS must be UP
            _, body = await get_json(session, f"{stack.base}/services/{name}/ready")
            checks = body["checks"]
            assert checks["postgres"] == "UP" and checks["nats"] == "UP", (name, checks)
            return True

        await eventually(dependencies_up, within=20, what=f"{name} ready")
    status, body = await get_json(session, f"{stack.base}/ready")
    assert status in (200, 503)
    assert set(body["services"]) == set(SERVICES)
    for name in SERVICES:
        checks = body["services"][name]["checks"]
        assert checks["postgres"] == "UP" and checks["nats"] == "UP"
    status, body = await get_json(session, f"{stack.base}/health")
    assert status == 200 and body["status"] == "UP"
    status, body = await get_json(session, f"{stack.base}/app-engine/v1/no-such-thing")
    assert status == 404 and body["errorCode"] == "APPE-internal-route-not-found"


def gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still alive (a zombie waiting for its reaper counts as gone)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def stop_and_check(stack: Stack) -> None:
    children = stack.descendants()
    names = set()
    for child in children:
        # postgres backends come and go
        with contextlib.suppress(psutil.NoSuchProcess):
            names.add(child.name())
    assert {"postgres", "nats-server"} <= names, names
    started = time.monotonic()
    assert stack.interrupt() == 0
    assert time.monotonic() - started < STOP_DEADLINE
    _, alive = psutil.wait_procs(children, timeout=10)
    assert gone(alive) == [], [(p.pid, p.cmdline()) for p in gone(alive)]
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(stack.data_dir) in " ".join(p.info["cmdline"] or ()) and gone([p])
    ]
    assert leftovers == []
    assert "supervisor.stopped" in stack.log()


async def test_up_serves_everything_on_one_port_and_keeps_data(tmp_path: Path, stacks: list[Stack]) -> None:
    data_dir = tmp_path / "data"
    run_id = uuid.uuid4()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        first = Stack(data_dir, tmp_path / "first.log")
        stacks.append(first)
        await wait_up(first, session)
        await check_services(first, session)

        # a run in the embedded database, published on the embedded JetStream by the relay
        state = first.state()
        assert state["pid"] == first.proc.pid and state["data_dir"] == str(data_dir)
        pool = await asyncpg.create_pool(state["database_url"], min_size=1, max_size=2)
        assert pool is not None
        try:
            await RunLog(EventStore(pool, SCHEMA)).execute(
                run_id,
                CreateRun(task_id=uuid.uuid4(), task_namespace="ns", task_version="1", required_inputs=("a",)),
            )
        finally:
            await pool.close()
        nc = await nats.connect(state["nats_url"])
        try:
            js = nc.jetstream()

            async def published() -> bool:
                return (await js.stream_info(SUBJECTS.events_stream)).state.messages >= 1

            await eventually(published, within=30, what="the run event on JetStream")
        finally:
            await nc.close()

        stop_and_check(first)
        assert json.loads((data_dir / "embedded.json").read_text())["pid"] is None

        second = Stack(data_dir, tmp_path / "second.log")
        stacks.append(second)
        await wait_up(second, session)
        await check_services(second, session)
        state = second.state()
        conn = await asyncpg.connect(state["database_url"])
        try:
            events = await conn.fetch(f"SELECT type FROM {SCHEMA}.events WHERE aggregate_id = $1", run_id)
            row = await conn.fetchrow(f"SELECT state FROM {SCHEMA}.runs WHERE run_id = $1", run_id)
        finally:
            await conn.close()
        assert [e["type"] for e in events] == ["created"]
        assert row is not None and row["state"] == "CREATED"
        nc = await nats.connect(state["nats_url"])
        try:
            info = await nc.jetstream().stream_info(SUBJECTS.events_stream)
            assert info.state.messages >= 1
        finally:
            await nc.close()

    # a supervisor killed outright takes its children with it (PR_SET_PDEATHSIG)
    children = second.descendants()
    second.proc.kill()
    second.proc.wait()
    _, alive = psutil.wait_procs(children, timeout=40)
    assert gone(alive) == [], [(p.pid, p.cmdline()) for p in gone(alive)]
