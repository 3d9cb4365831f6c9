"""Benchmark of the run log: append throughput with fsync on, and commit-to-visible latency.

Run from the repository root::

    .venv/bin/python bench/runlog.py            # full: 8-10 minutes (less on a quiet machine)
    .venv/bin/python bench/runlog.py --quick    # smoke test: 15-30 seconds; exit 1 if events are lost
    .venv/bin/python bench/runlog.py --part latency   # one part only (also: --part throughput)

It needs PostgreSQL and NATS with JetStream (``--database-url``/``--nats-url``, defaults from
``BENCH_DATABASE_URL``/``TEST_DATABASE_URL`` and ``BENCH_NATS_URL``/``TEST_NATS_URL``, else the
local servers). It works in its own schemas ``bench_<random>[_lat]`` and subject prefix
``bench<random>`` and drops them when done, also on failure.

1. Throughput: writers append the ten events of a run's life (created, two inputs,
   provisioned, requested, queued, pending, started, outputs collected, finished) through
   :meth:`RunLog.append` (so :meth:`EventStore.append` with the run read-model upsert, as the
   services do, ``on_commit`` waking the relay over core NATS), either one event per append or
   all ten in one append. Each writer has its own connection and its own runs. Same-run
   baseline: a plain one-row ``INSERT`` of the same JSON into a bare table with one JSONB
   column, with as many connections. Diagnostics (full mode): the baseline and the appends with
   a ``pg_notify`` in the statement, as the append was before commit 0d6030b, to show what the
   notification costs. The machine may be shared: before each measurement the benchmark
   waits (a while, not forever) for the rest of the machine to go quiet, and it reports the CPU
   used by itself, PostgreSQL, NATS and everything else, and what the backends waited on
   (``pg_stat_activity`` sampled every 20 ms).
2. Commit-to-visible latency: a :class:`Relay` in a child process drains the outbox to
   JetStream; this process appends single events at a steady rate and an ordered push consumer
   on the run events subject records when each event arrives (matched by the ``id`` of the
   message JSON). Latency = arrival minus the moment the append returned. Same-run baseline:
   ``js.publish`` of the same messages straight to the stream, no database. The relay child
   times its drain rounds (outbox SELECT, publishes, outbox DELETE) and reports them.
   Diagnostic (full mode): the same relay woken by ``LISTEN`` on the ``pg_notify`` of the old
   append statement instead, back to back, to compare the two wake-ups under the same load.

Targets printed next to the figures: >= 5,000 events/s with 16 writers; commit-to-visible
p50 <= 5 ms and p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import math
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import _machine
import asyncpg
import msgspec
import nats
import psutil  # type: ignore[import-untyped, unused-ignore]
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.contracts import Subjects
from shared.domain.events import (
    InputKind,
    InputProvisioned,
    OutputRecord,
    OutputsCollected,
    RunCreated,
    RunEvent,
    RunFinished,
    RunPending,
    RunProvisioned,
    RunQueued,
    RunRequested,
    RunStarted,
    event_tag,
)
from shared.domain.state import RunState, initial_state
from shared.runlog.relay import Relay
from shared.runlog.runs import RunLog
from shared.runlog.schema import migrate
from shared.runlog.store import EventStore, OnCommit, StoredEvent, keep_session

APP = "bench_runlog"  # application_name of the benchmark's connections (the relay's: bench_runlog_relay)
TARGET_EVENTS_PER_S = 5000.0  # with 16 writers
TARGET_P50_MS = 5.0
TARGET_P99_MS = 50.0

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Settings:
    quick: bool
    database_url: str
    nats_url: str
    rounds: int
    seconds: float  # measured time of one throughput configuration
    warmup: float
    writer_counts: tuple[int, ...]
    diagnostics: bool
    rate: float  # events/s of the latency test
    latency_seconds: float
    lanes: int  # concurrent appenders of the latency test
    quiet_cores: float = 0.3  # before each measurement, wait for the rest of the machine to use less
    quiet_patience: float = 10.0  # ... but no longer than this
    latency_patience: float = 60.0  # the same before each latency measurement
    part: str = "all"  # "throughput", "latency" or both

    @classmethod
    def make(cls, quick: bool, database_url: str, nats_url: str) -> Settings:
        if quick:
            return cls(
                quick,
                database_url,
                nats_url,
                rounds=1,
                seconds=1.0,
                warmup=0.3,
                writer_counts=(1, 16),
                diagnostics=False,
                rate=200.0,
                latency_seconds=2.0,
                lanes=8,
                quiet_patience=2.0,
                latency_patience=2.0,
            )
        return cls(
            quick,
            database_url,
            nats_url,
            rounds=5,
            seconds=4.0,
            warmup=0.5,
            writer_counts=(1, 16),
            diagnostics=True,
            rate=300.0,
            latency_seconds=10.0,
            lanes=8,
        )


# ---------------------------------------------------------------------------------------------
# Realistic run events


def run_life(now: dt.datetime) -> list[RunEvent]:
    """The ten events of a successful run with two inputs, as the services would decide them.

    Each event happens a second after the previous one: like real ones, successive appends
    change ``updated_at`` (an indexed column of the runs read model, so no update is HOT).
    """
    t = [now + dt.timedelta(seconds=i) for i in range(10)]
    hour = dt.timedelta(hours=1)
    return [
        RunCreated(
            task_id=uuid.uuid4(),
            task_namespace="com.cytomine.app-engine.tasks.nuclei-segmentation",
            task_version="1.4.2",
            required_inputs=("image", "threshold"),
            optional_inputs=("model",),
            time_limit_seconds=3600.0,
            created_at=t[0],
        ),
        InputProvisioned(
            parameter="image", kind=InputKind.FILE, size=52_428_800, checksum="sha256:" + uuid.uuid4().hex * 2, at=t[1]
        ),
        InputProvisioned(parameter="threshold", kind=InputKind.VALUE, size=4, at=t[2]),
        RunProvisioned(at=t[3]),
        RunRequested(at=t[4]),
        RunQueued(at=t[5], queue_deadline=t[5] + hour),
        RunPending(executor_id="executor-7f3a", attempt=1, at=t[6]),
        RunStarted(container_id=uuid.uuid4().hex * 2, at=t[7], deadline=t[7] + hour),
        OutputsCollected(
            outputs=(OutputRecord(parameter="mask", size=1_048_576, checksum="sha256:" + uuid.uuid4().hex * 2),),
            at=t[8],
        ),
        RunFinished(at=t[9]),
    ]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RunCursor:
    """One writer's runs: the next event(s) of the current run, starting a new run when done."""

    def __init__(self) -> None:
        self._new_run()

    def _new_run(self) -> None:
        self.state: RunState = initial_state(uuid.uuid4())
        self._events = run_life(utcnow())
        self._next = 0

    def take(self, n: int) -> tuple[RunState, list[RunEvent]]:
        if self._next >= len(self._events):
            self._new_run()
        events = self._events[self._next : self._next + n]
        self._next += len(events)
        return self.state, events

    def advance(self, state: RunState) -> None:
        self.state = state


