"""The four services as real, separate processes for a benchmark (``python -m services.<name>``).

Each stack has its own database schema (``bench_<random>``), NATS subject prefix
(``bench<random>``), data directory and executor id, so it shares nothing with other stacks or
test suites on the same PostgreSQL, NATS and Docker. :meth:`Stack.close` stops the processes
(SIGTERM, then SIGKILL), removes the executor's containers, drops the schema and deletes the
streams, also after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiodocker
import aiohttp
import asyncpg
import nats

from services.executor.runtime import LABEL_EXECUTOR
from services.executor.settings import ExecutorSettings
from services.registry.settings import RegistrySettings
from services.scheduler.settings import SchedulerSettings
from services.storage.settings import StorageSettings
from shared.contracts import Subjects

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("registry", "scheduler", "storage", "executor")

# every variable a service reads: inherited values of these are dropped so that the shell that
# runs the benchmark cannot change what is measured
_SETTINGS_VARS = frozenset(
    name.upper()
    for cls in (ExecutorSettings, RegistrySettings, SchedulerSettings, StorageSettings)
    for name in cls.__struct_fields__
) - {"DOCKER_HOST"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    """Registry, scheduler, storage and executor processes over one schema and subject prefix."""

    database_url: str
    nats_url: str
    workdir: Path
    executor_slots: int = 4
    stop_grace_seconds: float = 2.0
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    names: tuple[str, ...] = SERVICES  # the services to start, in this order: a benchmark may need fewer
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return f"bench_{self.token}"

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=f"bench{self.token}")

    @property
    def executor_id(self) -> str:
        return f"bench-{self.token}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def url(self, name: str) -> str:
        return self.services[name].url

    def pids(self) -> dict[str, int]:
        return {name: s.pid for name, s in self.services.items() if s.process is not None}

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARS}
        env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.services[name].port),
                "DATABASE_URL": self.database_url,
                "NATS_URL": self.nats_url,
                "DATABASE_SCHEMA": self.schema,
                "NATS_SUBJECT_PREFIX": self.subjects.prefix,
                "DATA_DIR": str(self.data_dir),
                "LOG_LEVEL": "info",
                "LOG_FORMAT": "json",
                "SHUTDOWN_TIMEOUT": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if name == "registry":
            env["MAX_BUNDLE_SIZE"] = str(256 * 1024**2)
        if name == "executor":
            env.update(
                {
                    "STORAGE_URL": self.url("storage"),
                    "EXECUTOR_ID": self.executor_id,
                    "EXECUTOR_SLOTS": str(self.executor_slots),
                    "STOP_GRACE_SECONDS": str(self.stop_grace_seconds),
                }
            )
        env.update(self.extra_env.get(name, {}))
        return env

    async def start(self, within: float = 90.0) -> None:
        """Start every service and wait until each answers ``/health`` and ``/ready``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.services[name] = Service(name, free_port(), logs / f"{name}.log")
        for name in self.names:
            await self._spawn(name)
        await self.wait_ready(within)

    async def _spawn(self, name: str) -> None:
        service = self.services[name]
        service.log_file = service.log_path.open("ab")
        service.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{name}",
            cwd=str(ROOT),
            env=self._env(name),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=service.log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches the services through close()
        )

    async def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for name, service in self.services.items():
                for path in ("/health", "/ready"):
                    while True:
                        assert service.process is not None
                        if service.process.returncode is not None:
                            raise RuntimeError(
                                f"{name} exited with {service.process.returncode} during start-up:\n"
                                + service.log_tail()
                            )
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                            async with session.get(service.url + path) as resp:
                                if resp.status == 200:
                                    break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{name} not ready ({path}) within {within}s:\n" + service.log_tail())
                        await asyncio.sleep(0.1)

    async def restart(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        """Stop one service and start it again (with more settings)."""
        if extra_env:
            self.extra_env.setdefault(name, {}).update(extra_env)
        await self._stop_one(self.services[name])
        await self._spawn(name)
        await self.wait_ready(60.0)

    async def _stop_one(self, service: Service, grace: float = 15.0) -> None:
        process = service.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if service.log_file is not None:
            service.log_file.close()
            service.log_file = None

    async def stop(self) -> None:
        # the executor first: it stops taking jobs while the others still answer it
        for name in reversed(SERVICES):
            if name in self.services:
                await self._stop_one(self.services[name])

    async def close(self) -> None:
        """Stop the processes, then remove every trace of the stack (best effort, each step)."""
        with contextlib.suppress(Exception):
            await self.stop()
        with contextlib.suppress(Exception):
            await remove_containers({LABEL_EXECUTOR: self.executor_id})
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.database_url, timeout=10)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            finally:
                await conn.close()
        with contextlib.suppress(Exception):
            nc = await nats.connect(self.nats_url, connect_timeout=5)
            try:
                js = nc.jetstream()
                for stream in (self.subjects.events_stream, self.subjects.jobs_stream):
                    with contextlib.suppress(Exception):
                        await js.delete_stream(stream)
            finally:
                await nc.close()


async def remove_containers(labels: dict[str, str]) -> int:
    """Force-remove every container carrying all of ``labels``; how many there were."""
    filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
    docker = aiodocker.Docker()
    try:
        listed = await docker.containers.list(all=True, filters=filters)
        for container in listed:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
        return len(listed)
    finally:
        await docker.close()


async def call_json(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    """One request to a service that must answer 200: its JSON body (None when empty)."""
    async with session.request(method, url, **kwargs) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {body[:300]!r}")
        return json.loads(body) if body else None


class FileForm:
    """A ``multipart/form-data`` body of one file part streamed from disk, its length declared,
    as a client uploading a large file sends it: ``data=form.chunks()``, ``headers=form.headers``."""

    READ = 4 * 1024 * 1024

    def __init__(self, path: Path, *, field: str, content_type: str, filename: str | None = None) -> None:
        boundary = uuid.uuid4().hex
        self.path = path
        self.head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename or path.name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(self.head) + path.stat().st_size + len(self.tail)),
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.head
        with self.path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, self.READ):
                yield chunk
        yield self.tail
