"""Fixtures shared by every tier: real PostgreSQL and NATS, one schema and prefix per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.contracts import Subjects
from shared.runlog.runs import RunLog
from shared.runlog.schema import migrate
from shared.runlog.store import EventStore, keep_session

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def database_url() -> str:
    return DATABASE_URL


@pytest.fixture
def nats_url() -> str:
    return NATS_URL


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def schema(unique: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for this test, dropped afterwards."""
    name = f"t_{unique}"
    yield name
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def pool(schema: str) -> AsyncIterator[asyncpg.Pool]:
    # configured as the services' pools are
    p = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=20, reset=keep_session)
    assert p is not None
    async with p.acquire() as conn:
        await migrate(conn, schema)
    yield p
    await p.close()


@pytest.fixture
def store(pool: asyncpg.Pool, schema: str) -> EventStore:
    return EventStore(pool, schema)


@pytest.fixture
def runlog(store: EventStore) -> RunLog:
    return RunLog(store)


@pytest.fixture
def subjects(unique: str) -> Subjects:
    return Subjects(prefix=f"t{unique}")


@pytest.fixture
async def nc() -> AsyncIterator[NATS]:
    client = await nats.connect(NATS_URL)
    yield client
    await client.drain()


@pytest.fixture
async def js(nc: NATS, subjects: Subjects) -> AsyncIterator[JetStreamContext]:
    """JetStream with this test's streams created, deleted afterwards."""
    ctx = nc.jetstream()
    await ctx.add_stream(subjects.events_stream_config())
    await ctx.add_stream(subjects.jobs_stream_config())
    yield ctx
    for name in (subjects.events_stream, subjects.jobs_stream):
        with contextlib.suppress(Exception):  # the test may have deleted it already
            await ctx.delete_stream(name)