# ---------------------------------------------------------------------------------------------
# Measurement helpers


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


CORES = psutil.cpu_count() or 1


async def wait_quiet(max_cores: float, patience: float) -> float:
    """Wait up to ``patience`` s until the rest of the machine uses under ``max_cores`` cores over
    half a second (the machine is shared: other people's tests skew figures). Returns the last
    measured use."""
    deadline = time.perf_counter() + patience
    while True:
        start = CpuSample.take(pg_pids=frozenset())  # no PostgreSQL process is ours while we wait
        await asyncio.sleep(0.5)
        use = cpu_since(start)
        if use.others < max_cores or time.perf_counter() >= deadline:
            return use.others


def _proc_cpu(names: tuple[str, ...]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] in names:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _machine_times() -> dict[str, float]:
    # on Linux guest time is already counted in user time
    return {k: v for k, v in psutil.cpu_times()._asdict().items() if k not in ("guest", "guest_nice")}


@dataclass
class CpuSample:
    """CPU use over an interval: this process, local PostgreSQL and NATS servers, the machine."""

    wall: float = field(default_factory=time.perf_counter)
    own: float = field(default_factory=time.process_time)
    machine: dict[str, float] = field(default_factory=_machine_times)
    postgres: dict[int, float] = field(default_factory=lambda: _proc_cpu(("postgres",)))
    nats: dict[int, float] = field(default_factory=lambda: _proc_cpu(("nats-server",)))
    relay: dict[int, float] = field(default_factory=dict)  # the relay child, in the latency test
    # the PostgreSQL processes counted as ours (None: all); the others count as "others"
    pg_pids: frozenset[int] | None = None

    @classmethod
    def take(cls, relay_pid: int | None = None, pg_pids: frozenset[int] | None = None) -> CpuSample:
        sample = cls(pg_pids=pg_pids)
        if relay_pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = psutil.Process(relay_pid).cpu_times()
                sample.relay[relay_pid] = t.user + t.system
        return sample


@dataclass(frozen=True)
class CpuUse:
    client: float  # cores used by this process
    postgres: float
    nats: float
    relay: float
    busy: float  # fraction of the machine's CPU time busy (not idle, not iowait)
    iowait: float

    @property
    def others(self) -> float:
        """Cores used by everything else on the machine (the machine is shared)."""
        ours = self.client + self.postgres + self.nats + self.relay
        return max(0.0, self.busy * CORES - ours)

    def short(self) -> str:
        relay = f", relay {self.relay:.2f}" if self.relay else ""
        return (
            f"client {self.client:.2f}, postgres {self.postgres:.2f}, nats {self.nats:.2f}{relay}, "
            f"others {self.others:.2f} cores; machine {self.busy:.0%} busy, {self.iowait:.0%} iowait"
        )


def _delta(end: dict[int, float], start: dict[int, float], only: frozenset[int] | None = None) -> float:
    return sum(v - start.get(pid, 0.0) for pid, v in end.items() if only is None or pid in only)


