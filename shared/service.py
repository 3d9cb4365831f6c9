"""Running a service: infrastructure as aiohttp cleanup contexts, and the process entry point.

Every resource is opened in one place, in dependency order (PostgreSQL, NATS, then what uses
them, such as the relay), and closed in reverse by aiohttp. Shutdown on SIGTERM/SIGINT: the
listening socket closes (no new intake), in-flight requests get ``SHUTDOWN_TIMEOUT`` seconds,
then background tasks are cancelled and awaited and connections closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

import asyncpg
import msgspec
import nats
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from shared.contracts import Subjects
from shared.logs import configure_logging
from shared.runlog.relay import Relay
from shared.runlog.runs import RunLog
from shared.runlog.schema import check_schema_name, migrate
from shared.runlog.store import EventStore, keep_session
from shared.settings import CommonSettings, SettingsError, load_settings
from shared.web import ESSENTIAL, READINESS

log = structlog.get_logger("service")

POOL = web.AppKey("pool", asyncpg.Pool)
STORE = web.AppKey("store", EventStore)
RUNLOG = web.AppKey("runlog", RunLog)
NATS_CLIENT = web.AppKey("nats", NATS)
JETSTREAM = web.AppKey("jetstream", JetStreamContext)
SUBJECTS = web.AppKey("subjects", Subjects)
RELAY = web.AppKey("relay", Relay)

S = TypeVar("S", bound=CommonSettings)
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

STARTUP_ATTEMPTS = 60  # about a minute of waiting for PostgreSQL / NATS to come up
POOL_CLOSE_TIMEOUT = 5.0


async def _retrying(what: str, attempt: Callable[[], Awaitable[object]]) -> object:
    for n in range(STARTUP_ATTEMPTS):
        try:
            return await attempt()
        except (OSError, asyncpg.PostgresError, nats.errors.Error, TimeoutError) as exc:
            if n == STARTUP_ATTEMPTS - 1:
                raise
            log.warning("startup.waiting", dependency=what, error=repr(exc))
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def postgres_ctx(settings: CommonSettings, name: str) -> CleanupCtx:
    """Pool, migrations, the event store and the run log.

    The sessions carry ``application_name`` = the service's name, so ``pg_stat_activity`` and
    the server's log say which service a query came from.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        schema = check_schema_name(settings.database_schema)

        async def connect() -> asyncpg.Pool:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=1,
                max_size=settings.database_pool_size,
                timeout=5,
                reset=keep_session,
                server_settings={"application_name": f"appengine-{name}"},
            )
            assert pool is not None
            return pool

        pool = await _retrying("postgres", connect)
        assert isinstance(pool, asyncpg.Pool)
        async with pool.acquire() as conn:
            await migrate(conn, schema)
        store = EventStore(pool, schema)
        app[POOL] = pool
        app[STORE] = store
        app[RUNLOG] = RunLog(store)

        async def check() -> None:
            await pool.fetchval("SELECT 1", timeout=2)

        app[READINESS]["postgres"] = check
        try:
            yield
        finally:
            try:
                # close() waits for every connection to come back: not for ever
                async with asyncio.timeout(POOL_CLOSE_TIMEOUT):
                    await pool.close()
            except TimeoutError:
                log.warning("postgres.close_timed_out", seconds=POOL_CLOSE_TIMEOUT)
                pool.terminate()

    return ctx


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the event and job streams when missing (safe from several services at once).

    An existing stream is left as it is: operators size it (replicas, ``max_bytes``,
    ``max_age``) after creation, and a service restart must not undo that. Only a stream that no
    longer captures our subjects is reported, loudly.
    """
    for config in (subjects.events_stream_config(), subjects.jobs_stream_config()):
        try:
            await js.add_stream(config)
        except BadRequestError:
            assert config.name is not None
            info = await js.stream_info(config.name)
            missing = set(config.subjects or ()) - set(info.config.subjects or ())
            if missing:
                log.error("nats.stream_misconfigured", stream=config.name, missing_subjects=sorted(missing))


def nats_ctx(settings: CommonSettings, name: str) -> CleanupCtx:
    """A NATS connection that reconnects forever, with the streams in place."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        subjects = Subjects(prefix=settings.nats_subject_prefix)

        async def connect() -> NATS:
            return await nats.connect(
                # several servers of a cluster may be listed, comma-separated
                [url.strip() for url in settings.nats_url.split(",") if url.strip()],
                name=f"appengine-{name}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                # at shutdown the consumers are already stopped: nothing worth waiting 30 s for
                drain_timeout=5,
            )

        nc = await _retrying("nats", connect)
        assert isinstance(nc, NATS)
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        app[NATS_CLIENT] = nc
        app[JETSTREAM] = js
        app[SUBJECTS] = subjects
        wake_subject = subjects.outbox_wake(settings.database_schema)

        async def wake_relay() -> None:
            await nc.publish(wake_subject, b"")

        app[STORE].on_commit = wake_relay

        async def check() -> None:
            if not nc.is_connected:
                raise ConnectionError("not connected to NATS")
            await js.account_info()

        app[READINESS]["nats"] = check
        try:
            yield
        finally:
            await _close_nats(nc)

    return ctx


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], what: str, *, grace: float = 2.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again while any runs on.

    One cancellation is not always enough: on Python 3.11 ``asyncio.wait_for`` (which nats-py
    uses under ``fetch``) swallows it when its inner future completes at the same moment, and a
    loop around such a call then goes on for ever, hanging whoever awaits it. A task gets
    ``grace`` seconds to finish what its cancellation starts (a run handed back, a connection
    closed) before the next cancellation, which would cut that short. Exceptions of the tasks
    are left on them for their owner to read.
    """
    pending = {task for task in tasks if not task.done()}
    wait = grace
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait)
        for task in pending:
            log.warning("task.cancel_ignored", task=what, at=_where(task))
        wait = 1.0


def _where(task: asyncio.Task[Any]) -> list[str]:
    """Where a task is suspended, outermost call first, down the chain of awaited coroutines:
    which library ignored a cancellation."""
    places = []
    awaited: Any = task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        frame = awaited.cr_frame
        places.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = awaited.cr_await
    if awaited is not None:
        places.append(repr(awaited)[:200])
    return places


async def _close_nats(nc: NATS) -> None:
    """Drain when connected (pending publishes go out); otherwise, or if draining fails, close."""
    if nc.is_connected:
        try:
            await nc.drain()
            return
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning("nats.drain_failed", error=repr(exc))
    if not nc.is_closed:
        await nc.close()


@contextlib.asynccontextmanager
async def owned_task(name: str, work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``work`` as a task owned by the enclosing block: cancelled and awaited on exit."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        await cancel_and_wait([task], name)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed", task=name, error=repr(task.exception()))


# set by :func:`serve` (not by tests): what to do when an essential loop ends
STOP_ON_LOOP_END: web.AppKey[Callable[[str], None]] = web.AppKey("stop_on_loop_end")
EXIT_LOOP_ENDED = 70  # EX_SOFTWARE
EXIT_SHUTDOWN_OVERRAN = 71
# beyond the timeouts a shutdown waits for: closing NATS (drain_timeout 5 s, then a flush of up to
# 10 s) and the PostgreSQL pool (POOL_CLOSE_TIMEOUT)
SHUTDOWN_SLACK = 20.0


@contextlib.asynccontextmanager
async def essential_task(
    app: web.Application, name: str, work: Coroutine[Any, Any, None]
) -> AsyncIterator[asyncio.Task[None]]:
    """:func:`owned_task` for a loop the service cannot do without: ``/health`` and ``/ready``
    answer 503 if it ever ends while the block is open, so that the process gets restarted."""
    open_ = True

    def ended(task: asyncio.Task[None]) -> None:
        if open_ and not task.cancelled():
            log.critical("task.ended", task=name, error=repr(task.exception()), hint="the process needs a restart")
            stop = app.get(STOP_ON_LOOP_END)
            if stop is not None:
                stop(name)

    async with owned_task(name, work) as task:
        task.add_done_callback(ended)
        app[ESSENTIAL][name] = task
        try:
            yield task
        finally:
            open_ = False
            app[ESSENTIAL].pop(name, None)


def relay_ctx(settings: CommonSettings, name: str) -> CleanupCtx:
    """The outbox relay; active in at most one process at a time (advisory lock)."""
    server_settings = {"application_name": f"appengine-{name}-relay"}

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        relay = Relay(
            lambda: asyncpg.connect(settings.database_url, timeout=5, server_settings=server_settings),
            settings.database_schema,
            app[JETSTREAM],
            app[SUBJECTS],
            wake_source=app[NATS_CLIENT],
        )
        app[RELAY] = relay
        async with essential_task(app, "relay", relay.run()):
            yield

    return ctx


def infrastructure(app: web.Application, settings: CommonSettings, name: str) -> None:
    """Register PostgreSQL, NATS and (if enabled) the relay, in dependency order."""
    app.cleanup_ctx.append(postgres_ctx(settings, name))
    app.cleanup_ctx.append(nats_ctx(settings, name))
    if settings.relay_enabled:
        app.cleanup_ctx.append(relay_ctx(settings, name))


class Shutdown:
    """How a service process stops: once, gracefully, within a hard deadline.

    The first SIGTERM or SIGINT, or the end of an essential loop, starts aiohttp's graceful
    shutdown. Whatever comes after (a second signal, a loop that ends because PostgreSQL or NATS
    went down with us, as when ``app-engine up`` is killed) changes nothing: a second
    ``GracefulExit`` would cancel the shutdown half-way and leave connections and containers to
    chance. If the shutdown still has not ended ``deadline`` seconds after it began, a thread
    ends the process with :data:`EXIT_SHUTDOWN_OVERRAN`, so a wedged library never keeps a
    stopped service alive.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reason: str | None = None
        self.ended: list[str] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request, sig.name)

    def loop_ended(self, name: str) -> None:
        """An essential loop ended: stop, and exit non-zero so that a supervisor restarts us."""
        if self.reason is None:
            self.ended.append(name)
        self.request(f"loop {name} ended")

    def request(self, reason: str) -> None:
        if self.reason is not None:
            log.info("service.already_stopping", reason=reason, stopping_for=self.reason)
            return
        self.reason = reason
        log.info("service.stopping", reason=reason, deadline_seconds=self.deadline)
        timer = threading.Timer(self.deadline, self._overran)
        timer.daemon = True
        timer.start()
        raise web.GracefulExit()

    def _overran(self) -> None:
        # straight to the descriptor: the logger's lock may be held by the wedged main thread
        line = msgspec.json.encode(
            {"event": "service.shutdown_overran", "level": "critical", "deadline_seconds": self.deadline}
        )
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), line + b"\n")
        os._exit(EXIT_SHUTDOWN_OVERRAN)


