"""`app-engine up`: the whole App Engine on one machine, from one command.

Start-up, in dependency order: PostgreSQL and NATS (embedded unless DATABASE_URL / NATS_URL name
existing servers), the four services, then the gateway on the public port. Each step is pushed on
one exit stack, so whatever was started is stopped in reverse order: the gateway stops taking
requests, the services drain, then NATS, then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from services.embedded.datadir import (
    LOOPBACK,
    EmbeddedState,
    Layout,
    StartupFailed,
    exclusive,
    free_port,
    read_state,
    write_state,
)
from services.embedded.gateway import SERVICES, build_gateway
from services.embedded.servers import (
    docker_engine,
    initdb_spec,
    nats_answers,
    nats_spec,
    nats_url,
    postgres_account,
    postgres_answers,
    postgres_spec,
    postgres_url,
    prepare_pgdata,
    service_env,
)
from services.embedded.settings import UpSettings
from services.embedded.supervisor import ProcessSpec, Supervisor, spawn
from shared.logs import configure_logging

log = structlog.get_logger("supervisor")

SERVER_STARTUP_TIMEOUT = 60.0
# the services themselves wait about a minute for PostgreSQL and NATS before giving up
SERVICE_STARTUP_TIMEOUT = 120.0


class StartupAborted(Exception):
    """Stop was requested (or a child gave up) before the stack was up."""


async def wait_ready(
    what: str, probe: Callable[[], Awaitable[bool]], supervisor: Supervisor, *, within: float, log_path: Path
) -> None:
    """Poll ``probe`` until it answers True; abort on shutdown, fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = "no answer yet"
    while True:
        if supervisor.shutdown.is_set():
            raise StartupAborted(what)
        try:
            if await probe():
                return
        except Exception as exc:  # whatever a probe raises means "not yet"; the last one is reported
            last = f"{type(exc).__name__}: {exc}"
        if loop.time() > deadline:
            raise StartupFailed(f"{what} is not ready after {within:.0f}s ({last}); see {log_path}")
        await asyncio.sleep(0.1)


def _check_listen(host: str, port: int) -> None:
    # before anything starts, so a busy port fails in a second rather than after the whole start-up
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise StartupFailed(
            f"cannot listen on {host}:{port} ({os.strerror(exc.errno or 0)}); choose another with --port"
        ) from None


async def _start_postgres(
    stack: contextlib.AsyncExitStack, supervisor: Supervisor, layout: Layout, previous: EmbeddedState
) -> tuple[str, int]:
    account = postgres_account()
    prepare_pgdata(layout, account)
    init = initdb_spec(layout, account)
    if init is not None:
        log.info("postgres.initdb", pgdata=str(layout.postgres))
        returncode = await (await spawn(init)).wait()
        if returncode != 0:
            raise StartupFailed(f"initdb failed (exit {returncode}); see {init.log_path}")
        if supervisor.shutdown.is_set():
            raise StartupAborted("initdb")
    port = free_port(previous.postgres_port)
    child = supervisor.child("postgres", lambda: postgres_spec(layout, account, port))
    stack.push_async_callback(child.stop)
    await child.start()
    url = postgres_url(port)
    await wait_ready(
        "PostgreSQL",
        lambda: postgres_answers(url),
        supervisor,
        within=SERVER_STARTUP_TIMEOUT,
        log_path=layout.logs / "postgres.log",
    )
    return url, port


async def _start_nats(
    stack: contextlib.AsyncExitStack, supervisor: Supervisor, layout: Layout, previous: EmbeddedState
) -> tuple[str, int]:
    layout.nats.mkdir(exist_ok=True)
    port = free_port(previous.nats_port)
    child = supervisor.child("nats", lambda: nats_spec(layout, port))
    stack.push_async_callback(child.stop)
    await child.start()
    url = nats_url(port)
    await wait_ready(
        "NATS", lambda: nats_answers(url), supervisor, within=SERVER_STARTUP_TIMEOUT, log_path=layout.logs / "nats.log"
    )
    return url, port


