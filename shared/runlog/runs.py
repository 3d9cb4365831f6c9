"""The run log: run events in and out of the event store, with the runs read model.

``execute`` is the one way services change a run: load (fold the log), decide, append with the
expected sequence; on a concurrent append, reload and decide again. A caller holding a state it
just loaded passes it and saves the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec

from shared.domain.decide import Command, decide
from shared.domain.events import RunEvent, RunStatus, event_tag
from shared.domain.evolve import evolve
from shared.domain.state import RunState, initial_state
from shared.runlog.schema import Conn
from shared.runlog.store import ConcurrencyError, CorruptLog, EventStore, NewEvent, RunRow, StoredEvent

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[RunEvent] = msgspec.json.Decoder(RunEvent)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def decode_run_event(stored: StoredEvent) -> RunEvent:
    """The domain event inside a stored run event; CorruptLog if it cannot be understood."""
    try:
        event = _decoder.decode(stored.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptLog(
            f"run {stored.aggregate_id} event {stored.seq} ({stored.type!r}) is undecodable: {exc}"
        ) from exc
    if event_tag(event) != stored.type:
        raise CorruptLog(
            f"run {stored.aggregate_id} event {stored.seq}: type column {stored.type!r} "
            f"disagrees with payload {event_tag(event)!r}"
        )
    return event


def fold_stored(run_id: uuid.UUID, history: Sequence[StoredEvent]) -> RunState:
    """The state a run's stored history folds to, checking the sequence is contiguous."""
    state = initial_state(run_id)
    for stored in history:
        if stored.seq != state.version + 1:
            raise CorruptLog(f"run {run_id}: event {stored.seq} follows {state.version}")
        state = evolve(state, decode_run_event(stored))
    return state


def _int4(value: int) -> int:
    """An unsigned 32-bit value as PostgreSQL's signed ``integer``."""
    return value - (1 << 32) if value >= 1 << 31 else value


def run_row(state: RunState) -> RunRow:
    """The read-model row of a run state."""
    assert state.status is not None, "a run row needs a created run"
    failure = None if state.failure is None else _encoder.encode(state.failure).decode()
    return RunRow(
        run_id=state.run_id,
        task_id=state.task_id,
        task_namespace=state.task_namespace,
        task_version=state.task_version,
        state=state.status.value,
        version=state.version,
        attempt=state.attempt,
        executor_id=state.executor_id,
        deleted=state.deleted,
        created_at=state.created_at,
        updated_at=state.updated_at,
        ended_at=state.ended_at,
        failure=failure,
        deadline=_deadline(state),
    )


def _deadline(state: RunState) -> dt.datetime | None:
    if state.status is RunStatus.QUEUED:
        return state.queue_deadline
    if state.status is RunStatus.RUNNING and not state.cancel_requested:
        return state.deadline
    return None


class RunLog:
    """Loads, decides and appends run events."""

    def __init__(self, store: EventStore, clock: Clock = utcnow, *, max_attempts: int = 50) -> None:
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts

    async def load(self, run_id: uuid.UUID, *, conn: Conn | None = None) -> RunState:
        return fold_stored(run_id, await self.store.read(run_id, conn=conn))

    def lock_key(self, run_id: uuid.UUID) -> tuple[int, int]:
        """The two-key advisory lock of :meth:`exclusive` (never meets the one-key locks of the
        relay and migrations)."""
        return _int4(zlib.crc32(f"{self.store.schema}:runs".encode())), _int4(zlib.crc32(run_id.bytes))

    @contextlib.asynccontextmanager
    async def exclusive(self, run_id: uuid.UUID) -> AsyncIterator[Conn]:
        """A connection holding the run's advisory lock, for the whole block.

        For changes that write outside the log before appending (storage's input files): the
        writer and whoever moves the run on (the scheduler's state actions, deletion) take it,
        so a run's inputs never change after it left PROVISIONED. Pass the connection to
        ``load``/``execute`` inside the block: they then need no second pool connection, so
        lock holders can never exhaust the pool waiting on each other.
        """
        space, key = self.lock_key(run_id)
        async with self.store.pool.acquire() as conn:
            released = False
            try:
                await conn.execute("SELECT pg_advisory_lock($1, $2)", space, key)
                try:
                    yield conn
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", space, key)
                    released = True
            finally:
                if not released:
                    # the lock may be held with nobody left to release it (cancelled while locking
                    # or unlocking, a broken connection): end the session, which releases it
                    conn.terminate()

    async def append(
        self,
        state: RunState,
        events: Sequence[RunEvent],
        now: dt.datetime | None = None,
        *,
        conn: Conn | None = None,
    ) -> tuple[RunState, list[StoredEvent]]:
        """Append ``events`` decided on ``state``; each record carries the state after it."""
        occurred_at = now or self.clock()
        new_events: list[NewEvent] = []
        for event in events:
            state = evolve(state, event)
            assert state.status is not None
            new_events.append(
                NewEvent(
                    id=uuid.uuid4(),
                    type=event_tag(event),
                    occurred_at=occurred_at,
                    state=state.status.value,
                    payload=_encoder.encode(event),
                )
            )
        expected = state.version - len(events)
        stored = await self.store.append("run", state.run_id, expected, new_events, run_row(state), conn=conn)
        if conn is not None and not conn.is_in_transaction():
            await self.store.wake()  # committed already: the store leaves the wake to the committer
        return state, stored

    async def execute(
        self, run_id: uuid.UUID, command: Command, *, state: RunState | None = None, conn: Conn | None = None
    ) -> tuple[RunState, list[StoredEvent]]:
        """Decide ``command`` on the run's current state and append the result.

        ``state``, when the caller has just loaded it, saves the first load: the append checks
        its version, so a state gone stale only costs a retry. Retries from a fresh load when
        another writer appended first; domain errors propagate.
        """
        return await self.execute_all(run_id, (command,), state=state, conn=conn)

    async def execute_all(
        self,
        run_id: uuid.UUID,
        commands: Sequence[Command],
        *,
        state: RunState | None = None,
        conn: Conn | None = None,
    ) -> tuple[RunState, list[StoredEvent]]:
        """Decide ``commands`` in order, each on the state the previous ones lead to, and append
        all their events in one statement (all or nothing)."""
        for attempt in range(self.max_attempts):
            if state is None or state.run_id != run_id:
                state = await self.load(run_id, conn=conn)
            now = self.clock()
            after = state
            events: list[RunEvent] = []
            for command in commands:
                for event in decide(after, command, now):
                    after = evolve(after, event)
                    events.append(event)
            if not events:
                return state, []
            try:
                return await self.append(state, events, now, conn=conn)
            except ConcurrencyError:
                state = None
                # jittered backoff so a crowd of writers on one run does not retry in lockstep
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise ConcurrencyError(f"run {run_id}: gave up after {self.max_attempts} concurrent appends")