async def our_pg_pids(conn: asyncpg.Connection | asyncpg.Pool) -> frozenset[int]:
    """The backends of this benchmark (and its relay) plus PostgreSQL's background processes."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 OR backend_type <> 'client backend'",
        f"{APP}%",
    )
    return frozenset(r["pid"] for r in rows)


def cpu_since(start: CpuSample) -> CpuUse:
    end = CpuSample.take(next(iter(start.relay), None), start.pg_pids)
    wall = max(end.wall - start.wall, 1e-9)
    t0, t1 = start.machine, end.machine
    total = sum(t1.values()) - sum(t0.values())
    idle = t1["idle"] - t0["idle"]
    iowait = t1.get("iowait", 0.0) - t0.get("iowait", 0.0)
    return CpuUse(
        client=(end.own - start.own) / wall,
        postgres=_delta(end.postgres, start.postgres, start.pg_pids) / wall,
        nats=_delta(end.nats, start.nats) / wall,
        relay=_delta(end.relay, start.relay) / wall,
        busy=1.0 - (idle + iowait) / total if total > 0 else 0.0,
        iowait=iowait / total if total > 0 else 0.0,
    )


# ---------------------------------------------------------------------------------------------
# 1. Throughput


@dataclass(frozen=True)
class Throughput:
    config: str
    writers: int
    appends: int
    events: int
    seconds: float
    latencies: list[float]  # seconds per append
    cpu: CpuUse
    waits: dict[str, int]  # what the writers' backends were doing, sampled: "CPU" or a wait event
    others_before: float  # cores the rest of the machine used just before

    def top_waits(self, n: int = 3) -> str:
        total = sum(self.waits.values()) or 1
        ranked = sorted(self.waits.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {v / total:.0%}" for k, v in ranked)

    @property
    def appends_per_s(self) -> float:
        return self.appends / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


Op = Callable[[int], Awaitable[int]]  # writer index -> events written by one statement


_WAITS = (
    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w, count(*) AS n "
    "FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' GROUP BY 1"
)


async def measure(
    config: str,
    writers: int,
    make_op: Callable[[int], Op],
    s: Settings,
    watch: asyncpg.Connection,
) -> Throughput:
    """Run ``writers`` closed-loop writers for warm-up + ``s.seconds``; count the measured part.

    Meanwhile ``watch`` samples the wait events of the writers' backends every 20 ms ("CPU":
    active without a wait event, so running or waiting for a core).
    """
    others_before = await wait_quiet(s.quiet_cores, s.quiet_patience)
    start = time.perf_counter()
    measure_from = start + s.warmup
    stop_at = measure_from + s.seconds
    counts = [[0, 0] for _ in range(writers)]
    latencies: list[float] = []
    cpu_start: list[CpuSample] = []

    async def writer(i: int) -> None:
        op = make_op(i)
        while True:
            t = time.perf_counter()
            if t >= stop_at:
                return
            n = await op(i)
            done = time.perf_counter()
            if t >= measure_from:
                counts[i][0] += 1
                counts[i][1] += n
                latencies.append(done - t)

    waits: dict[str, int] = {}

    async def sampler() -> None:
        await asyncio.sleep(s.warmup)
        cpu_start.append(CpuSample.take(pg_pids=await our_pg_pids(watch)))
        while time.perf_counter() < stop_at:
            for r in await watch.fetch(_WAITS, APP):
                waits[r["w"]] = waits.get(r["w"], 0) + r["n"]
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
    await asyncio.gather(sampler(), *tasks)
    end = time.perf_counter()
    cpu = cpu_since(cpu_start[0])
    return Throughput(
        config=config,
        writers=writers,
        appends=sum(c[0] for c in counts),
        events=sum(c[1] for c in counts),
        seconds=end - measure_from,
        latencies=latencies,
        cpu=cpu,
        waits=waits,
        others_before=others_before,
    )


def runlog_op(runlog: RunLog, batch: int) -> Callable[[int], Op]:
    def make(_: int) -> Op:
        cursor = RunCursor()

        async def op(_: int) -> int:
            state, events = cursor.take(batch)
            new_state, stored = await runlog.append(state, events)
            cursor.advance(new_state)
            return len(stored)

        return op

    return make


def insert_op(pool: asyncpg.Pool, sql: str, payload: str) -> Callable[[int], Op]:
    def make(_: int) -> Op:
        async def op(_: int) -> int:
            await pool.execute(sql, payload)
            return 1

        return op

    return make


_RETURNING = "SELECT position, seq, recorded_at FROM ev ORDER BY seq"


def store_with_notify(pool: asyncpg.Pool, schema: str) -> EventStore | None:
    """The event store as it was before commit 0d6030b, with a ``pg_notify`` in the append
    statement and no wake-up over NATS (diagnostic); None if the statement is not recognised."""
    store = EventStore(pool, schema)
    if _RETURNING not in store._sql_append_run:
        return None
    notify = f"SELECT position, seq, recorded_at, (SELECT pg_notify('{schema}_events', '')) AS n FROM ev ORDER BY seq"
    store._sql_append = store._sql_append.replace(_RETURNING, notify)
    store._sql_append_run = store._sql_append_run.replace(_RETURNING, notify)
    return store


def wake_relay(nc: NATS, subject: str) -> OnCommit:
    """What the services give ``EventStore`` as ``on_commit``: an empty core NATS message."""

    async def wake() -> None:
        await nc.publish(subject, b"")

    return wake


BASELINE = "baseline: INSERT 1 row (JSONB)"
SINGLE = "RunLog.append, 1 event/append"
BATCH = "RunLog.append, 10 events/append"
BASELINE_NOTIFY = "diag: baseline + pg_notify"
SINGLE_NOTIFY = "diag: 1 event/append, pg_notify (old)"
BATCH_NOTIFY = "diag: 10 events/append, pg_notify (old)"
SINGLE_DEFAULT_RESET = "diag: 1 event/append, asyncpg pool reset (old)"
CONFIGS = (BASELINE, SINGLE, BATCH, BASELINE_NOTIFY, SINGLE_NOTIFY, BATCH_NOTIFY, SINGLE_DEFAULT_RESET)


_TABLE_STATS = """
    SELECT c.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd,
           (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes
    FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE s.schemaname = $1 AND c.relname IN ('events', 'outbox', 'runs') ORDER BY 1
"""


async def table_stats(database_url: str, schema: str) -> list[str]:
    """Rows written per table of the run log and how many updates were HOT (no index writes)."""
    await asyncio.sleep(0.6)  # backends flush their statistics when they close, at most each second
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_TABLE_STATS, schema)
    finally:
        await conn.close()
    return [
        f"{r['relname']}: {r['indexes']} indexes, {r['n_tup_ins']:,} inserts, {r['n_tup_upd']:,} updates "
        f"of which {r['n_tup_hot_upd']:,} HOT"
        for r in rows
    ]


async def throughput(s: Settings, schema: str, prefix: str) -> list[Throughput]:
    conn = await asyncpg.connect(s.database_url)
    try:
        await migrate(conn, schema)
        await conn.execute(f"CREATE TABLE {schema}.baseline (doc JSONB)")
    finally:
        await conn.close()
    payload = _encoder.encode(run_life(utcnow())[0]).decode()
    insert_sql = f"INSERT INTO {schema}.baseline (doc) VALUES ($1::jsonb)"
    insert_notify_sql = (
        f"WITH i AS (INSERT INTO {schema}.baseline (doc) VALUES ($1::jsonb)) SELECT pg_notify('{schema}_baseline', '')"
    )
    results: list[Throughput] = []
    pools: dict[int, asyncpg.Pool] = {}
    default_reset_pools: dict[int, asyncpg.Pool] = {}
    watch: asyncpg.Connection | None = None
    # appends wake the relay as in the services (nobody listens here: no relay in this test)
    nc: NATS = await nats.connect(s.nats_url)
    wake_subject = Subjects(prefix=prefix).outbox_wake(schema)
    try:
        for n in s.writer_counts:
            pool = await asyncpg.create_pool(
                s.database_url,
                min_size=n,
                max_size=n,
                max_queries=2**40,  # never replace a connection: its backend's CPU is measured by pid
                reset=keep_session,  # as the services configure their pools
                server_settings={"application_name": APP},
            )
            assert pool is not None
            pools[n] = pool
            if s.diagnostics:
                # asyncpg's default reset: one more round trip on every release (before keep_session)
                old_pool = await asyncpg.create_pool(
                    s.database_url, min_size=n, max_size=n, max_queries=2**40, server_settings={"application_name": APP}
                )
                assert old_pool is not None
                default_reset_pools[n] = old_pool
        watch = await asyncpg.connect(s.database_url, server_settings={"application_name": "bench_watch"})
        for rnd in range(s.rounds):
            for n in s.writer_counts:
                pool = pools[n]
                runlog = RunLog(EventStore(pool, schema, on_commit=wake_relay(nc, wake_subject)))
                configs: list[tuple[str, Callable[[int], Op]]] = [
                    (BASELINE, insert_op(pool, insert_sql, payload)),
                    (SINGLE, runlog_op(runlog, 1)),
                    (BATCH, runlog_op(runlog, 10)),
                ]
                old = store_with_notify(pool, schema) if s.diagnostics else None
                if s.diagnostics:
                    configs.append((BASELINE_NOTIFY, insert_op(pool, insert_notify_sql, payload)))
                if old is not None:
                    configs.append((SINGLE_NOTIFY, runlog_op(RunLog(old), 1)))
                    configs.append((BATCH_NOTIFY, runlog_op(RunLog(old), 10)))
                if n in default_reset_pools:
                    reset_store = EventStore(default_reset_pools[n], schema, on_commit=wake_relay(nc, wake_subject))
                    configs.append((SINGLE_DEFAULT_RESET, runlog_op(RunLog(reset_store), 1)))
                for name, make_op in configs:
                    r = await measure(name, n, make_op, s, watch)
                    results.append(r)
                    print(
                        f"  round {rnd + 1}/{s.rounds} {name:<38} writers {n:>2}: "
                        f"{r.appends_per_s:>8,.0f} appends/s {r.events_per_s:>8,.0f} events/s  "
                        f"[{r.cpu.short()}] [waits: {r.top_waits()}]",
                        flush=True,
                    )
    finally:
        if watch is not None:
            await watch.close()
        for pool in (*pools.values(), *default_reset_pools.values()):
            await pool.close()
        await nc.drain()
    return results


# ---------------------------------------------------------------------------------------------
# 2. Commit-to-visible latency


class _EventId(msgspec.Struct):
    id: str


@dataclass
class Latency:
    name: str
    sent: dict[str, float] = field(default_factory=dict)  # id -> reference time (commit / ack)
    started: dict[str, float] = field(default_factory=dict)  # id -> when the call began
    received: dict[str, float] = field(default_factory=dict)
    cpu: CpuUse | None = None

    def latencies_ms(self, since_start: bool = False) -> list[float]:
        ref = self.started if since_start else self.sent
        return [(self.received[k] - ref[k]) * 1000 for k in ref if k in self.received]

    @property
    def missing(self) -> int:
        return sum(1 for k in self.sent if k not in self.received)


async def steady(rate: float, seconds: float, lanes: int, op: Callable[[int], Awaitable[None]]) -> None:
    """Call ``op(lane)`` ``rate`` times a second in all, lane by lane, for ``seconds``.

    Lane ``i`` runs its calls one after another at times ``t0 + (k * lanes + i) / rate``; a call
    that returns late delays only its own lane.
    """
    t0 = time.perf_counter() + 0.05
    end = t0 + seconds

    async def lane(i: int) -> None:
        k = 0
        while True:
            at = t0 + (k * lanes + i) / rate
            if at >= end:
                return
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await op(i)
            k += 1

    await asyncio.gather(*(lane(i) for i in range(lanes)))


async def wait_received(result: Latency, patience: float) -> None:
    """Give the consumer up to ``patience`` seconds to receive every message sent."""
    deadline = time.perf_counter() + patience
    while result.missing and time.perf_counter() < deadline:  # noqa: ASYNC110 (polls a dict)
        await asyncio.sleep(0.05)


SCRIPT = os.path.abspath(__file__)


async def start_relay_child(s: Settings, schema: str, prefix: str, wake: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--database-url",
        s.database_url,
        "--nats-url",
        s.nats_url,
        "--relay-child",
        schema,
        prefix,
        wake,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        line = b""
    if line.strip() != b"READY":
        proc.kill()
        _, err = await proc.communicate()
        raise RuntimeError(f"relay child did not start: {line!r} {err.decode(errors='replace')[-2000:]}")
    return proc


async def stop_child(proc: asyncio.subprocess.Process) -> tuple[RelayStats | None, str]:
    """Stop the relay child; returns its statistics and its stderr (its log)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    stats = None
    lines = out.decode(errors="replace").strip().splitlines()
    if lines:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            stats = msgspec.json.decode(lines[-1], type=RelayStats)
    return stats, err.decode(errors="replace")


@dataclass
class LatencyRun:
    relay: Latency
    direct: Latency
    append_ms: list[float]
    relay_stats: RelayStats | None
    relay_log: str
    notify: Latency  # diagnostic: the relay woken by NOTIFY as before commit 0d6030b (full mode)
    notify_stats: RelayStats | None


async def latency(s: Settings, schema: str, prefix: str) -> LatencyRun:
    subjects = Subjects(prefix=prefix)
    nc: NATS = await nats.connect(s.nats_url)
    js: JetStreamContext = nc.jetstream()
    pool = await asyncpg.create_pool(
        s.database_url,
        min_size=s.lanes,
        max_size=s.lanes,
        max_queries=2**40,
        server_settings={"application_name": APP},
    )
    assert pool is not None
    decoder = msgspec.json.Decoder(_EventId)
    relay_result = Latency("relay")
    notify_result = Latency("relay woken by NOTIFY")
    direct_result = Latency("direct")
    current = [direct_result]
    child_log = ""
    stats: RelayStats | None = None
    notify_stats: RelayStats | None = None
    append_ms: list[float] = []
    try:
        conn = await asyncpg.connect(s.database_url)
        try:
            await migrate(conn, schema)
        finally:
            await conn.close()
        await js.add_stream(subjects.events_stream_config())

        async def on_msg(msg: Msg) -> None:
            t = time.perf_counter()
            current[0].received[decoder.decode(msg.data).id] = t

        sub = await js.subscribe(subjects.run_events(), cb=on_msg, ordered_consumer=True)

        # baseline: the same messages published straight to JetStream
        cursors = [RunCursor() for _ in range(s.lanes)]

        async def publish(i: int) -> None:
            state, events = cursors[i].take(1)
            event = events[0]
            now = utcnow()
            stored = StoredEvent(
                id=uuid.uuid4(),
                aggregate="run",
                aggregate_id=state.run_id,
                seq=state.version + 1,
                position=0,
                type=event_tag(event),
                occurred_at=now,
                recorded_at=now,
                state=None,
                data=msgspec.Raw(_encoder.encode(event)),
            )
            key = str(stored.id)
            t = time.perf_counter()
            direct_result.started[key] = t
            await js.publish(
                subjects.event("run", state.run_id, stored.type), _encoder.encode(stored), headers={"Nats-Msg-Id": key}
            )
            direct_result.sent[key] = time.perf_counter()
            cursors[i].advance(msgspec.structs.replace(state, version=state.version + 1))

        await wait_quiet(s.quiet_cores, s.latency_patience)
        cpu0 = CpuSample.take(pg_pids=await our_pg_pids(pool))
        await steady(s.rate, s.latency_seconds, s.lanes, publish)
        await wait_received(direct_result, 10)
        direct_result.cpu = cpu_since(cpu0)

        async def relay_phase(mode: str, result: Latency) -> tuple[RelayStats | None, str, list[float]]:
            """Append at the steady rate with a relay child woken by ``mode``; consume."""
            durations: list[float] = []
            if mode == "nats":
                store: EventStore | None = EventStore(
                    pool, schema, on_commit=wake_relay(nc, subjects.outbox_wake(schema))
                )
            else:
                store = store_with_notify(pool, schema)
            if store is None:
                return None, "", durations
            runlog = RunLog(store)
            cursors = [RunCursor() for _ in range(s.lanes)]

            async def append(i: int) -> None:
                state, events = cursors[i].take(1)
                t = time.perf_counter()
                new_state, stored = await runlog.append(state, events)
                done = time.perf_counter()
                cursors[i].advance(new_state)
                durations.append((done - t) * 1000)
                for e in stored:
                    result.started[str(e.id)] = t
                    result.sent[str(e.id)] = done

            child = await start_relay_child(s, schema, prefix, mode)
            try:
                current[0] = result
                await wait_quiet(s.quiet_cores, s.latency_patience)
                cpu0 = CpuSample.take(child.pid, await our_pg_pids(pool))
                await steady(s.rate, s.latency_seconds, s.lanes, append)
                await wait_received(result, 10)
                result.cpu = cpu_since(cpu0)
            finally:
                child_stats, log = await stop_child(child)
            return child_stats, log, durations

        # the run log as the services run it: relay in a child process, woken over NATS
        stats, child_log, append_ms = await relay_phase("nats", relay_result)
        if s.diagnostics:
            # the same with the wake-up of before commit 0d6030b: pg_notify in the append, LISTEN
            notify_stats, _, _ = await relay_phase("notify", notify_result)
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(subjects.events_stream)
        await pool.close()
        await nc.drain()
    return LatencyRun(relay_result, direct_result, append_ms, stats, child_log, notify_result, notify_stats)


class RelayStats(msgspec.Struct):
    """What the relay child did, timed (printed as JSON on its stdout when it stops)."""

    rounds: list[tuple[int, float]] = msgspec.field(default_factory=list)  # (events, seconds)
    # the batch statement: deletes the previous batch's confirmed positions and reads the next
    selects: list[float] = msgspec.field(default_factory=list)  # seconds
    # a DELETE of its own: only the courtesy delete when a relay session ends (since 7f975db)
    deletes: list[float] = msgspec.field(default_factory=list)  # seconds
    empty_rounds: int = 0  # woken, found nothing to publish
    cpu_seconds: float = 0.0


class _TimedConn:
    """Forwards ``fetch`` and ``execute`` of the relay's connection, timing them."""

    def __init__(self, conn: asyncpg.Connection, stats: RelayStats) -> None:
        self._conn = conn
        self._stats = stats

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        t = time.perf_counter()
        try:
            return await self._conn.fetch(query, *args)
        finally:
            self._stats.selects.append(time.perf_counter() - t)

    async def execute(self, query: str, *args: object) -> str:
        t = time.perf_counter()
        try:
            return await self._conn.execute(query, *args)
        finally:
            self._stats.deletes.append(time.perf_counter() - t)


class TimedRelay(Relay):
    """The shared Relay, unchanged, with its drain rounds timed."""

    stats: RelayStats

    async def _drain(self, conn: asyncpg.Connection) -> int:
        t = time.perf_counter()
        moved = await super()._drain(cast("asyncpg.Connection", _TimedConn(conn, self.stats)))
        if moved:
            self.stats.rounds.append((moved, time.perf_counter() - t))
        else:
            self.stats.empty_rounds += 1
        return moved


async def relay_child(database_url: str, nats_url: str, schema: str, prefix: str, wake: str) -> None:
    """The relay process of the latency test: relays until SIGTERM, then prints its RelayStats.

    ``wake`` "nats": woken over core NATS, as the services run it. "notify": woken by LISTEN on
    the channel the old append statement notified (diagnostic, as before commit 0d6030b).
    """
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    nc = await nats.connect(nats_url)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database_url, server_settings={"application_name": f"{APP}_relay"})

    relay = TimedRelay(
        connect, schema, nc.jetstream(), Subjects(prefix=prefix), wake_source=nc if wake == "nats" else None
    )
    relay.stats = RelayStats()
    listener: asyncpg.Connection | None = None
    if wake == "notify":
        listener = await connect()
        await listener.add_listener(f"{schema}_events", lambda *_: relay._wake.set())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(relay.run())
    while not relay.active:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if listener is not None:
        await listener.close()
    await nc.drain()
    relay.stats.cpu_seconds = time.process_time()
    print(_encoder.encode(relay.stats).decode(), flush=True)


