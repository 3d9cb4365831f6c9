"""Benchmark of run execution end to end: the four services as real processes, real Docker.

Run from the repository root::

    .venv/bin/python bench/execution.py            # full: about 6-10 minutes on 2 cores
    .venv/bin/python bench/execution.py --quick    # smoke test: about a minute; exit 1 on any error

It starts ``python -m services.{registry,scheduler,storage,executor}`` on free loopback ports,
with a fresh schema ``bench_<random>``, subject prefix ``bench<random>``, data directory and
executor id (``EXECUTOR_SLOTS=4``), waits for ``/health`` and ``/ready``, builds two busybox
images ``FROM scratch`` (add-integers and a sleeper that traps SIGTERM) and registers them through
the registry API. Then, with baselines measured in the same run on the same machine:

1. **Overhead.** Sequential add-integers runs through the HTTP API: create, provision ``a`` and
   ``b``, ``{"desired": "RUNNING"}``, until the ``finished`` event arrives on a NATS subscription
   to ``<prefix>.run.*.*``. Baseline: the same work straight on Docker with aiodocker (create a
   container from the same image with the same limits and no network, ``put_archive`` the
   inputs, start, wait, ``get_archive`` the outputs, remove). The two alternate, one of each in
   turn, so a change of load on the shared machine hits both. Target: median ratio <= 1.3.
2. **Throughput.** All runs submitted at once (``EXECUTOR_SLOTS=4``), runs/s from the first
   request to the last ``finished`` event. Baseline: the raw Docker runs with at most 4 at once
   (``asyncio.Semaphore(4)``), before and after the system's batch. Target: >= 0.8 of raw.
3. **Latency.** (a) container exit (Docker's ``die`` event) to the ``finished`` event on NATS, over
   the overhead runs (and, under load, the throughput runs); (b) cancel request
   (``POST /task-runs/{id}/cancel`` sent) to SIGTERM delivered (Docker's ``kill`` event with
   signal 15) for a task that traps TERM. Target: p99 <= 1 s.

Where the time goes: every overhead run's events (``GET /task-runs/{id}/events``: ``recorded_at``
of each transition) and Docker's container events (create, start, die, destroy) split its wall
time into stages. CPU time per run of each process (the services, this process, PostgreSQL
backends serving the services, PostgreSQL's others, nats-server, dockerd, containerd and shims)
comes from ``/proc``; the machine may be shared, so the rest of the machine's CPU is reported too.

Everything is cleaned up at the end, also on failure: the processes (SIGTERM, then SIGKILL), the
containers, the schema, the streams and the temporary directory. The images stay, cached by tag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import faulthandler
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import _machine
import aiodocker
import aiohttp
import asyncpg
import msgspec
import nats
import psutil  # type: ignore[import-untyped, unused-ignore]
from _machine import table, verdict
from _stack import ROOT, Stack, call_json, remove_containers
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.executor.runtime import LABEL_EXECUTOR, LABEL_RUN, ContainerSpec

sys.path.insert(0, str(ROOT))
from tests.descriptors import add_descriptor
from tests.images import build_image, make_bundle, save_image

P = "/app-engine/v1"

TARGET_OVERHEAD_RATIO = 1.3  # median end-to-end / raw Docker, at most
TARGET_THROUGHPUT_RATIO = 0.8  # runs/s / raw Docker runs/s at concurrency 4, at least
TARGET_CANCEL_P99 = 1.0  # seconds from the cancel request to SIGTERM, at most

SLOTS = 4
RAM = 64 * 1024**2  # the descriptors' `ram: 64Mi`
NANO_CPUS = 10**9  # the descriptors' `cpus: 1`
PIDS_LIMIT = 1024  # the executor's default PIDS_LIMIT
RAW_LABEL = "org.cytomine.bench.raw"  # the benchmark's own containers (value: the stack token)
RAW_RUN = "org.cytomine.bench.run"
TERMINAL = frozenset({"FINISHED", "FAILED"})
# A run not taken by the executor within this time means its job intake is dead. It happened
# once: nats-py 2.16 can raise the builtin TimeoutError from fetch() at the end of an idle 5 s
# fetch, which ended the intake silently. The intake now catches it, and an ended intake makes
# /health fail and the process exit (shared/service.py, essential_task). The guard stays: the
# benchmark restarts the executor before each phase that uses it and whenever a run stalls,
# measures such a run again, and reports every restart with whether the executor's log showed
# the intake's death.
STALL_SECONDS = 10.0

ADD_SCRIPT = "echo $(( $(cat /inputs/a) + $(cat /inputs/b) )) > /outputs/sum"
# the trap is set before "ready" is printed: once the line is seen, SIGTERM ends the task at once
SLEEP_SCRIPT = "trap 'echo TERM; exit 143' TERM; echo ready; sleep 300 & wait"

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    quick: bool
    overhead_runs: int
    warmup_runs: int
    throughput_runs: int
    raw_batches: int  # raw throughput batches: 1 (before) or 2 (before and after the system's)
    cancels: int
    quiet_patience: float  # before each phase, wait at most this long for the machine to calm down

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 5, 1, 20, 1, 5, 2.0)
        return cls(False, 50, 3, 200, 2, 20, 15.0)


# ---------------------------------------------------------------------------------------------
# statistics and printing


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-1) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# CPU accounting


def _busy(t: Any) -> float:
    """Busy CPU seconds of the whole machine (steal and guest time excluded)."""
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


def containers_cpu() -> float | None:
    """CPU seconds of all containers since boot, from the ``docker`` cgroup (cgroupfs driver)."""
    v1 = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")
    v2 = Path("/sys/fs/cgroup/docker/cpu.stat")
    with contextlib.suppress(OSError, ValueError):
        if v1.exists():
            return int(v1.read_text()) / 1e9
        if v2.exists():
            for line in v2.read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    return None


@dataclass
class CpuSnapshot:
    at: float
    machine: float
    procs: dict[tuple[int, float], tuple[str, float]]  # (pid, create time) -> (group, cpu s)


class CpuMeter:
    """CPU seconds by process group between two snapshots, from ``/proc``.

    PostgreSQL backends are told apart by the client port in their title
    (``postgres: ... 127.0.0.1(PORT) ...``): a backend whose port is one of the services'
    connections counts as ``postgres (services)``; the server's own processes and other
    clients' backends as ``postgres (other)``. Processes that ended between the snapshots
    (e.g. a container's shim or ``runc``) are lost to the per-process figures and show up in
    ``rest of machine``, which is the machine's busy time minus every group.
    """

    GROUPS = (
        "bench",
        "registry",
        "scheduler",
        "storage",
        "executor",
        "postgres (services)",
        "postgres (other)",
        "nats-server",
        "dockerd",
        "dockerd's children (archive re-execs)",
        "containerd + shims",
        "kernel threads",
        "containers (cgroup)",
        "exited shims + runc",
    )

    def __init__(self, service_pids: Callable[[], dict[str, int]]) -> None:
        self._service_pids = service_pids

    def _client_ports(self, pids: Iterable[int]) -> set[int]:
        ports: set[int] = set()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                for c in psutil.Process(pid).net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port == 5432:
                        ports.add(c.laddr.port)
        return ports

    def _group(self, p: Any, services: dict[int, str], ports: set[int]) -> str | None:
        if p.pid == os.getpid():
            return "bench"
        if p.pid in services:
            return services[p.pid]
        name = p.info["name"] or ""
        if name == "postgres":
            title = " ".join(p.info["cmdline"] or [])
            if "(" in title:
                with contextlib.suppress(ValueError):
                    port = int(title.split("(", 1)[1].split(")", 1)[0])
                    if port in ports:
                        return "postgres (services)"
            return "postgres (other)"
        if name == "nats-server":
            return "nats-server"
        if name == "dockerd":
            return "dockerd"
        if name == "containerd" or name.startswith("containerd-shim"):
            return "containerd + shims"
        if p.info["ppid"] == 2:
            return "kernel threads"
        return None

    def snapshot(self) -> CpuSnapshot:
        services = {pid: name for name, pid in self._service_pids().items()}
        ports = self._client_ports(services)
        procs: dict[tuple[int, float], tuple[str, float]] = {}
        for p in psutil.process_iter(["name", "ppid", "cmdline", "create_time", "cpu_times"]):
            group = self._group(p, services, ports)
            times = p.info["cpu_times"]
            if group is None or times is None:
                continue
            procs[(p.pid, p.info["create_time"])] = (group, times.user + times.system)
            if group in ("dockerd", "containerd + shims"):
                # children that ended: dockerd re-executes itself (docker-untar, docker-tar) for
                # every archive copy into or out of a container; containerd starts the shims
                children = times.children_user + times.children_system
                kind = "dockerd's children (archive re-execs)" if group == "dockerd" else group
                procs[(-p.pid, p.info["create_time"])] = (kind, children)
        containers = containers_cpu()
        if containers is not None:
            # a pseudo-process: the cumulative CPU of every container Docker ran (cgroup accounting
            # outlives the removed containers), so the tasks' own CPU and runc's inside them
            procs[(-1, 0.0)] = ("containers (cgroup)", containers)
        with contextlib.suppress(psutil.Error):
            # container shims are orphans reaped by pid 1: their CPU and their children's (runc,
            # the task's processes) lands in pid 1's children times when they exit. Other orphans
            # that end meanwhile land there too.
            init = psutil.Process(1).cpu_times()
            procs[(-2, 0.0)] = ("exited shims + runc", init.children_user + init.children_system)
        return CpuSnapshot(time.monotonic(), _busy(psutil.cpu_times()), procs)

    @staticmethod
    def delta(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
        out = dict.fromkeys(CpuMeter.GROUPS, 0.0)
        for key, (group, cpu) in b.procs.items():
            before = a.procs.get(key)
            out[group] += cpu - (before[1] if before else 0.0)
        # the tasks' processes are the shims' children: counted once, in the cgroup row
        out["exited shims + runc"] = max(0.0, out["exited shims + runc"] - out["containers (cgroup)"])
        out["rest of machine"] = max(0.0, (b.machine - a.machine) - sum(out.values()))
        out["machine"] = b.machine - a.machine
        out["seconds"] = b.at - a.at
        return out


async def quiet(patience: float, cores: float = 0.4) -> float:
    """Wait (at most ``patience`` s) until the machine uses less than ``cores``; the last reading."""
    deadline = time.monotonic() + patience
    while True:
        t0, m0 = time.monotonic(), _busy(psutil.cpu_times())
        await asyncio.sleep(1.0)
        used = (_busy(psutil.cpu_times()) - m0) / (time.monotonic() - t0)
        if used < cores or time.monotonic() >= deadline:
            return used


# ---------------------------------------------------------------------------------------------
# observers: run events on NATS, container events on Docker


_envelope = msgspec.json.Decoder(dict[str, Any])


class Waiters:
    """Futures keyed by anything, resolved once (later waiters get the first value at once)."""

    def __init__(self) -> None:
        self._values: dict[object, Any] = {}
        self._futures: dict[object, list[asyncio.Future[Any]]] = {}

    def resolve(self, key: object, value: Any) -> None:
        if key in self._values:
            return
        self._values[key] = value
        for f in self._futures.pop(key, []):
            if not f.done():
                f.set_result(value)

    async def wait(self, key: object, within: float, what: str) -> Any:
        if key in self._values:
            return self._values[key]
        f: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(key, []).append(f)
        try:
            return await asyncio.wait_for(f, within)
        except TimeoutError:
            raise RuntimeError(f"timed out after {within}s waiting for {what}") from None


class RunWatch:
    """Arrival times (wall clock) of every run event and log line on a core NATS subscription."""

    def __init__(self) -> None:
        self.arrivals: dict[str, dict[str, float]] = {}
        self.ended: dict[str, tuple[str, float]] = {}
        self.waiters = Waiters()

    async def on_event(self, msg: Msg) -> None:
        now = time.time()
        env = _envelope.decode(msg.data)
        run = str(env["aggregate_id"])
        kind = str(env["type"])
        self.arrivals.setdefault(run, {}).setdefault(kind, now)
        self.waiters.resolve((run, kind), now)
        state = env.get("state")
        if state in TERMINAL:
            self.ended[run] = (str(state), now)
            self.waiters.resolve((run, "terminal"), (state, now))

    async def on_log(self, msg: Msg) -> None:
        now = time.time()
        line = _envelope.decode(msg.data)
        self.waiters.resolve((str(line["run_id"]), "log", str(line["line"])), now)

    async def terminal(self, run: str, within: float = 180.0) -> tuple[str, float]:
        state, at = await self.waiters.wait((run, "terminal"), within, f"the end of run {run}")
        return str(state), float(at)


@dataclass
class ContainerLife:
    times: dict[str, float] = field(default_factory=dict)  # action -> Docker's time (first)
    kills: list[tuple[str, float]] = field(default_factory=list)  # (signal, time)
    exit_code: str = ""


class DockerWatch:
    """Docker's container events (``timeNano``) for the stack's and the benchmark's containers."""

    ACTIONS = ("create", "start", "kill", "die", "destroy")

    def __init__(self, docker: aiodocker.Docker, executor_id: str, token: str) -> None:
        self._docker = docker
        self._executor_id = executor_id
        self._token = token
        self.lives: dict[str, ContainerLife] = {}  # run id (or raw run id) -> its container's life
        self.waiters = Waiters()
        self._ready = asyncio.Event()

    async def run(self) -> None:
        filters = json.dumps({"type": ["container"], "event": list(self.ACTIONS)})
        async with self._docker._query(
            "events", params={"filters": filters}, timeout=aiohttp.ClientTimeout()
        ) as response:
            self._ready.set()
            async for raw in response.content:
                if raw.strip():
                    self._on(json.loads(raw))

    async def ready(self) -> None:
        await asyncio.wait_for(self._ready.wait(), 10)

    def _on(self, ev: dict[str, Any]) -> None:
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        if attrs.get(LABEL_EXECUTOR) == self._executor_id:
            run = attrs.get(LABEL_RUN, "")
        elif attrs.get(RAW_LABEL) == self._token:
            run = attrs.get(RAW_RUN, "")
        else:
            return
        action = str(ev.get("Action") or ev.get("status") or "")
        at = int(ev.get("timeNano") or 0) / 1e9 or float(ev.get("time") or 0)
        life = self.lives.setdefault(run, ContainerLife())
        if action == "kill":
            sig = str(attrs.get("signal", ""))
            life.kills.append((sig, at))
            self.waiters.resolve((run, f"kill{sig}"), at)
            return
        life.times.setdefault(action, at)
        if action == "die":
            life.exit_code = str(attrs.get("exitCode", ""))
        self.waiters.resolve((run, action), at)

    async def wait(self, run: str, action: str, within: float = 60.0) -> float:
        return float(await self.waiters.wait((run, action), within, f"Docker event {action} of {run}"))


# ---------------------------------------------------------------------------------------------
# the two ways of running add-integers


@dataclass
class SystemSample:
    run: str
    t0: float  # wall clock: the create request is sent
    submitted: float  # the RUNNING request answered
    end: float  # the terminal event arrived on NATS
    state: str

    @property
    def wall(self) -> float:
        return self.end - self.t0


@dataclass
class RawSample:
    run: str
    t0: float
    end: float
    steps: dict[str, float]

    @property
    def wall(self) -> float:
        return self.end - self.t0


def intake_deaths(log: Path) -> int:
    """How many times the executor's log reports its job intake task failing (logged at shutdown)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if '"executor.jobs"' in line and '"task.failed"' in line)


def inputs_tar(a: int, b: int) -> bytes:
    """``/inputs/{a,b}`` and an empty ``/outputs``, world-writable, to extract at ``/``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("inputs", "outputs"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o777
            tar.addfile(info)
        for name, value in (("a", a), ("b", b)):
            data = str(value).encode()
            info = tarfile.TarInfo(f"inputs/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def put_archive(container: aiodocker.containers.DockerContainer, path: str, data: bytes) -> None:
    await container.put_archive(path, data)  # type: ignore[no-untyped-call]


class Bench:
    def __init__(
        self, stack: Stack, session: aiohttp.ClientSession, docker: aiodocker.Docker, watch: RunWatch, dw: DockerWatch
    ) -> None:
        self.stack = stack
        self.session = session
        self.docker = docker
        self.watch = watch
        self.dw = dw
        self.tasks: dict[str, str] = {}  # short name -> scheduler path of its runs
        self.image_ids: dict[str, str] = {}
        self.restarts: list[tuple[str, int]] = []  # (why, job intake deaths found in the log)
        self.stalled: list[str] = []  # runs measured again because the executor had stopped taking jobs

    # --- setup ---

    async def register(self, short: str, image_tar: Path, workdir: Path) -> None:
        bundle = make_bundle(
            workdir / f"{short}.zip", add_descriptor(f"com.cytomine.bench.{short}", f"bench_{short}"), image_tar
        )
        form = aiohttp.FormData()
        form.add_field("task", bundle.read_bytes(), filename=bundle.name, content_type="application/zip")
        async with self.session.post(f"{self.stack.url('registry')}{P}/tasks", data=form) as resp:
            if resp.status != 200:
                raise RuntimeError(f"registering {short}: {resp.status} {await resp.text()}")
        self.tasks[short] = f"{self.stack.url('scheduler')}{P}/tasks/com.cytomine.bench.{short}/1.0.0/runs"

    # --- through the services ---

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        return await call_json(self.session, method, url, **kwargs)

    async def submit(self, short: str, a: int, b: int) -> str:
        """Create a run, provision both inputs and ask for RUNNING; the run id."""
        created = await self._call("POST", self.tasks[short])
        run = str(created["id"])
        storage = f"{self.stack.url('storage')}{P}/task-runs/{run}/input-provisions"
        for name, value in (("a", a), ("b", b)):
            await self._call("PUT", f"{storage}/{name}", json={"parameterName": name, "value": value})
        await self._call(
            "POST", f"{self.stack.url('scheduler')}{P}/task-runs/{run}/state-actions", json={"desired": "RUNNING"}
        )
        return run

    async def restart_executor(self, why: str) -> None:
        """Restart the executor process; count whether its job intake had died (see STALL_SECONDS)."""
        log = self.stack.services["executor"].log_path
        before = intake_deaths(log)
        await self.stack.restart("executor")
        died = intake_deaths(log) - before
        self.restarts.append((why, died))
        # the restarted executor is idle until the next job; give it its consumer first
        await asyncio.sleep(0.5)

    async def taken(self, run: str) -> bool:
        """Whether the executor took ``run`` (``pending``) within STALL_SECONDS; if not, the
        executor is restarted (which delivers the job to the new process) and False returned."""
        try:
            await self.watch.waiters.wait((run, "pending"), STALL_SECONDS, f"run {run} to be taken")
            return True
        except RuntimeError:
            await self.restart_executor(f"run {run} not taken within {STALL_SECONDS:.0f} s")
            return False

    async def system_run(self, a: int, b: int, *, settle: bool) -> SystemSample:
        while True:
            t0 = time.time()
            run = await self.submit("add", a, b)
            submitted = time.time()
            ok = await self.taken(run)
            state, end = await self.watch.terminal(run)
            if settle:
                # not timed: the executor removes the container after FINISHED; let it finish
                # before the next sample so that samples do not overlap
                await self.dw.wait(run, "destroy", 60)
            if ok:
                return SystemSample(run, t0, submitted, end, state)
            self.stalled.append(run)  # the sample includes a restart: measure again

    async def check_output(self, run: str, expected: int) -> None:
        outputs = await self._call("GET", f"{self.stack.url('storage')}{P}/task-runs/{run}/outputs")
        got = [(o["parameterName"], o["value"]) for o in outputs]
        if got != [("sum", expected)]:
            raise RuntimeError(f"run {run}: outputs {got}, expected sum={expected}")

    async def history(self, run: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self._call(
            "GET", f"{self.stack.url('scheduler')}{P}/task-runs/{run}/events"
        )
        return events

    # --- straight on Docker ---

    async def raw_run(self, a: int, b: int, *, like_executor: bool = False) -> RawSample:
        """add-integers straight on Docker; ``like_executor`` adds the executor's other engine calls
        (a followed log, ``inspect``, the whole log read again) to tell
        their cost from the control plane's."""
        try:
            async with asyncio.timeout(180):
                return await self._raw_run(a, b, like_executor)
        except TimeoutError:
            raise RuntimeError("a raw Docker run took more than 180 s") from None

    async def _raw_run(self, a: int, b: int, like_executor: bool) -> RawSample:
        rid = uuid.uuid4().hex
        spec = ContainerSpec(
            name=f"bench-raw-{rid}",
            image_id=self.image_ids["add"],
            labels={RAW_LABEL: self.stack.token, RAW_RUN: rid},
            nano_cpus=NANO_CPUS,
            memory_bytes=RAM,
            gpus=0,
            internet=False,
            pids_limit=PIDS_LIMIT,
        )
        steps: dict[str, float] = {}
        t0 = time.time()
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            steps[name] = now - mark
            mark = now

        container = await self.docker.containers.create(spec.create_config(), name=spec.name)
        step("create")
        follower: asyncio.Task[None] | None = None
        try:
            await put_archive(container, "/", inputs_tar(a, b))
            step("put_archive")
            await container.start()
            step("start")
            if like_executor:

                async def follow() -> None:
                    async for _ in container.log(stdout=True, stderr=True, follow=True, timestamps=True):
                        pass

                follower = asyncio.create_task(follow())
            result = await container.wait()
            step("wait")
            if like_executor:
                await container.show()
                assert follower is not None
                await asyncio.wait({follower}, timeout=5)
                await container.log(stdout=True, stderr=True, timestamps=True)
                step("inspect + logs")
            tar = await container.get_archive("/outputs")
            member = tar.extractfile("outputs/sum")
            value = int(member.read()) if member is not None else None
            step("get_archive")
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
            await container.delete(force=True, v=True)
            step("remove")
        if result.get("StatusCode") != 0 or value != a + b:
            raise RuntimeError(f"raw run: exit {result}, sum {value}, expected {a + b}")
        return RawSample(rid, t0, time.time(), steps)


# ---------------------------------------------------------------------------------------------
# phases


@dataclass
class Phase:
    name: str
    cpu: dict[str, float]
    runs: int
    others_before: float  # cores used by the machine just before (the stack idle)


async def measured(
    meter: CpuMeter, name: str, runs: int, patience: float, work: Callable[[], Awaitable[T]]
) -> tuple[T, Phase]:
    before = await quiet(patience)
    a = meter.snapshot()
    result = await work()
    b = meter.snapshot()
    return result, Phase(name, CpuMeter.delta(a, b), runs, before)


def print_cpu(phases: Sequence[Phase]) -> None:
    print(
        "CPU ms per run by process. `containers (cgroup)`: the tasks' processes (all containers on the engine); "
        "`exited shims + runc`: pid 1's reaped children, less the tasks (other orphans too); "
        "`rest of machine`: everything else (other users)\n"
    )
    headers = ["process", *(p.name for p in phases)]
    rows = []
    for group in (*CpuMeter.GROUPS, "rest of machine", "machine"):
        rows.append([group, *(f"{p.cpu[group] / p.runs * 1000:,.1f}" for p in phases)])
    rows.append(["cores busy during the phase", *(f"{p.cpu['machine'] / p.cpu['seconds']:.2f}" for p in phases)])
    rows.append(["cores busy just before (stack idle)", *(f"{p.others_before:.2f}" for p in phases)])
    table(headers, rows)


@dataclass
class Report:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        print(f"ERROR: {message}", file=sys.stderr)


# --- HTTP time inside the services (their Prometheus histograms) ---

HttpTimes = dict[tuple[str, str, str], tuple[float, float]]  # (service, method, route) -> (sum s, count)


async def http_times(bench: Bench) -> HttpTimes:
    out: HttpTimes = {}
    for name in bench.stack.services:
        async with bench.session.get(bench.stack.url(name) + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if not line.startswith("appengine_http_request_seconds_"):
                continue
            head, _, value = line.rpartition(" ")
            kind = head.split("{", 1)[0].rsplit("_", 1)[1]
            if kind not in ("sum", "count"):
                continue
            labels = dict(part.split("=", 1) for part in head.split("{", 1)[1].rstrip("}").split('",') if "=" in part)
            key = (name, labels.get("method", "").strip('"'), labels.get("route", "").strip('"'))
            total, count = out.get(key, (0.0, 0.0))
            if kind == "sum":
                total = float(value)
            else:
                count = float(value)
            out[key] = (total, count)
    return out


def print_http(before: HttpTimes, after: HttpTimes, title: str) -> None:
    rows = []
    for key, (total, count) in sorted(after.items()):
        t0, c0 = before.get(key, (0.0, 0.0))
        n = count - c0
        if n <= 0:
            continue
        rows.append([f"{key[0]}: {key[1]} `{key[2]}`", int(n), f"{(total - t0) / n * 1000:.1f}"])
    print(title + "\n")
    table(["service: route", "requests", "mean ms in the handler"], rows)


# --- 1. overhead ---


async def overhead_phase(
    bench: Bench, plan: Plan, meter: CpuMeter, report: Report
) -> tuple[list[SystemSample], list[RawSample], list[Phase]]:
    n = plan.overhead_runs
    print(f"\n## 1. Overhead: {n} sequential runs of each path, the paths taking turns\n")
    await bench.restart_executor("before the overhead phase")
    for i in range(plan.warmup_runs):
        s = await bench.system_run(i, 1, settle=True)
        if s.state != "FINISHED":
            report.fail(f"warm-up run {s.run} ended {s.state}")
        await bench.raw_run(i, 1)
        await bench.raw_run(i, 1, like_executor=True)

    system: list[SystemSample] = []
    raw: list[RawSample] = []
    diag: list[RawSample] = []

    async def rotate() -> None:
        for i in range(n):
            paths = ["system", "raw", "diag"]
            k = i % 3
            for which in paths[k:] + paths[:k]:
                if which == "system":
                    system.append(await bench.system_run(i, 7, settle=True))
                elif which == "raw":
                    raw.append(await bench.raw_run(i, 7))
                else:
                    diag.append(await bench.raw_run(i, 7, like_executor=True))

    http0 = await http_times(bench)
    _, phase = await measured(meter, "overhead: system + raw + diag", n, plan.quiet_patience, rotate)
    http1 = await http_times(bench)
    for i, s in enumerate(system):
        if s.state != "FINISHED":
            report.fail(f"overhead run {s.run} ended {s.state}")
        elif i % 10 == 0:
            await bench.check_output(s.run, i + 7)

    sw = [s.wall for s in system]
    rw = [r.wall for r in raw]
    dw = [r.wall for r in diag]
    ratio = statistics.median(sw) / statistics.median(rw)

    def row(label: str, xs: list[float]) -> list[object]:
        return [
            label,
            len(xs),
            ms(statistics.median(xs)),
            ms(pct(xs, 0.9)),
            ms(min(xs)),
            ms(max(xs)),
            f"{statistics.median(xs) / statistics.median(rw):.2f}",
        ]

    table(
        ["path", "runs", "median ms", "p90 ms", "min ms", "max ms", "median / baseline"],
        [
            row("system: HTTP API → `finished` on NATS", sw),
            row("**baseline**: raw Docker (aiodocker)", rw),
            row("diag: raw Docker + the executor's other engine calls", dw),
        ],
    )
    ok = ratio <= TARGET_OVERHEAD_RATIO
    print(f"median ratio system/raw: {ratio:.2f} (target <= {TARGET_OVERHEAD_RATIO}): {verdict(ok)}")
    print(f"p90 ratio system/raw: {pct(sw, 0.9) / pct(rw, 0.9):.2f}\n")
    report.lines.append(f"overhead median ratio {ratio:.2f} (target <= {TARGET_OVERHEAD_RATIO}): {verdict(ok)}")

    print("Raw Docker paths, time by step (median ms):\n")
    names = list(diag[0].steps)
    table(
        ["path", *names],
        [
            ["baseline", *(ms(statistics.median(r.steps[k] for r in raw)) if k in raw[0].steps else "" for k in names)],
            ["diag", *(ms(statistics.median(r.steps[k] for r in diag)) for k in names)],
        ],
    )
    # medians by stage are robust to the scheduling hiccups of a shared machine, which hit a run
    # spread over five processes more often than one client: their sums compare the critical paths
    raw_steps = sum(statistics.median(r.steps[k] for r in raw) for k in raw[0].steps)
    found = await stages(bench, system)
    sys_steps = sum(statistics.median(found[label]) for label, _, _ in STAGES[:9] if label in found)
    print(
        f"sums of the medians by step: system {ms(sys_steps)} ms (9 stages below), raw {ms(raw_steps)} ms "
        f"(6 steps above), ratio {sys_steps / raw_steps:.2f}\n"
    )
    report.lines.append(f"overhead ratio of the sums of the medians by step {sys_steps / raw_steps:.2f}")
    print_http(http0, http1, "Time inside the services' HTTP handlers during the overhead phase (their /metrics)")
    return system, raw, [phase]


STAGES = [
    ("client: create + provision a, b + RUNNING (4 HTTP requests)", "t0", "requested"),
    ("admission: requested → queued (relay, JetStream, scheduler consumer)", "requested", "queued"),
    ("dispatch: queued → pending (work queue, executor fetch, TakeRun)", "queued", "pending"),
    ("prepare: pending → container created (task, image check, create)", "pending", "d:create"),
    ("prepare: created → `started` (put_archive of the inputs from storage, StartRun)", "d:create", "started"),
    ("start: `started` → container started (engine start)", "started", "d:start"),
    ("task: container start → exit", "d:start", "d:die"),
    ("collect: exit → `finished` (wait, inspect, logs, log blob, outputs to storage)", "d:die", "finished"),
    ("publish: `finished` recorded → arrival on NATS (relay)", "finished", "arrival"),
    ("total: client's first request → `finished` on NATS", "t0", "arrival"),
    ("(after) `finished` → container removed", "finished", "d:destroy"),
    ("(slot) `pending` → container removed", "pending", "d:destroy"),
]
# the hand-offs split at the moment the event arrived on the benchmark's NATS subscription
SPLITS = [
    ("(split) admission: `requested` recorded → on NATS (relay)", "requested", "n:requested"),
    ("(split) admission: `requested` on NATS → `queued` recorded (scheduler)", "n:requested", "queued"),
    ("(split) dispatch: `queued` recorded → on NATS (relay)", "queued", "n:queued"),
    ("(split) dispatch: `queued` on NATS → `pending` recorded (scheduler job, executor)", "n:queued", "pending"),
]


async def run_stages(bench: Bench, s: SystemSample) -> dict[str, float]:
    """One run's stage durations, from its events' ``recorded_at`` and its container's Docker events."""
    marks: dict[str, float] = {"t0": s.t0, "arrival": s.end}
    for ev in await bench.history(s.run):
        marks.setdefault(str(ev["type"]), parse_time(str(ev["recorded_at"])))
    life = bench.dw.lives.get(s.run)
    if life is not None:
        for action, at in life.times.items():
            marks[f"d:{action}"] = at
    for kind, at in bench.watch.arrivals.get(s.run, {}).items():
        marks[f"n:{kind}"] = at
    return {label: marks[b] - marks[a] for label, a, b in STAGES + SPLITS if a in marks and b in marks}


async def stages(bench: Bench, samples: Sequence[SystemSample]) -> dict[str, list[float]]:
    """Each stage's durations over ``samples``."""
    out: dict[str, list[float]] = {}
    for s in samples:
        for label, value in (await run_stages(bench, s)).items():
            out.setdefault(label, []).append(value)
    return out


async def print_slowest(bench: Bench, samples: Sequence[SystemSample], k: int = 5) -> None:
    """The slowest runs, stage by stage (the stages that make a tail)."""
    slow = sorted(samples, key=lambda s: s.wall, reverse=True)[:k]
    per_run = [await run_stages(bench, s) for s in slow]
    short = ["client", "admission", "dispatch", "prepare", "prepare", "start", "task", "collect", "publish"]
    short += ["adm.: relay", "adm.: scheduler", "disp.: relay", "disp.: sched.+exec."]
    labels = [label for label, _, _ in STAGES[:9] + SPLITS]
    heads = [f"{h} ({i})" if short.count(h) > 1 else h for i, h in enumerate(short)]
    print(f"The {k} slowest of these runs, by stage (ms):\n")
    table(
        ["run (wall ms)", *heads],
        [
            [f"{s.run[:8]} ({ms(s.wall)})", *(ms(r.get(label, math.nan)) for label in labels)]
            for s, r in zip(slow, per_run, strict=True)
        ],
    )


def print_stages(found: dict[str, list[float]], title: str) -> None:
    print(title + "\n")
    total = statistics.median(found.get(STAGES[-3][0], [math.nan]))
    rows = []
    for label, _, _ in STAGES + SPLITS:
        xs = found.get(label, [])
        med = statistics.median(xs) if xs else math.nan
        rows.append([label, ms(med), ms(pct(xs, 0.9)), f"{med / total * 100:.0f} %" if "(" not in label[:2] else ""])
    table(["stage", "median ms", "p90 ms", "share of the median total"], rows)


def exit_to_finished(bench: Bench, samples: Sequence[SystemSample]) -> list[float]:
    out = []
    for s in samples:
        life = bench.dw.lives.get(s.run)
        if life is not None and "die" in life.times:
            out.append(s.end - life.times["die"])
    return out


# --- 2. throughput ---


async def throughput_phase(
    bench: Bench, plan: Plan, meter: CpuMeter, report: Report
) -> tuple[list[Phase], list[SystemSample]]:
    n = plan.throughput_runs
    print(f"\n## 2. Throughput: {n} runs submitted at once, EXECUTOR_SLOTS={SLOTS}; raw Docker, concurrency {SLOTS}\n")

    async def raw_batch(like_executor: bool) -> tuple[float, list[RawSample]]:
        gate = asyncio.Semaphore(SLOTS)

        async def one(i: int) -> RawSample:
            async with gate:
                return await bench.raw_run(i, 3, like_executor=like_executor)

        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0), list(done)

    samples: list[SystemSample] = []
    submitted_all = 0.0
    makespan = 0.0
    stalls: list[int] = []

    async def system_batch() -> tuple[float, list[RawSample]]:
        nonlocal submitted_all, makespan
        t0 = time.time()

        async def one(i: int) -> SystemSample:
            s0 = time.time()
            run = await bench.submit("add", i, 3)
            return SystemSample(run, s0, time.time(), 0.0, "")

        subs = await asyncio.gather(*(one(i) for i in range(n)))
        submitted_all = time.time() - t0
        ended = bench.watch.ended
        progress, last_count = time.monotonic(), 0
        while sum(1 for s in subs if s.run in ended) < n:
            await asyncio.sleep(0.2)
            count = sum(1 for s in subs if s.run in ended)
            if count != last_count:
                progress, last_count = time.monotonic(), count
            elif time.monotonic() - progress > 3 * STALL_SECONDS:
                stalls.append(count)
                await bench.restart_executor(f"no run ended for {3 * STALL_SECONDS:.0f} s in the throughput batch")
                progress = time.monotonic()
        for s in subs:
            s.state, s.end = ended[s.run]
            samples.append(s)
        makespan = max(s.end for s in samples) - t0
        # the last containers are removed after FINISHED: wait (untimed) so the next batch starts clean
        for s in samples:
            await bench.dw.wait(s.run, "destroy", 60)
        return n / makespan, []

    batches: list[tuple[str, Callable[[], Awaitable[tuple[float, list[RawSample]]]]]] = [
        ("raw (before)", lambda: raw_batch(False)),
        ("system", system_batch),
    ]
    if not plan.quick:
        batches.append(("diag", lambda: raw_batch(True)))
    if plan.raw_batches > 1:
        batches.append(("raw (after)", lambda: raw_batch(False)))
    phases = []
    rates: dict[str, float] = {}
    raw_samples: dict[str, list[RawSample]] = {}
    for name, batch in batches:
        if name == "system":
            await bench.restart_executor("before the throughput batch")
        (rate, done), ph = await measured(meter, f"throughput: {name}", n, plan.quiet_patience, batch)
        rates[name] = rate
        raw_samples[name] = done
        phases.append(ph)
    if stalls:
        report.fail(f"the executor stopped taking jobs during the throughput batch ({len(stalls)} times)")
    bad = [s for s in samples if s.state != "FINISHED"]
    if bad:
        report.fail(f"{len(bad)} throughput runs did not finish: {[(s.run, s.state) for s in bad[:5]]}")
    raw_rate = statistics.mean(r for k, r in rates.items() if k.startswith("raw"))
    ratio = rates["system"] / raw_rate
    labels = {
        "raw (before)": f"**baseline**: raw Docker, Semaphore({SLOTS}), before",
        "system": f"system: {n} submitted at once, EXECUTOR_SLOTS={SLOTS}",
        "diag": f"diag: raw Docker + the executor's other engine calls, Semaphore({SLOTS})",
        "raw (after)": f"**baseline**: raw Docker, Semaphore({SLOTS}), after",
    }
    table(
        ["path", "runs", "runs/s", "/ mean baseline"],
        [[labels[k], n, f"{r:.2f}", f"{r / raw_rate:.2f}"] for k, r in rates.items()],
    )
    print(f"all {n} submissions answered {submitted_all:.1f} s after the first; last `finished` after {makespan:.1f} s")
    ok = ratio >= TARGET_THROUGHPUT_RATIO
    print(f"ratio system / mean baseline: {ratio:.2f} (target >= {TARGET_THROUGHPUT_RATIO}): {verdict(ok)}\n")
    report.lines.append(f"throughput ratio {ratio:.2f} (target >= {TARGET_THROUGHPUT_RATIO}): {verdict(ok)}")

    found = await stages(bench, samples)
    slot_time = sum(found.get(STAGES[-1][0], []))
    print(
        f"executor slot occupancy (sum of `pending` → container removed over {SLOTS} slots x makespan): "
        f"{slot_time / (SLOTS * makespan) * 100:.0f} %"
    )
    for name, done in raw_samples.items():
        if done:
            inside = statistics.median(r.wall for r in done)
            print(f"{name}: median time of one run inside the semaphore {ms(inside)} ms")
    print()
    print_stages(found, f"Stages of the {n} runs under load (same method as for the sequential runs):")
    return phases, samples


async def cancel_phase(bench: Bench, plan: Plan, report: Report) -> None:
    print(f"\n## 3b. Cancel request → SIGTERM delivered: {plan.cancels} runs of a task trapping TERM\n")
    await bench.restart_executor("before the cancel phase")
    to_kill: list[float] = []
    to_die: list[float] = []
    to_failed: list[float] = []
    answered: list[float] = []
    for i in range(-1, plan.cancels):  # the first one (-1) is a warm-up, not counted
        run = await bench.submit("sleep", i, 0)
        if not await bench.taken(run):
            bench.stalled.append(run)
        await bench.watch.waiters.wait((run, "log", "ready"), 120, f"run {run} to print ready")
        await asyncio.sleep(0.3)  # not timed: the executor's watcher is subscribed by now
        t0 = time.time()
        await bench._call("POST", f"{bench.stack.url('scheduler')}{P}/task-runs/{run}/cancel")
        answer = time.time() - t0
        kill = await bench.dw.wait(run, "kill15", 60)
        die = await bench.dw.wait(run, "die", 60)
        state, end = await bench.watch.terminal(run, 60)
        await bench.dw.wait(run, "destroy", 60)
        if state != "FAILED":
            report.fail(f"cancelled run {run} ended {state}")
        if i < 0:
            continue
        answered.append(answer)
        to_kill.append(kill - t0)
        to_die.append(die - t0)
        to_failed.append(end - t0)
    rows = []
    for label, xs in (
        ("cancel request answered (HTTP 200)", answered),
        ("**cancel request → SIGTERM (Docker `kill` signal 15)**", to_kill),
        ("cancel request → container exit (`die`)", to_die),
        ("cancel request → `failed` on NATS", to_failed),
    ):
        rows.append([label, len(xs), ms(pct(xs, 0.5)), ms(pct(xs, 0.99)), ms(max(xs))])
    table(["interval", "samples", "p50 ms", "p99 ms", "max ms"], rows)
    ok = pct(to_kill, 0.99) <= TARGET_CANCEL_P99
    print(
        f"cancel → SIGTERM p99 {ms(pct(to_kill, 0.99))} ms "
        f"(target <= {TARGET_CANCEL_P99 * 1000:.0f} ms): {verdict(ok)}\n"
    )
    report.lines.append(f"cancel → SIGTERM p99 {ms(pct(to_kill, 0.99))} ms (target <= 1,000 ms): {verdict(ok)}")


# ---------------------------------------------------------------------------------------------
# machine and main


def host_cgroup_version() -> str:
    return "v2 (unified)" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"


async def machine(docker: aiodocker.Docker, database_url: str, nc: NATS) -> None:
    lines = _machine.host_lines()
    info = await docker.system.info()
    version = await docker.version()
    cgroup_fs = host_cgroup_version()
    lines += [
        ("Docker", f"{version.get('Version')} (API {version.get('ApiVersion')}), storage driver {info.get('Driver')}"),
        (
            "cgroups",
            f"Docker: cgroup v{info.get('CgroupVersion')}, {info.get('CgroupDriver')} driver; host: {cgroup_fs}",
        ),
        ("kernel (Docker)", str(info.get("KernelVersion"))),
    ]
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        pg, _ = await _machine.postgres_lines(conn)
    finally:
        await conn.close()
    lines += pg[:1]
    lines.append(("NATS", f"nats-server {nc.connected_server_version}"))
    lines += _machine.code_lines()
    _machine.print_lines("Machine", lines)


def image_id(tag: str) -> str:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


async def main(plan: Plan, database_url: str, nats_url: str) -> int:
    report = Report()
    started = time.monotonic()
    restarts: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench_execution_") as tmp:
        work = Path(tmp)
        stack = Stack(database_url, nats_url, work, executor_slots=SLOTS, stop_grace_seconds=2.0)
        docker = aiodocker.Docker()
        nc = await nats.connect(nats_url, name="bench-execution")
        watcher: asyncio.Task[None] | None = None
        try:
            await machine(docker, database_url, nc)
            print(
                f"\nplan: {'quick' if plan.quick else 'full'}; {plan.overhead_runs} overhead runs of each path "
                f"(+{plan.warmup_runs} warm-up), {plan.throughput_runs} throughput runs, {plan.cancels} cancels; "
                f"schema {stack.schema}, prefix {stack.subjects.prefix}\n"
            )
            # images: built FROM scratch with busybox; `docker build` reuses the cache
            images: dict[str, Path] = {}
            for short, script in (("add", ADD_SCRIPT), ("sleep", SLEEP_SCRIPT)):
                tag = f"appengine-bench/{short}:1"
                await asyncio.to_thread(build_image, tag, work / "images", script)
                images[short] = await asyncio.to_thread(save_image, tag, work / f"{short}.tar")
            t = time.monotonic()
            await stack.start()
            print(f"services started and ready in {time.monotonic() - t:.1f} s: {stack.pids()}")

            watch = RunWatch()
            await nc.subscribe(stack.subjects.run_events(), cb=watch.on_event)
            await nc.subscribe(stack.subjects.logs("*"), cb=watch.on_log)
            dw = DockerWatch(docker, stack.executor_id, stack.token)
            watcher = asyncio.create_task(dw.run(), name="docker-events")
            await dw.ready()
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
                bench = Bench(stack, session, docker, watch, dw)
                for short, tar in images.items():
                    await bench.register(short, tar, work)
                    bench.image_ids[short] = image_id(f"appengine-bench/{short}:1")
                meter = CpuMeter(stack.pids)

                system, _, phases = await overhead_phase(bench, plan, meter, report)
                print_stages(
                    await stages(bench, system),
                    "Where the time of a sequential run goes (`recorded_at` of the run's events, Docker's events):",
                )
                await print_slowest(bench, system)

                tp_phases, tp_samples = await throughput_phase(bench, plan, meter, report)
                phases += tp_phases
                print_cpu(phases)

                print("\n## 3a. Container exit (Docker `die`) → `finished` event on NATS\n")
                seq = exit_to_finished(bench, system)
                loaded = exit_to_finished(bench, tp_samples)
                table(
                    ["runs", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                    [
                        [
                            "overhead runs (sequential)",
                            len(seq),
                            ms(pct(seq, 0.5)),
                            ms(pct(seq, 0.9)),
                            ms(pct(seq, 0.99)),
                            ms(max(seq, default=math.nan)),
                        ],
                        [
                            f"throughput runs ({SLOTS} at once)",
                            len(loaded),
                            ms(pct(loaded, 0.5)),
                            ms(pct(loaded, 0.9)),
                            ms(pct(loaded, 0.99)),
                            ms(max(loaded, default=math.nan)),
                        ],
                    ],
                )
                report.lines.append(
                    f"exit → finished p50 {ms(pct(seq, 0.5))} ms, p99 {ms(pct(seq, 0.99))} ms (sequential)"
                )

                await cancel_phase(bench, plan, report)
                restarts = bench.restarts
        except Exception as exc:
            report.fail(f"{type(exc).__name__}: {exc}")
            for name, service in stack.services.items():
                print(f"--- last lines of {name}'s log:\n{service.log_tail(15)}", file=sys.stderr)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
            await nc.close()
            await stack.close()
            with contextlib.suppress(Exception):
                await remove_containers({RAW_LABEL: stack.token})
            await docker.close()
            executor_log = stack.services["executor"].log_path if "executor" in stack.services else None
            deaths_at_end = intake_deaths(executor_log) - sum(d for _, d in restarts) if executor_log else 0
    print("\nExecutor restarts by the benchmark (the log shows a dead job intake at the restart: died)")
    for why, died in restarts:
        print(f"  {why}: {'DIED' if died else 'alive'}")
    deaths = sum(d for _, d in restarts) + max(0, deaths_at_end)
    print(f"  at the end of the benchmark: {'DIED' if deaths_at_end > 0 else 'alive'}")
    if deaths:
        report.lines.append(
            f"executor job intake found dead {deaths} time(s): Worker.run does not catch the builtin TimeoutError "
            "that nats-py's fetch() raises (services/executor/consumers.py)"
        )
    print("\nSummary")
    for line in report.lines:
        print(f"  {line}")
    print(f"  took {time.monotonic() - started:.0f} s; {'no errors' if report.ok else 'ERRORS (see above)'}")
    return 0 if report.ok else 1


def dump_tasks() -> None:
    """On SIGUSR2: where every asyncio task of the benchmark is waiting (SIGUSR1: the threads)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)


async def guarded(plan: Plan, database_url: str, nats_url: str) -> int:
    """:func:`main` with SIGTERM and SIGINT cancelling it, so that its clean-up still runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return await main(plan, database_url, nats_url)
    except asyncio.CancelledError:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    _machine.add_server_options(parser)
    args = parser.parse_args()
    return asyncio.run(guarded(Plan.make(args.quick), args.database_url, args.nats_url))


if __name__ == "__main__":
    sys.exit(cli())
