"""Crash recovery with the services as real processes, killed with SIGKILL.

Every service runs as ``python -m services.<name>`` (tests/processes.py) over one database
schema, subject prefix and data directory; a SIGKILL runs no shutdown code at all, so what
survives it is only what the design makes durable: the run log in PostgreSQL, the streams and
durable consumers in JetStream, the containers in Docker, and the heartbeat table.

* an executor killed mid-run: the watchdog retries its runs (``EXECUTOR_LOST``) on the other
  executor; restarted with the same ``EXECUTOR_ID``, it removes its orphaned containers;
* the scheduler killed mid-flight: the durable admission/dispatch consumers redeliver what it
  had not acknowledged to the restarted scheduler, and every run finishes once;
* an executor killed and restarted before ``EXECUTOR_TIMEOUT``: it adopts its running container
  and the run finishes without a retry;
* an executor killed while preparing a run (no container yet) and restarted before
  ``EXECUTOR_TIMEOUT``, after its job was redelivered to another executor: it must hand the run
  back at start-up (``Executor.recover``), or the run would stay PENDING while the executor lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import pathlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.executor.runtime import LABEL_EXECUTOR, LABEL_RUN
from shared.contracts import Subjects
from tests.descriptors import add_descriptor
from tests.images import build_image, make_bundle, require_docker, save_image
from tests.integration.conftest import P, delete_streams, service_env
from tests.processes import Processes
from tests.support import eventually

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TERMINAL = ("FINISHED", "FAILED")
SUM = "echo $(( $(cat /inputs/a) + $(cat /inputs/b) )) > /outputs/sum"


@pytest.fixture(scope="session")
def slow_images(tmp_path_factory: pytest.TempPathFactory) -> dict[int, pathlib.Path]:
    """Saved busybox images that sleep N seconds, then write ``a + b`` to /outputs/sum."""
    require_docker()
    work = tmp_path_factory.mktemp("crash-images")
    saved = {}
    for seconds in (1, 3, 6):
        tag = f"appengine-test/crash-slow{seconds}:1"
        script = f"echo sleeping {seconds}; sleep {seconds}; " + SUM
        build_image(tag, work, cmd=script)
        saved[seconds] = save_image(tag, work / f"slow{seconds}.tar")
    return saved


# --- Docker ---------------------------------------------------------------------------------------


def containers(label: str, value: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}={value}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


async def no_container_left(runs: Iterable[str]) -> None:
    """The executors remove a run's container after its end: wait until none of ``runs`` has one."""
    runs = list(runs)

    async def gone() -> bool:
        return all(containers(LABEL_RUN, run) == [] for run in runs)

    await eventually(gone, within=30, interval=0.5, what=f"no container left of {len(runs)} run(s)")


def remove_containers(label: str, values: Iterable[str]) -> None:
    for value in values:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            found = containers(label, value)
            if found:
                subprocess.run(["docker", "rm", "-f", *found], capture_output=True, timeout=60)


# --- the stack --------------------------------------------------------------------------------------