# ---------------------------------------------------------------------------------------------
# Report


def median_of(results: list[Throughput], config: str, writers: int) -> tuple[Throughput, float, float] | None:
    """The round with the median events/s, with the min and max events/s over rounds."""
    rs = sorted((r for r in results if r.config == config and r.writers == writers), key=lambda r: r.events_per_s)
    if not rs:
        return None
    return rs[len(rs) // 2], rs[0].events_per_s, rs[-1].events_per_s


def _per_append_ms(cores: float, r: Throughput) -> float:
    return cores / r.appends_per_s * 1000 if r.appends_per_s else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def report_throughput(results: list[Throughput], s: Settings, pg: dict[str, str]) -> None:
    print()
    print(
        f"Append throughput (fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')}); "
        f"median of {s.rounds} round(s) of {s.seconds:g} s, each writer on its own connection and runs"
    )
    head = (
        f"{'configuration':<38} {'writers':>7} {'appends/s':>10} {'events/s':>10} {'range events/s':>15} "
        f"{'events/base':>11} {'appends/base':>12} {'append p50/p99 ms':>17} "
        f"{'client CPU':>10} {'pg CPU':>7} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for n in s.writer_counts:
        base = median_of(results, BASELINE, n)
        base_rate = base[0].events_per_s if base else float("nan")
        for config in CONFIGS:
            m = median_of(results, config, n)
            if m is None:
                continue
            r, lo, hi = m
            rounds = [x for x in results if x.config == config and x.writers == n]
            client_ms = statistics.median(_per_append_ms(x.cpu.client, x) for x in rounds)
            pg_ms = statistics.median(_per_append_ms(x.cpu.postgres, x) for x in rounds)
            others = statistics.median(x.cpu.others for x in rounds)
            lat = "n/a"
            if r.latencies:
                lat = f"{pct(r.latencies, 50) * 1000:.2f} / {pct(r.latencies, 99) * 1000:.2f}"
            print(
                f"{config:<38} {n:>7} {r.appends_per_s:>10,.0f} {r.events_per_s:>10,.0f} "
                f"{f'{lo:,.0f}-{hi:,.0f}':>15} {_ratio(r.events_per_s, base_rate):>10.2f}x "
                f"{_ratio(r.appends_per_s, base_rate):>11.2f}x {lat:>17} {client_ms:>10.3f} {pg_ms:>7.3f} "
                f"{others:>6.2f}"
            )
    print(
        "events/base, appends/base: events/s and appends/s over the baseline's rows/s (one row, one "
        "commit)\nwith as many writers; client CPU, pg CPU: CPU ms per append of this process and of its "
        "PostgreSQL\nbackends plus PostgreSQL's background processes (WAL writer...); others: cores used "
        "meanwhile by\nthe rest of the (shared) machine, other people's PostgreSQL sessions included. "
        "Medians over rounds."
    )
    print()
    print(
        "What the writers' backends were doing (pg_stat_activity every 20 ms; CPU = active, no wait "
        "event),\nmedian round:"
    )
    for n in s.writer_counts:
        for config in CONFIGS:
            m = median_of(results, config, n)
            if m is not None:
                print(f"  {config:<38} {n:>2} writers: {m[0].top_waits(4)}")
    print()
    for config in (SINGLE, BATCH):
        m = median_of(results, config, 16)
        if m is not None:
            ok = m[0].events_per_s >= TARGET_EVENTS_PER_S
            print(
                f"target >= {TARGET_EVENTS_PER_S:,.0f} events/s with 16 writers, {config}: "
                f"{m[0].events_per_s:,.0f} -> {'MET' if ok else 'NOT MET'}"
            )


def report_latency(lat: LatencyRun, s: Settings) -> None:
    relay, direct, append_ms = lat.relay, lat.direct, lat.append_ms
    print()
    print(
        f"Commit-to-visible latency: {s.rate:g} events/s for {s.latency_seconds:g} s "
        f"over {s.lanes} appenders, ordered push consumer on the run events subject"
    )
    head = f"{'path':<58} {'n':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'min':>7}  (ms)"
    print(head)
    print("-" * len(head))
    rows = [
        ("relay: append returned -> consumer received", relay.latencies_ms(), relay.missing),
        ("relay: append called -> consumer received", relay.latencies_ms(True), relay.missing),
        ("baseline js.publish: called -> consumer received", direct.latencies_ms(True), direct.missing),
        ("baseline js.publish: ack returned -> consumer received", direct.latencies_ms(), direct.missing),
        ("(append duration, for reference)", append_ms, 0),
    ]
    if lat.notify.sent:
        rows.append(
            ("diag: relay woken by NOTIFY: append returned -> received", lat.notify.latencies_ms(), lat.notify.missing)
        )
    for name, ms, missing in rows:
        if not ms:
            print(f"{name:<58} {'none':>6}")
            continue
        extra = f"  MISSING {missing}" if missing else ""
        print(
            f"{name:<58} {len(ms):>6} {pct(ms, 50):>7.2f} {pct(ms, 90):>7.2f} {pct(ms, 99):>7.2f} "
            f"{max(ms):>7.2f} {min(ms):>7.2f}{extra}"
        )
    for label, res in (("relay", relay), ("baseline", direct), ("diag NOTIFY", lat.notify)):
        if res.cpu is not None:
            print(f"CPU during {label}: {res.cpu.short()}")
            if res.cpu.others > 0.5:
                print(
                    f"WARNING: other work used {res.cpu.others:.1f} of {CORES} cores during the {label} "
                    "measurement: its latencies are pessimistic; rerun with --part latency"
                )
    ms = relay.latencies_ms()
    if ms:
        p50, p99 = pct(ms, 50), pct(ms, 99)
        b = direct.latencies_ms(since_start=True)
        if b:
            print(
                f"relay adds {p50 - pct(b, 50):.2f} ms at p50 and {p99 - pct(b, 99):.2f} ms at p99 "
                "over a direct publish"
            )
        met50 = "MET" if p50 <= TARGET_P50_MS else "NOT MET"
        met99 = "MET" if p99 <= TARGET_P99_MS else "NOT MET"
        print(
            f"target p50 <= {TARGET_P50_MS:g} ms: {p50:.2f} -> {met50}; "
            f"target p99 <= {TARGET_P99_MS:g} ms: {p99:.2f} -> {met99}"
        )
    for label, st in (("relay", lat.relay_stats), ("diag: relay woken by NOTIFY", lat.notify_stats)):
        if st is not None and st.rounds:
            report_relay_stats(label, st)


def report_relay_stats(label: str, st: RelayStats) -> None:
    if st.rounds:
        events = sum(n for n, _ in st.rounds)
        per_round = [t * 1000 for _, t in st.rounds]
        sel = [t * 1000 for t in st.selects]
        dele = [t * 1000 for t in st.deletes]
        print(
            f"{label} rounds: {len(st.rounds)} with events ({events / len(st.rounds):.2f} events/round), "
            f"{st.empty_rounds} woken for nothing; relay process CPU {st.cpu_seconds:.2f} s in all"
        )
        for name, ms in (
            ("round (statement + publishes)", per_round),
            ("outbox DELETE done + SELECT next", sel),
            ("outbox DELETE (its own commit)", dele),
        ):
            if ms:
                print(
                    f"  {name:<33} p50 {pct(ms, 50):6.2f}  p90 {pct(ms, 90):6.2f}  p99 {pct(ms, 99):6.2f}  "
                    f"max {max(ms):7.2f} ms"
                )


# ---------------------------------------------------------------------------------------------


async def main(s: Settings) -> int:
    tag = uuid.uuid4().hex[:10]
    schema, lat_schema, prefix = f"bench_{tag}", f"bench_{tag}_lat", f"bench{tag}"
    conn = await asyncpg.connect(s.database_url)
    try:
        pg_lines, pg = await _machine.postgres_lines(conn)
    finally:
        await conn.close()
    nc = await nats.connect(s.nats_url)
    nats_version = str(nc.connected_server_version)
    await nc.close()
    print(f"bench/runlog.py {'--quick' if s.quick else '(full)'} at {utcnow():%Y-%m-%d %H:%M:%S} UTC")
    _machine.print_lines(
        "Machine", _machine.host_lines() + pg_lines + [("NATS server", nats_version)] + _machine.code_lines()
    )
    if pg.get("fsync") != "on":
        print("WARNING: fsync is OFF on this server: the throughput figures are not durable ones")
    print(f"schemas {schema}, {lat_schema}; subject prefix {prefix}")
    print()
    results: list[Throughput] = []
    tables: list[str] = []
    lat: LatencyRun | None = None
    try:
        if s.part in ("all", "throughput"):
            print("Throughput", flush=True)
            results = await throughput(s, schema, prefix)
            tables = await table_stats(s.database_url, schema)
        if s.part in ("all", "latency"):
            print("Latency", flush=True)
            lat = await latency(s, lat_schema, prefix)
    finally:
        conn = await asyncpg.connect(s.database_url)
        try:
            for name in (schema, lat_schema):
                await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()
    if results:
        report_throughput(results, s, pg)
        print("Run log tables after the throughput test (pg_stat_user_tables):")
        for line in tables:
            print(f"  {line}")
    failed = False
    if lat is not None:
        report_latency(lat, s)
        failed = bool(lat.relay.missing or lat.direct.missing or lat.notify.missing)
        if failed:
            print("relay log:\n" + lat.relay_log[-4000:])
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument(
        "--part", choices=("all", "throughput", "latency"), default="all", help="run one part only (default: all)"
    )
    _machine.add_server_options(parser)
    parser.add_argument("--relay-child", nargs=3, metavar=("SCHEMA", "PREFIX", "WAKE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay_child:
        asyncio.run(relay_child(args.database_url, args.nats_url, *args.relay_child))
        return 0
    settings = dataclasses.replace(Settings.make(args.quick, args.database_url, args.nats_url), part=args.part)
    return asyncio.run(main(settings))


if __name__ == "__main__":
    sys.exit(cli())
