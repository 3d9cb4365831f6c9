"""The outbox relay against real PostgreSQL and NATS, including relays killed with SIGKILL and
NATS stopped mid-stream: every committed event ends on JetStream exactly once, in per-run order."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.contracts import Subjects
from shared.domain.decide import CreateRun, ProvisionInput
from shared.runlog.relay import Relay
from shared.runlog.runs import RunLog
from shared.runlog.schema import lock_key
from shared.runlog.store import EventStore, StoredEvent
from tests.support import NatsServer, eventually

PARAMS = ("a", "b", "c")


async def new_run(runlog: RunLog) -> uuid.UUID:
    run_id = uuid.uuid4()
    await runlog.execute(
        run_id,
        CreateRun(
            task_id=uuid.uuid4(),
            task_namespace="ns",
            task_version="1",
            required_inputs=(),
            optional_inputs=PARAMS,
        ),
    )
    return run_id


async def stream_events(js: JetStreamContext, stream: str) -> list[StoredEvent]:
    """Every message of the stream, in stream order, decoded as envelopes."""
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.data is not None and msg.subject is not None
        envelope = msgspec.json.decode(msg.data, type=StoredEvent)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == str(envelope.id)
        assert msg.subject.endswith(f".run.{envelope.aggregate_id}.{envelope.type}")
        out.append(envelope)
    return out


async def outbox_size(store: EventStore) -> int:
    return int(await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.outbox"))


def assert_exactly_once_in_order(published: list[StoredEvent], committed: list[StoredEvent]) -> None:
    assert sorted(str(e.id) for e in published) == sorted(str(e.id) for e in committed), (
        "published events differ from committed events (lost or duplicated)"
    )
    last: dict[uuid.UUID, int] = {}
    for event in published:
        assert event.seq == last.get(event.aggregate_id, 0) + 1, f"run {event.aggregate_id} out of order"
        last[event.aggregate_id] = event.seq


@contextlib.asynccontextmanager
async def relay_task(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def connect_factory(database_url: str):  # type: ignore[no-untyped-def]
    return lambda: asyncpg.connect(database_url)


async def test_committed_events_reach_jetstream_once_in_order(
    runlog: RunLog,
    store: EventStore,
    nc: NATS,
    js: JetStreamContext,
    subjects: Subjects,
    database_url: str,
    schema: str,
) -> None:
    async def wake() -> None:
        await nc.publish(subjects.outbox_wake(schema), b"")

    store.on_commit = wake
    relay = Relay(connect_factory(database_url), schema, js, subjects, poll_interval=5.0, wake_source=nc)
    async with relay_task(relay):
        await eventually(lambda: _active(relay), what="relay active")
        runs = [await new_run(runlog) for _ in range(5)]
        for k in range(10):
            for run_id in runs:
                await runlog.execute(run_id, ProvisionInput(parameter=PARAMS[k % 3]))
        committed = await store.read_all(limit=10_000)
        # poll_interval is 5 s: reaching NATS sooner proves the relay is woken by the commit
        await eventually(
            lambda: _published(js, subjects.events_stream, len(committed)), within=4, what="events on JetStream"
        )
        # confirmed positions leave the outbox with the next read: the next wake-up here
        await wake()
        await eventually(lambda: _empty(store), within=4, what="confirmed positions deleted on the next wake-up")
    assert_exactly_once_in_order(await stream_events(js, subjects.events_stream), committed)


async def _published(js: JetStreamContext, stream: str, count: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= count


async def test_without_wake_ups_the_relay_still_polls(
    runlog: RunLog, store: EventStore, js: JetStreamContext, subjects: Subjects, database_url: str, schema: str
) -> None:
    relay = Relay(connect_factory(database_url), schema, js, subjects, poll_interval=0.2)
    async with relay_task(relay):
        run_id = await new_run(runlog)
        await runlog.execute(run_id, ProvisionInput(parameter="a"))
        await eventually(lambda: _empty(store), within=5, what="outbox drained by polling")


async def _empty(store: EventStore) -> bool:
    return await outbox_size(store) == 0


async def test_a_standby_relay_takes_over_when_the_active_one_dies(
    runlog: RunLog,
    store: EventStore,
    js: JetStreamContext,
    subjects: Subjects,
    database_url: str,
    schema: str,
) -> None:
    first = Relay(connect_factory(database_url), schema, js, subjects, standby_retry=0.1)
    sessions = 0

    async def counted_connect() -> asyncpg.Connection:
        nonlocal sessions
        sessions += 1
        return await asyncpg.connect(database_url)

    second = Relay(counted_connect, schema, js, subjects, standby_retry=0.1)
    async with relay_task(first) as first_task:
        await eventually(lambda: _active(first), what="first relay active")
        async with relay_task(second):
            await asyncio.sleep(0.5)  # several lock attempts by the standby
            assert not second.active, "two relays active at once"
            assert sessions == 1, "the standby asks on one PostgreSQL session, not a new one each time"
            first_task.cancel()  # its connection closes, which frees the lock
            with contextlib.suppress(asyncio.CancelledError):
                await first_task
            run_id = await new_run(runlog)
            await runlog.execute(run_id, ProvisionInput(parameter="a"))
            await eventually(lambda: _active(second), within=5, what="standby takes over")
            await eventually(lambda: _empty(store), within=5, what="outbox drained by the standby")
    assert_exactly_once_in_order(await stream_events(js, subjects.events_stream), await store.read_all())


async def test_a_relay_stopped_twice_while_it_tidies_up_still_frees_the_lock(
    runlog: RunLog, store: EventStore, js: JetStreamContext, subjects: Subjects, database_url: str, schema: str
) -> None:
    """A shutdown cancels, waits a moment, and cancels again: a second cancellation landing in
    the courtesy delete must not skip the rest of the cleanup (the ``appengine_relay_active``
    gauge stayed at 1, and the lock's session was left to the garbage collector)."""
    relay = Relay(connect_factory(database_url), schema, js, subjects, poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    blocker = await asyncpg.connect(database_url)
    try:
        await eventually(lambda: _active(relay), what="relay active")
        await new_run(runlog)  # one event, published by the relay's next poll: wake it
        relay._wake.set()
        await eventually(lambda: _published(js, subjects.events_stream, 1), within=5, what="event on JetStream")
        # the relay now holds a confirmed position to delete; make that delete wait on a row lock
        await blocker.execute("BEGIN")
        await blocker.fetch(f"SELECT position FROM {schema}.outbox FOR UPDATE")
        task.cancel()
        await asyncio.sleep(0.2)  # the relay is in its courtesy delete, blocked
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(3):
                await task
        assert task.done()
        assert not relay.active, "a stopped relay still says it is active (appengine_relay_active)"
        # the row lock held the delete (and its backend) up: once it goes, so must the session
        await blocker.execute("ROLLBACK")
        probe = await asyncpg.connect(database_url)
        try:
            key = lock_key(schema, "relay")
            await eventually(lambda: _lock_free(probe, key), within=3, what="the relay's session gone, its lock free")
        finally:
            await probe.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await blocker.close()


async def _active(r: Relay) -> bool:
    return r.active


async def _lock_free(conn: asyncpg.Connection, key: int) -> bool:
    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return True
    return False


@pytest.mark.slow
async def test_relays_killed_and_nats_restarted_lose_nothing(
    runlog: RunLog,
    store: EventStore,
    database_url: str,
    schema: str,
    subjects: Subjects,
    tmp_path: pathlib.Path,
) -> None:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await js.add_stream(subjects.events_stream_config())

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.relay_process",
                "--dsn",
                database_url,
                "--schema",
                schema,
                "--nats",
                server.url,
                "--prefix",
                subjects.prefix,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    relays = [spawn(), spawn()]
    rng = random.Random(7)
    writing = True
    kills = 0

    async def writer(n: int) -> None:
        runs = [await new_run(runlog) for _ in range(5)]
        k = 0
        while writing:
            await runlog.execute(runs[k % 5], ProvisionInput(parameter=PARAMS[k % 3]))
            k += 1
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def chaos() -> None:
        nonlocal kills
        for round_ in range(14):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            victim = rng.randrange(len(relays))
            relays[victim].kill()  # SIGKILL: no cleanup, no goodbye
            relays[victim].wait()
            kills += 1
            relays[victim] = spawn()
            if round_ == 5:
                server.kill()  # NATS gone mid-stream
                await asyncio.sleep(1.5)
                server.start()

    try:
        writers = [asyncio.create_task(writer(n)) for n in range(4)]
        await chaos()
        writing = False
        await asyncio.gather(*writers)
        await eventually(lambda: _empty(store), within=60, interval=0.2, what="outbox drained after chaos")
        committed = await store.read_all(limit=100_000)
        assert len(committed) > 500, "too few events to mean anything"
        published = await stream_events(js, subjects.events_stream)
        assert_exactly_once_in_order(published, committed)
        assert kills == 14
    finally:
        for p in relays:
            p.kill()
            p.wait()
        await nc.close()
        server.kill()


async def test_a_batch_read_costs_the_same_whatever_the_size_of_the_history(
    store: EventStore, js: JetStreamContext, subjects: Subjects, database_url: str, schema: str
) -> None:
    """The outbox names a few recent positions of a long history: reading them must touch a few
    pages, not walk the events from the first (a merge join did, and every drain grew with the
    log)."""
    relay = Relay(connect_factory(database_url), schema, js, subjects)
    await store.pool.execute(
        f"INSERT INTO {schema}.events (event_id, aggregate, aggregate_id, seq, type, occurred_at, state, payload) "
        "SELECT gen_random_uuid(), 'run', gen_random_uuid(), 1, 'created', now(), 'CREATED', '{}'::jsonb "
        "FROM generate_series(1, 20000)"
    )
    await store.pool.execute(
        f"INSERT INTO {schema}.outbox SELECT position FROM {schema}.events ORDER BY position DESC LIMIT 3"
    )
    await store.pool.execute(f"ANALYZE {schema}.events")
    sql = relay._sql_batch.replace("$1", "1000").replace("$2::bigint[]", "'{}'::bigint[]")
    plan = await store.pool.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    rows = await store.pool.fetch(relay._sql_batch, 1000, [])
    top = msgspec.json.decode(plan)[0]["Plan"]
    pages = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    assert len(rows) == 3
    # 20,000 events span about 250 pages of heap and 60 of the position index
    assert pages < 40, f"a batch of 3 touched {pages} pages"
