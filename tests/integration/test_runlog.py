"""The run log against the real PostgreSQL: concurrency, read model, corruption, migrations."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from shared.domain.decide import CancelRun, CreateRun, ProvisionInput, RequestRun
from shared.domain.errors import InvalidRunState, RunNotFound
from shared.domain.events import InputProvisioned, RunStatus
from shared.runlog import readmodel
from shared.runlog.runs import RunLog, decode_run_event
from shared.runlog.schema import MIGRATIONS, migrate
from shared.runlog.store import ConcurrencyError, CorruptLog, EventStore, NewEvent
from tests.support import eventually

PARAMS = tuple(f"p{i}" for i in range(8))


async def create_run(runlog: RunLog, required: tuple[str, ...] = (), optional: tuple[str, ...] = PARAMS) -> uuid.UUID:
    run_id = uuid.uuid4()
    await runlog.execute(
        run_id,
        CreateRun(
            task_id=uuid.uuid4(),
            task_namespace="com.example",
            task_version="1.0.0",
            required_inputs=required,
            optional_inputs=optional,
        ),
    )
    return run_id


async def test_64_concurrent_writers_on_8_runs_lose_and_duplicate_nothing(runlog: RunLog) -> None:
    runs = [await create_run(runlog) for _ in range(8)]
    appends_per_writer = 12

    async def writer(w: int) -> None:
        run_id = runs[w % len(runs)]
        for k in range(appends_per_writer):
            await runlog.execute(run_id, ProvisionInput(parameter=PARAMS[k % 8], checksum=f"w{w}-{k}"))

    await asyncio.gather(*(writer(w) for w in range(64)))

    for i, run_id in enumerate(runs):
        history = await runlog.store.read(run_id)
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), "sequence has a gap"
        marks = [decode_run_event(e) for e in history[1:]]
        checksums = sorted(m.checksum or "" for m in marks if isinstance(m, InputProvisioned))
        expected = sorted(f"w{w}-{k}" for w in range(i, 64, 8) for k in range(appends_per_writer))
        assert checksums == expected, "an append was lost or recorded twice"
        assert len({e.id for e in history}) == len(history)
        state = await runlog.load(run_id)
        # created, the first provision also made it PROVISIONED (no required inputs), then the rest
        assert state.version == 2 + 8 * appends_per_writer


async def test_stale_expected_sequence_is_refused(runlog: RunLog, store: EventStore) -> None:
    run_id = await create_run(runlog)
    event = NewEvent(
        id=uuid.uuid4(),
        type="provisioned",
        occurred_at=runlog.clock(),
        state="PROVISIONED",
        payload=b'{"type":"provisioned","at":"2026-01-01T00:00:00Z"}',
    )
    with pytest.raises(ConcurrencyError):
        await store.append("run", run_id, 0, [event])  # the head is at 1
    with pytest.raises(ConcurrencyError):
        await store.append("run", run_id, 5, [event])  # a gap is refused too
    assert len(await store.read(run_id)) == 1


async def test_read_model_follows_the_log_and_rebuilds_identically(runlog: RunLog, store: EventStore) -> None:
    finished = await create_run(runlog, required=("p0",))
    await runlog.execute(finished, ProvisionInput(parameter="p0"))
    await runlog.execute(finished, RequestRun())
    cancelled = await create_run(runlog)
    await runlog.execute(cancelled, CancelRun())
    await create_run(runlog)

    row = await store.pool.fetchrow(f"SELECT state, version FROM {store.schema}.runs WHERE run_id = $1", finished)
    assert row is not None and (row["state"], row["version"]) == ("QUEUING", 4)
    assert await readmodel.verify(store) == []

    # damage the projection: verify names it, rebuild repairs it from the log
    await store.pool.execute(f"UPDATE {store.schema}.runs SET state = 'FINISHED' WHERE run_id = $1", finished)
    await store.pool.execute(f"DELETE FROM {store.schema}.runs WHERE run_id = $1", cancelled)
    problems = await readmodel.verify(store)
    assert any(f"run {finished}: state" in p for p in problems)
    assert any(f"run {cancelled}: in the log but missing" in p for p in problems)
    assert await readmodel.rebuild(store) == 3
    assert await readmodel.verify(store) == []
    failure = await store.pool.fetchval(f"SELECT failure::text FROM {store.schema}.runs WHERE run_id = $1", cancelled)
    assert msgspec.json.decode(failure)["code"] == "CANCELLED"


async def test_unknown_event_in_the_log_makes_the_fold_fail_loudly(runlog: RunLog, store: EventStore) -> None:
    run_id = await create_run(runlog)
    bogus = NewEvent(
        id=uuid.uuid4(),
        type="teleported",
        occurred_at=runlog.clock(),
        state="CREATED",
        payload=b'{"type":"teleported","at":"2026-01-01T00:00:00Z"}',
    )
    await store.append("run", run_id, 1, [bogus])
    with pytest.raises(CorruptLog, match="teleported"):
        await runlog.load(run_id)
    with pytest.raises(CorruptLog):
        await readmodel.verify(store)


async def test_malformed_payload_fails_loudly(runlog: RunLog, store: EventStore) -> None:
    run_id = await create_run(runlog)
    broken = NewEvent(
        id=uuid.uuid4(),
        type="input_provisioned",
        occurred_at=runlog.clock(),
        state="CREATED",
        payload=b'{"type":"input_provisioned","parameter":42}',
    )
    await store.append("run", run_id, 1, [broken])
    with pytest.raises(CorruptLog, match="undecodable"):
        await runlog.load(run_id)


async def test_the_log_is_append_only(runlog: RunLog, store: EventStore) -> None:
    run_id = await create_run(runlog)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await store.pool.execute(f"UPDATE {store.schema}.events SET type = 'x' WHERE aggregate_id = $1", run_id)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await store.pool.execute(f"DELETE FROM {store.schema}.events")


async def test_domain_errors_append_nothing(runlog: RunLog, store: EventStore) -> None:
    run_id = await create_run(runlog, required=("p0",))
    await runlog.execute(run_id, CancelRun())
    with pytest.raises(InvalidRunState):
        await runlog.execute(run_id, CancelRun())
    state = await runlog.load(run_id)
    assert state.status is RunStatus.FAILED and state.version == 2


async def test_every_event_carries_the_state_after_it(runlog: RunLog) -> None:
    run_id = await create_run(runlog, required=("p0",))
    _, stored = await runlog.execute(run_id, ProvisionInput(parameter="p0"))
    assert [(e.type, e.state) for e in stored] == [
        ("input_provisioned", "CREATED"),
        ("provisioned", "PROVISIONED"),
    ]


async def test_concurrent_migrations_apply_each_step_once(database_url: str, schema: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(8)]
    try:
        applied = await asyncio.gather(*(migrate(c, schema) for c in conns))
        assert sorted(applied) == [0] * 7 + [len(MIGRATIONS)]
        steps = await conns[0].fetchval(f"SELECT count(*) FROM {schema}.schema_migrations")
        assert steps == len(MIGRATIONS)
    finally:
        for c in conns:
            await c.close()


# --- the run lock (RunLog.exclusive) -------------------------------------------------------------


async def _lock_is_free(runlog: RunLog, run_id: uuid.UUID, database_url: str) -> bool:
    """Asked from a session of its own: a pooled session may hold the lock and would get it again."""
    conn = await asyncpg.connect(database_url)
    try:
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *runlog.lock_key(run_id))
        if got:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *runlog.lock_key(run_id))
        return bool(got)
    finally:
        await conn.close()


async def test_the_run_lock_is_released_when_its_holder_fails(runlog: RunLog, database_url: str) -> None:
    run_id = uuid.uuid4()

    async def request_missing_run() -> None:
        async with runlog.exclusive(run_id) as conn:
            assert not await _lock_is_free(runlog, run_id, database_url)
            await runlog.execute(run_id, RequestRun(), conn=conn)  # no such run: a domain error

    with pytest.raises(RunNotFound):
        await request_missing_run()
    assert await _lock_is_free(runlog, run_id, database_url)


async def test_the_run_lock_is_released_when_its_unlock_is_cancelled(runlog: RunLog, database_url: str) -> None:
    """The pools skip asyncpg's reset (pg_advisory_unlock_all and more on every release), so a
    lock whose unlock never completed must not come back to the pool held."""
    run_id = uuid.uuid4()
    entered = asyncio.Event()

    async def holder() -> None:
        async with runlog.exclusive(run_id):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)  # the holder leaves its block and sends the unlock...
    task.cancel()  # ... and is cancelled again before the answer
    with pytest.raises(asyncio.CancelledError):
        await task

    async def free() -> bool:
        return await _lock_is_free(runlog, run_id, database_url)

    await eventually(free, within=5, what="the run lock released")
    # and the pool still serves: the terminated connection was replaced
    async with asyncio.timeout(5), runlog.exclusive(run_id):
        pass