class Stack:
    """The processes of a test and an HTTP client for their APIs."""

    def __init__(self, processes: Processes, http: aiohttp.ClientSession, executor_ids: list[str]) -> None:
        self.processes = processes
        self.http = http
        self.executor_ids = executor_ids

    def url(self, name: str) -> str:
        return self.processes[name].url + P

    async def register(self, tmp_path: pathlib.Path, image: pathlib.Path, seconds: int) -> str:
        descriptor = add_descriptor(f"com.cytomine.crash.slow{seconds}", f"slow_add_{seconds}")
        bundle = make_bundle(tmp_path / f"slow{seconds}.zip", descriptor, image)
        form = aiohttp.FormData()
        form.add_field("task", bundle.read_bytes(), filename=bundle.name, content_type="application/zip")
        async with self.http.post(f"{self.url('registry')}/tasks", data=form) as resp:
            assert resp.status == 200, await resp.text()
        return f"/tasks/com.cytomine.crash.slow{seconds}/1.0.0"

    async def submit(self, task: str, a: int, b: int) -> str:
        """Create a run, provision a and b, and ask for RUNNING; the run id."""
        async with self.http.post(f"{self.url('scheduler')}{task}/runs") as resp:
            assert resp.status == 200, await resp.text()
            run: str = (await resp.json())["id"]
        for name, value in (("a", a), ("b", b)):
            async with self.http.put(
                f"{self.url('storage')}/task-runs/{run}/input-provisions/{name}",
                json={"parameterName": name, "value": value},
            ) as resp:
                assert resp.status == 200, await resp.text()
        async with self.http.post(
            f"{self.url('scheduler')}/task-runs/{run}/state-actions", json={"desired": "RUNNING"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        return run

    async def states(self) -> dict[str, str]:
        """Every run of the test's schema and its state (the read model, through the API)."""
        async with self.http.get(f"{self.url('scheduler')}/runs", params={"limit": "1000"}) as resp:
            assert resp.status == 200, await resp.text()
            return {item["id"]: item["state"] for item in await resp.json()}

    async def run(self, run: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url('scheduler')}/task-runs/{run}") as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    async def events(self, run: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url('scheduler')}/task-runs/{run}/events") as resp:
            assert resp.status == 200, await resp.text()
            body: list[dict[str, Any]] = await resp.json()
            return body

    async def outputs(self, run: str) -> list[tuple[str, object]]:
        async with self.http.get(f"{self.url('storage')}/task-runs/{run}/outputs") as resp:
            assert resp.status == 200, await resp.text()
            return [(o["parameterName"], o["value"]) for o in await resp.json()]

    async def all_terminal(self, runs: Iterable[str], within: float) -> dict[str, str]:
        wanted = set(runs)
        last: dict[str, str] = {}

        async def probe() -> dict[str, str]:
            nonlocal last
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                last = {r: s for r, s in (await self.states()).items() if r in wanted}
            done = len(last) == len(wanted) and all(s in TERMINAL for s in last.values())
            return last if done else {}

        try:
            return await eventually(probe, within=within, interval=0.5, what="every run terminal")
        except AssertionError as exc:
            counts: dict[str, int] = {}
            for state in last.values():
                counts[state] = counts.get(state, 0) + 1
            raise AssertionError(f"{exc}\nstates: {counts}\n{self.processes.logs()}") from None


@contextlib.asynccontextmanager
async def stack(
    tmp_path: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    executor_ids: list[str],
) -> AsyncIterator[Stack]:
    """Processes of the test; on exit, whatever happened: processes, containers and streams go."""
    env = service_env(schema, subjects, database_url, nats_url, tmp_path / "data")
    processes = Processes(env, tmp_path / "logs")
    passed = False
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            yield Stack(processes, http, executor_ids)
        passed = True
    finally:
        # after a pass, a graceful stop: each process then reports a background task that died
        await processes.close(grace=20 if passed else 5)
        remove_containers(LABEL_EXECUTOR, executor_ids)
        await delete_streams(nats_url, subjects)
    died = [
        (process.name, record)
        for process in processes.services.values()
        for record in process.log_records()
        if record.get("event") == "task.failed"
    ]
    assert not died, f"background tasks died: {died}"


def executor_env(stack: Stack, executor_id: str, **extra: str) -> dict[str, str]:
    return {
        "STORAGE_URL": stack.processes["storage"].url,
        "EXECUTOR_ID": executor_id,
        "EXECUTOR_SLOTS": "2",
        "HEARTBEAT_INTERVAL": "0.5",
        "JOB_ACK_WAIT": "5",
        "STOP_GRACE_SECONDS": "2",
        "WATCH_INTERVAL": "1",
    } | extra


async def start_core(stack: Stack, **scheduler_env: str) -> None:
    """Registry, scheduler and storage; the scheduler first, so it holds the relay lock (its
    death then also moves the relay to another process)."""
    p = stack.processes
    p.add("registry")
    p.add("scheduler", **scheduler_env)
    p.add("storage")
    await p.start("scheduler")
    await p.start("registry", "storage")


def relay_activations(stack: Stack) -> list[str]:
    """Names of the processes whose log says they took the relay lock, in log order per process."""
    return [
        name
        for name, process in stack.processes.services.items()
        for record in process.log_records()
        if record.get("event") == "relay.active"
    ]


def of_type(history: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in history if e["type"] == kind]


def executor_of_last_pending(history: list[dict[str, Any]]) -> str | None:
    pending = of_type(history, "pending")
    return str(pending[-1]["data"]["executor_id"]) if pending else None


async def state_counts(database_url: str, schema: str) -> dict[str, int]:
    """Runs per state straight from the read model (the scheduler may be dead)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f"SELECT state, count(*) AS n FROM {schema}.runs GROUP BY state")
    finally:
        await conn.close()
    return {str(r["state"]): int(r["n"]) for r in rows}


# --- 1. an executor killed mid-run --------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_executor_killed_mid_run_its_runs_are_retried_on_the_other(
    slow_images: dict[int, pathlib.Path],
    tmp_path: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    unique: str,
) -> None:
    require_docker()
    began = time.monotonic()
    one, two = f"crash-{unique}-1", f"crash-{unique}-2"
    async with stack(tmp_path, schema, subjects, database_url, nats_url, [one, two]) as s:
        await start_core(s, WATCHDOG_INTERVAL="0.5", EXECUTOR_TIMEOUT="3")
        s.processes.add("executor-1", "executor", **executor_env(s, one))
        s.processes.add("executor-2", "executor", **executor_env(s, two))
        await s.processes.start("executor-1", "executor-2")
        task = await s.register(tmp_path, slow_images[3], 3)

        expected: dict[str, int] = {}
        for i in range(20):
            a, b = 1000 + i, 7 * i
            expected[await s.submit(task, a, b)] = a + b

        # both executors at work: executor 2 has finished a run and has just started another (its
        # container sleeps 3 s: started under a second ago, it cannot end before the kill)
        finished_on_two: set[str] = set()
        finished_seen: set[str] = set()

        async def running_on_two() -> str | None:
            now = dt.datetime.now(dt.UTC)
            for run, state in (await s.states()).items():
                if state == "FINISHED" and run not in finished_seen:
                    finished_seen.add(run)
                    if executor_of_last_pending(await s.events(run)) == two:
                        finished_on_two.add(run)
                elif state == "RUNNING" and finished_on_two:
                    history = await s.events(run)
                    started = dt.datetime.fromisoformat(str(of_type(history, "started")[-1]["occurred_at"]))
                    if executor_of_last_pending(history) == two and now - started < dt.timedelta(seconds=1):
                        return run
            return None

        victim = await eventually(running_on_two, within=90, interval=0.1, what="a run just started on executor 2")
        s.processes["executor-2"].kill()
        killed_at = time.monotonic()

        final = await s.all_terminal(expected, within=180 - (killed_at - began))
        recovered_in = time.monotonic() - killed_at
        assert set(final.values()) == {"FINISHED"}, final
        for run, total in expected.items():
            assert await s.outputs(run) == [("sum", total)], run

        retried: set[str] = set()
        for run in expected:
            history = await s.events(run)
            executors = [str(e["data"]["executor_id"]) for e in of_type(history, "pending")]
            # the attempt that finished was executor 1's, or executor 2's before it was killed
            assert executors[-1] in (one, two), history
            for event in of_type(history, "retried"):
                assert event["data"]["code"] == "EXECUTOR_LOST", event
                retried.add(run)
            if run in retried:
                # every retry was of an attempt on the killed executor, and the last attempt ran on the live one
                assert executors[:-1] == [two] * (len(executors) - 1), (run, executors)
                assert executors[-1] == one, (run, executors)
                assert (await s.run(run))["attempt"] == len(executors)
            else:
                assert len(executors) == 1, (run, executors)
        assert victim in retried, (victim, retried)
        assert not finished_on_two & retried, "a run executor 2 finished was executed again"

        # the killed executor's containers outlive it: nobody else may touch them
        orphans = containers(LABEL_EXECUTOR, two)
        assert orphans, "the killed executor's containers were removed by someone else"

        histories = {run: await s.events(run) for run in expected}
        # the designed recovery: the same executor id comes back, finds its containers by label,
        # sees their runs are no longer its own, and removes them
        await s.processes["executor-2"].start()

        await no_container_left(expected)
        assert set((await s.states()).values()) == {"FINISHED"}
        # the restart touched no run: it appended nothing to any history
        for run in expected:
            assert await s.events(run) == histories[run], run
        print(
            f"\nexecutor kill: executor 2 had finished {len(finished_on_two)}, {len(retried)} runs retried, "
            f"all 20 terminal {recovered_in:.1f}s after the kill, {len(orphans)} orphaned containers removed, "
            f"test {time.monotonic() - began:.1f}s"
        )


# --- 2. the scheduler killed mid-flight ---------------------------------------------------------


@pytest.mark.timeout(240)
async def test_scheduler_killed_mid_flight_every_run_finishes_once(
    slow_images: dict[int, pathlib.Path],
    tmp_path: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    unique: str,
) -> None:
    require_docker()
    began = time.monotonic()
    one = f"crash-{unique}-1"
    async with stack(tmp_path, schema, subjects, database_url, nats_url, [one]) as s:
        await start_core(s, WATCHDOG_INTERVAL="0.5")
        s.processes.add("executor", **executor_env(s, one))
        await s.processes.start("executor")
        task = await s.register(tmp_path, slow_images[1], 1)

        expected: dict[str, int] = {}
        for i in range(5):
            expected[await s.submit(task, i, 10 * i)] = 11 * i

        async def some_running() -> bool:
            return "RUNNING" in (await s.states()).values()

        await eventually(some_running, within=60, interval=0.1, what="a run RUNNING")
        for i in range(5, 10):
            expected[await s.submit(task, i, 10 * i)] = 11 * i
        assert relay_activations(s) == ["scheduler"], "the scheduler should hold the relay"
        # right after the last state action: runs are QUEUING, QUEUED, PENDING and RUNNING
        s.processes["scheduler"].kill()
        killed_at = time.monotonic()
        at_kill = await state_counts(database_url, schema)
        assert sum(n for state, n in at_kill.items() if state not in TERMINAL) > 0, at_kill

        await asyncio.sleep(1)  # let the executor and the relay carry on without a scheduler
        await s.processes["scheduler"].start(new_port=True)

        final = await s.all_terminal(expected, within=180 - (time.monotonic() - began))
        recovered_in = time.monotonic() - killed_at
        assert set(final.values()) == {"FINISHED"}, final
        for run, total in expected.items():
            assert await s.outputs(run) == [("sum", total)], run
            history = await s.events(run)
            kinds = [e["type"] for e in history]
            # admitted once, dispatched into one execution: redeliveries changed nothing
            for kind in ("requested", "queued", "pending", "started", "finished"):
                assert kinds.count(kind) == 1, (run, kinds)
            assert "retried" not in kinds and "failed" not in kinds, (run, kinds)
        # the relay moved to a surviving process when the scheduler died
        assert set(relay_activations(s)) - {"scheduler"}, relay_activations(s)

        await no_container_left(expected)
        print(
            f"\nscheduler kill: states at the kill {at_kill}, all 10 terminal {recovered_in:.1f}s after the kill, "
            f"test {time.monotonic() - began:.1f}s"
        )


# --- 3. an executor restarted before EXECUTOR_TIMEOUT adopts its run ----------------------------


@pytest.mark.timeout(180)
async def test_executor_restarted_in_time_adopts_its_running_container(
    slow_images: dict[int, pathlib.Path],
    tmp_path: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    unique: str,
) -> None:
    require_docker()
    began = time.monotonic()
    one = f"crash-{unique}-1"
    async with stack(tmp_path, schema, subjects, database_url, nats_url, [one]) as s:
        # a generous timeout: the restart must beat it even on a loaded machine
        await start_core(s, WATCHDOG_INTERVAL="0.5", EXECUTOR_TIMEOUT="30")
        s.processes.add("executor", **executor_env(s, one))
        await s.processes.start("executor")
        task = await s.register(tmp_path, slow_images[6], 6)
        run = await s.submit(task, 20, 22)

        async def running() -> bool:
            return bool((await s.run(run))["state"] == "RUNNING")

        await eventually(running, within=60, interval=0.1, what="the run RUNNING")
        (container,) = containers(LABEL_RUN, run)
        s.processes["executor"].kill()
        killed_at = time.monotonic()
        await s.processes["executor"].start()
        restarted_in = time.monotonic() - killed_at

        await s.all_terminal([run], within=90)
        body = await s.run(run)
        assert body["state"] == "FINISHED" and body["attempt"] == 1, body
        assert await s.outputs(run) == [("sum", 42)]
        kinds = [e["type"] for e in await s.events(run)]
        assert kinds.count("pending") == 1 and kinds.count("started") == 1, kinds
        assert "retried" not in kinds, kinds
        adopted = [r for r in s.processes["executor"].log_records() if r.get("event") == "run.adopting"]
        assert [r.get("run_id") for r in adopted] == [run], adopted
        assert str(adopted[0].get("container", "")) == container[:12]
        # the task's whole log was kept, also what it printed before the executor died
        async with s.http.get(f"{s.url('scheduler')}/task-runs/{run}/logs") as resp:
            assert "sleeping 6" in await resp.text()

        await no_container_left([run])
        print(f"\nexecutor restart: back in {restarted_in:.1f}s, test {time.monotonic() - began:.1f}s")


# --- 4. an executor killed while preparing, restarted after its job went elsewhere -----------


@pytest.fixture
def unloaded_image(tmp_path: pathlib.Path, unique: str) -> Iterator[pathlib.Path]:
    """A saved image of this test's own, removed from the engine: an executor must load it (while
    the run is PENDING) before it can create the run's container."""
    require_docker()
    tag = f"appengine-test/crash-prep-{unique}:1"
    build_image(tag, tmp_path, cmd=f"echo {unique}; sleep 1; " + SUM)
    image = save_image(tag, tmp_path / "prep.tar")
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=True, timeout=60)
    yield image
    # the executor loaded it back
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


