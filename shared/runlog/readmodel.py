"""Rebuilding and checking the runs read model from the log.

The read model is a projection: it can be thrown away and rebuilt from the events at any time.
``verify`` compares the live table with a fresh fold without changing anything; ``rebuild``
replaces the table's contents in one transaction.
"""

from __future__ import annotations

import json

import msgspec

from shared.runlog.runs import fold_stored, run_row
from shared.runlog.store import RUN_COLUMNS, EventStore, RunRow


async def expected_rows(store: EventStore) -> dict[str, RunRow]:
    """The read model as a fresh fold of every run's history, keyed by run id."""
    rows: dict[str, RunRow] = {}
    async for history in store.iter_aggregates("run"):
        state = fold_stored(history[0].aggregate_id, history)
        rows[str(state.run_id)] = run_row(state)
    return rows


async def live_rows(store: EventStore) -> dict[str, RunRow]:
    cols = ", ".join(c if c != "failure" else "failure::text AS failure" for c in RUN_COLUMNS)
    records = await store.pool.fetch(f"SELECT {cols} FROM {store.schema}.runs")
    return {str(r["run_id"]): RunRow(**dict(r)) for r in records}


def _normalise(row: RunRow) -> RunRow:
    # jsonb renders its own key order and spacing: compare failures as data, not text
    if row.failure is None:
        return row
    canonical = json.dumps(json.loads(row.failure), sort_keys=True)
    return msgspec.structs.replace(row, failure=canonical)


async def verify(store: EventStore) -> list[str]:
    """Differences between the live read model and the log; empty when they agree."""
    expected, live = await expected_rows(store), await live_rows(store)
    problems = []
    for run_id in sorted(expected.keys() | live.keys()):
        want, have = expected.get(run_id), live.get(run_id)
        if want is None:
            problems.append(f"run {run_id}: in the read model but not in the log")
        elif have is None:
            problems.append(f"run {run_id}: in the log but missing from the read model")
        else:
            want_n, have_n = _normalise(want), _normalise(have)
            for field in RUN_COLUMNS:
                if getattr(want_n, field) != getattr(have_n, field):
                    have_v, want_v = getattr(have_n, field), getattr(want_n, field)
                    problems.append(f"run {run_id}: {field} is {have_v!r}, log says {want_v!r}")
    return problems


async def rebuild(store: EventStore) -> int:
    """Replace the runs read model with a fresh fold of the log; returns the number of runs."""
    cols = ", ".join(RUN_COLUMNS)
    params = ", ".join(f"${i}" if c != "failure" else f"${i}::jsonb" for i, c in enumerate(RUN_COLUMNS, 1))
    async with store.pool.acquire() as conn, conn.transaction():
        # block appends while the table is swapped, so no live update lands in the gap
        await conn.execute(f"LOCK TABLE {store.schema}.runs IN ACCESS EXCLUSIVE MODE")
        # appends touch runs in the same statement as events, so they wait for this lock
        # before writing anything: the fold below sees every committed event
        rows = await expected_rows(store)
        await conn.execute(f"DELETE FROM {store.schema}.runs")
        await conn.executemany(
            f"INSERT INTO {store.schema}.runs ({cols}) VALUES ({params})",
            [row.values() for row in rows.values()],
        )
    return len(rows)