async def _start_services(
    stack: contextlib.AsyncExitStack,
    supervisor: Supervisor,
    settings: UpSettings,
    layout: Layout,
    database_url: str,
    nats: str,
) -> dict[str, int]:
    ports: dict[str, int] = {}

    def prepare(name: str) -> Callable[[], ProcessSpec]:
        def spec() -> ProcessSpec:
            # a fresh port on every start (a crashed service may have left its port in use), except
            # that storage keeps its port when it can: executors reach it at STORAGE_URL
            port = free_port(ports.get(name)) if name == "storage" else free_port()
            ports[name] = port
            env = service_env(os.environ, database_url=database_url, nats_url=nats, data_dir=layout.files, port=port)
            if name == "executor" and "storage" in ports:
                env.setdefault("STORAGE_URL", f"http://{LOOPBACK}:{ports['storage']}")
            return ProcessSpec(
                argv=[sys.executable, "-m", f"services.{name}"],
                env=env,
                log_path=layout.logs / f"{name}.log",
                # the service drains for SHUTDOWN_TIMEOUT itself; this is the backstop
                stop_timeout=settings.shutdown_timeout + 5,
                port=port,
                # shared.service.serve exits 2 on an invalid setting
                fatal_exit_codes=frozenset({2}),
            )

        return spec

    children = [supervisor.child(name, prepare(name)) for name in SERVICES]
    # the four stop together, after the gateway and before the servers they use
    stack.push_async_callback(Supervisor.stop_all, children)
    for child in children:
        await child.start()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

        def healthy(name: str) -> Callable[[], Awaitable[bool]]:
            async def probe() -> bool:
                base = supervisor.base_url(name)
                if base is None:
                    return False
                async with session.get(f"{base}/health") as resp:
                    return resp.status == 200

            return probe

        # they start in parallel; waiting for each in turn costs nothing more
        for child in children:
            await wait_ready(
                f"the {child.name} service",
                healthy(child.name),
                supervisor,
                within=SERVICE_STARTUP_TIMEOUT,
                log_path=layout.logs / f"{child.name}.log",
            )
    return {child.name: child.spec.port for child in children if child.spec and child.spec.port}


async def _start(
    stack: contextlib.AsyncExitStack, supervisor: Supervisor, settings: UpSettings, layout: Layout
) -> EmbeddedState:
    _check_listen(settings.host, settings.port)
    previous = read_state(layout.state)
    database_url, pg_port = settings.database_url, None
    if settings.embedded_postgres:
        database_url, pg_port = await _start_postgres(stack, supervisor, layout, previous)
    nats, nats_port = settings.nats_url, None
    if settings.embedded_nats:
        nats, nats_port = await _start_nats(stack, supervisor, layout, previous)
    # early, so the servers' URLs are known (and their ports kept) even if the services fail
    write_state(
        layout.state,
        EmbeddedState(
            pid=os.getpid(),
            data_dir=str(layout.root),
            database_url=database_url,
            nats_url=nats,
            postgres_port=pg_port,
            nats_port=nats_port,
        ),
    )
    ports = await _start_services(stack, supervisor, settings, layout, database_url, nats)

    runner = web.AppRunner(
        build_gateway(supervisor, settings.route_prefix), access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        raise StartupFailed(f"cannot listen on {settings.host}:{settings.port} ({exc})") from None

    where, answers = await docker_engine(settings.docker_host)
    if answers is False:
        print(f"no Docker engine found at {where}: tasks cannot run until one is available", flush=True)
    elif answers is None:
        log.info("docker.not_checked", docker_host=where, reason="TLS client certificates")

    return EmbeddedState(
        pid=os.getpid(),
        api_url=f"http://{settings.host}:{settings.port}{settings.route_prefix}",
        data_dir=str(layout.root),
        database_url=database_url,
        nats_url=nats,
        postgres_port=pg_port,
        nats_port=nats_port,
        services=ports,
    )


async def _serve(settings: UpSettings, layout: Layout) -> int:
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop, sig.name)
    try:
        async with contextlib.AsyncExitStack() as stack:
            state = await _start(stack, supervisor, settings, layout)
            write_state(layout.state, state)
            print(
                f"App Engine is up: API at {state.api_url}; data in {layout.root} "
                f"(logs in {layout.logs}). Ctrl-C to stop.",
                flush=True,
            )
            await supervisor.shutdown.wait()
            log.info("supervisor.stopping")
            state.pid = None
        # written after everything stopped: the ports stay for the next start
        write_state(layout.state, state)
    except StartupAborted as exc:
        log.info("supervisor.startup_aborted", waiting_for=str(exc))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("supervisor.stopped", exit_code=supervisor.exit_code)
    return supervisor.exit_code


def up(settings: UpSettings) -> int:
    """Run the stack until SIGINT/SIGTERM; the process exit code (0 after a requested stop)."""
    configure_logging("app-engine", settings.log_level, settings.log_format)
    layout = Layout(Path(settings.data_dir).resolve())
    try:
        layout.create()
        with exclusive(layout.lock):
            return asyncio.run(_serve(settings, layout))
    except StartupFailed as exc:
        print(f"app-engine up: {exc}", file=sys.stderr, flush=True)
        return 1