@pytest.mark.timeout(180)
async def test_executor_killed_while_preparing_restarted_in_time_hands_its_run_back(
    unloaded_image: pathlib.Path,
    tmp_path: pathlib.Path,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    unique: str,
) -> None:
    require_docker()
    began = time.monotonic()
    one, two = f"crash-{unique}-1", f"crash-{unique}-2"
    async with stack(tmp_path, schema, subjects, database_url, nats_url, [one, two]) as s:
        await start_core(s, WATCHDOG_INTERVAL="0.5", EXECUTOR_TIMEOUT="60")
        # no preloading on task.registered: the image must be loaded while the run is PENDING,
        # which is the window the kill has to land in
        quiet = {"JOB_ACK_WAIT": "3", "PRELOAD_IMAGES": "false"}
        s.processes.add("executor-1", "executor", **executor_env(s, one, **quiet))
        s.processes.add("executor-2", "executor", **executor_env(s, two, **quiet))
        await s.processes.start("executor-2")
        task = await s.register(tmp_path, unloaded_image, 1)
        run = await s.submit(task, 40, 2)

        async def pending() -> bool:
            return bool((await s.run(run))["state"] == "PENDING")

        await eventually(pending, within=60, interval=0.01, what="the run PENDING")
        s.processes["executor-2"].kill()
        if containers(LABEL_RUN, run):
            pytest.skip("killed after the container was created: recovery by label applies")
        # the job, unacknowledged, is redelivered to executor 1, which leaves the run to executor 2
        await s.processes["executor-1"].start()

        async def dropped() -> bool:
            return any(
                r.get("event") == "jobs.done" and r.get("run_id") == run and r.get("outcome") == "moved_on"
                for r in s.processes["executor-1"].log_records()
            )

        await eventually(dropped, within=30, interval=0.2, what="executor 1 dropping the redelivered job")
        # executor 2 comes back well before EXECUTOR_TIMEOUT: the run is its own by the log, no
        # job will come for it and no container stands for it, so recovery must hand it back
        await s.processes["executor-2"].start()
        await s.all_terminal([run], within=30)
        body = await s.run(run)
        assert body["state"] == "FINISHED", body
        assert await s.outputs(run) == [("sum", 42)]
        print(f"\nprepare kill: test {time.monotonic() - began:.1f}s")