def serve(
    name: str,
    settings_cls: type[S],
    build: Callable[[S], web.Application],
    *,
    default_port: int,
) -> None:
    """The process entry point of a service: settings, logs, app, serve until signalled."""
    try:
        settings = load_settings(settings_cls, port=default_port)
    except SettingsError as exc:
        print(f"{name}: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(name, settings.log_level, settings.log_format)
    app = build(settings)
    # aiohttp waits shutdown_timeout for in-flight requests and as long again once it has
    # cancelled them; the executor then gives its running jobs shutdown_timeout
    shutdown = Shutdown(deadline=3 * settings.shutdown_timeout + SHUTDOWN_SLACK)

    async def signals(app: web.Application) -> AsyncIterator[None]:
        shutdown.install(asyncio.get_running_loop())
        yield

    # first, before anything is opened (a signal during the rest of startup aborts it: aiohttp
    # then closes the contexts already entered without the orderly cleanup)
    app.cleanup_ctx.insert(0, signals)
    app[STOP_ON_LOOP_END] = shutdown.loop_ended
    log.info("service.starting", host=settings.host, port=settings.port, prefix=settings.route_prefix)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=None,
        handle_signals=False,
    )
    if shutdown.ended:
        log.error("service.stopped", ended=shutdown.ended, exit_code=EXIT_LOOP_ENDED)
        raise SystemExit(EXIT_LOOP_ENDED)
    log.info("service.stopped")
