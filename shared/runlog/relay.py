"""The outbox relay: committed events from PostgreSQL to JetStream.

Guarantees (tested in ``tests/integration/test_relay.py`` by killing relays and NATS):

* never before commit: the relay reads only committed outbox rows;
* none lost: a position leaves the outbox only after JetStream acknowledged its event, so a
  relay killed at any point republishes what it had not confirmed. The confirmed positions are
  deleted by the next batch's query (one statement: delete the confirmed, read the next), which
  runs on the next wake-up or poll: a round trip per batch, not two;
* duplicates dropped: the event id is the ``Nats-Msg-Id``, deduplicated by the stream;
* per-run order: one run's events are published one after another, each only after the
  previous one is acknowledged, and a failure stops that run's chain for this round;
* one relay at a time: the active relay holds a session advisory lock on its connection. When
  its process dies the connection drops, PostgreSQL frees the lock and a standby takes over
  within ``standby_retry`` seconds;
* woken on commit: appenders publish an empty message on ``<p>.outbox.<schema>`` (core NATS)
  right after their commit (``EventStore.on_commit``); polling every ``poll_interval`` is the
  fallback for a wake-up lost in a crash. PostgreSQL ``NOTIFY`` is not used: it serialises every
  notifying commit of the cluster on one lock (``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from shared.contracts import Subjects
from shared.runlog.schema import lock_key
from shared.runlog.store import StoredEvent, record_to_event

log = structlog.get_logger("relay")

PUBLISHED = Counter("appengine_relay_published_total", "Events confirmed on JetStream by this relay")
DUPLICATES = Counter("appengine_relay_duplicates_total", "Events JetStream reported as duplicates")
FAILURES = Counter("appengine_relay_publish_failures_total", "Publish attempts that failed")
ACTIVE = Gauge("appengine_relay_active", "1 while this process holds the relay lock")

_encoder = msgspec.json.Encoder()

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Relay:
    """Drains the outbox of one schema to JetStream while it holds the relay lock."""

    def __init__(
        self,
        connect: Connect,
        schema: str,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.2,
        wake_source: NATS | None = None,
        standby_retry: float = 0.5,
        publish_timeout: float = 5.0,
    ) -> None:
        self._connect = connect
        self._schema = schema
        self._js = js
        self._subjects = subjects
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._standby_retry = standby_retry
        self._publish_timeout = publish_timeout
        self._wake_source = wake_source
        self._wake = asyncio.Event()
        self.active = False
        # A data-modifying WITH runs whether or not the query reads it; the read sees the table
        # as before the delete (one snapshot), hence the explicit exclusion. The events are
        # fetched by the positions the outbox names, not joined: a join let the planner merge
        # the outbox with the whole events index from its first position, a cost that grew
        # with the history (2.6 ms per batch at 12,000 events against 0.5 for this form).
        self._sql_batch = (
            f"WITH done AS (DELETE FROM {schema}.outbox WHERE position = ANY($2::bigint[])) "
            "SELECT e.event_id, e.aggregate, e.aggregate_id, e.seq, e.position, e.type, e.occurred_at, "
            f"e.recorded_at, e.state, e.payload::text AS payload FROM {schema}.events e "
            f"WHERE e.position = ANY(ARRAY(SELECT o.position FROM {schema}.outbox o "
            "WHERE o.position <> ALL($2::bigint[]) ORDER BY o.position LIMIT $1)) ORDER BY e.position"
        )
        self._sql_done = f"DELETE FROM {schema}.outbox WHERE position = ANY($1::bigint[])"
        # confirmed on JetStream, still in the outbox: deleted by the next batch's query
        self._confirmed: list[int] = []

    async def run(self) -> None:
        """Relay until cancelled: contend for the lock, then drain; survive outages of both ends."""
        backoff = self._standby_retry
        while True:
            try:
                await self._session()
                backoff = self._standby_retry
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any outage: PostgreSQL or NATS down, connection lost
                log.warning("relay.error", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        conn = await self._connect()
        wake_sub: Subscription | None = None
        try:
            # a standby asks again on the same session: a new PostgreSQL session per attempt
            # costs milliseconds of CPU on both sides (a backend started, TLS tried, catalog
            # loaded); with every service a candidate that was most of an idle engine's load
            await self._wait_for_lock(conn)
            self.active = True
            ACTIVE.set(1)
            log.info("relay.active", schema=self._schema)
            if self._wake_source is not None:
                wake_sub = await self._wake_source.subscribe(self._subjects.outbox_wake(self._schema), cb=self._on_wake)
            while not conn.is_closed():
                self._wake.clear()
                moved = await self._drain(conn)
                if moved < self._batch_size:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that lands as the wait ends, and the relay would never stop
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_interval):
                            await self._wake.wait()
        finally:
            cancelled = False
            if self._confirmed and not conn.is_closed():
                # a courtesy: what stays is republished by the next relay and dropped as a
                # duplicate. Brief, and a second cancellation (a shutdown's) skips it, not the
                # cleanup below, which frees the lock
                try:
                    await asyncio.shield(conn.execute(self._sql_done, self._confirmed, timeout=0.5))
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:  # the next relay repairs it
                    pass
            self._confirmed = []
            if wake_sub is not None:
                with contextlib.suppress(Exception):
                    await wake_sub.unsubscribe()
            if self.active:
                ACTIVE.set(0)
                self.active = False
            # closing the connection is what frees the lock for a standby
            if cancelled:
                conn.terminate()  # the delete may still be in progress on it: no polite close
                raise asyncio.CancelledError
            try:
                await asyncio.shield(conn.close(timeout=2))
            except asyncio.CancelledError:
                conn.terminate()
                raise
            except Exception:  # a broken connection is closed anyway
                pass

    async def _wait_for_lock(self, conn: asyncpg.Connection) -> None:
        key = lock_key(self._schema, "relay")
        # polling is the point: nothing tells us when another session lets go of the lock
        # the timeout: a server gone silent (a partition, a failover behind the same address)
        # must not keep the standby waiting for the kernel to give up on the connection
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=5):  # noqa: ASYNC110
            await asyncio.sleep(self._standby_retry)

    async def _on_wake(self, _: Msg) -> None:
        self._wake.set()

    async def _drain(self, conn: asyncpg.Connection) -> int:
        """Publish one batch; returns how many events were confirmed."""
        rows = await conn.fetch(self._sql_batch, self._batch_size, self._confirmed)
        self._confirmed = []
        if not rows:
            return 0
        events = [record_to_event(r) for r in rows]
        chains = [
            list(g)
            for _, g in itertools.groupby(
                sorted(events, key=lambda e: (str(e.aggregate_id), e.seq)), key=lambda e: e.aggregate_id
            )
        ]
        confirmed: list[int] = []
        results = await asyncio.gather(*(self._publish_chain(c, confirmed) for c in chains), return_exceptions=True)
        self._confirmed = confirmed
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            FAILURES.inc(len(errors))
            raise errors[0]
        return len(confirmed)

    async def _publish_chain(self, chain: list[StoredEvent], confirmed: list[int]) -> None:
        for event in chain:
            ack = await self._js.publish(
                self._subjects.event(event.aggregate, event.aggregate_id, event.type),
                _encoder.encode(event),
                timeout=self._publish_timeout,
                headers={"Nats-Msg-Id": str(event.id)},
            )
            confirmed.append(event.position)
            PUBLISHED.inc()
            if ack.duplicate:
                DUPLICATES.inc()
