"""Services as real, separate processes for tests (``python -m services.<name>``).

A test that kills a service must kill a process: in-process test servers share the event loop,
the database pool and the NATS connection of the test, so "crashing" one of them is a polite
cancellation, not a crash. :class:`ServiceProcess` starts one service with its own port and a
JSON log file, waits for ``/health`` and ``/ready``, and stops it with SIGTERM or SIGKILL.
:class:`Processes` owns every process of a test and stops them all in its ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import IO

import aiohttp

from services.executor.settings import ExecutorSettings
from services.registry.settings import RegistrySettings
from services.scheduler.settings import SchedulerSettings
from services.storage.settings import StorageSettings
from tests.support import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent

# every variable a service reads: values inherited from the shell running the tests are dropped,
# so a developer's environment cannot change what a test runs
_SETTINGS_VARS = frozenset(
    name.upper()
    for cls in (ExecutorSettings, RegistrySettings, SchedulerSettings, StorageSettings)
    for name in cls.__struct_fields__
) - {"DOCKER_HOST"}


class ServiceProcess:
    """One service process: ``module`` is ``registry``, ``scheduler``, ``storage`` or ``executor``
    (or a dotted module path, for a test's own service).

    ``name`` tells processes of the same module apart (``executor-1``); it names the log file,
    which survives restarts (each start appends).
    """

    def __init__(self, name: str, module: str, env: Mapping[str, str], log_dir: pathlib.Path) -> None:
        self.name = name
        self.module = module
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, *, new_port: bool = False) -> None:
        """Start the process (not waiting for it to serve); ``new_port`` picks a fresh port."""
        assert not self.running, f"{self.name} already running"
        if new_port:
            self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARS}
        env.update(
            {
                "HOST": "127.0.0.1",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "info",
                "SHUTDOWN_TIMEOUT": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        env["PORT"] = str(self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module if "." in self.module else f"services.{self.module}"],
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest does not reach it: Processes.close() does
        )

    async def wait_ready(self, within: float = 60.0) -> None:
        """Until ``/health`` and ``/ready`` answer 200; fails early if the process exits."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for path in ("/health", "/ready"):
                while True:
                    if self.proc is None or self.proc.poll() is not None:
                        code = None if self.proc is None else self.proc.returncode
                        raise RuntimeError(f"{self.name} exited ({code}) during start-up:\n{self.log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with session.get(self.url + path) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} not ready ({path}) within {within}s:\n{self.log_tail()}")
                    await asyncio.sleep(0.1)

    async def start(self, *, new_port: bool = False, within: float = 60.0) -> None:
        self.spawn(new_port=new_port)
        await self.wait_ready(within)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, sockets are closed by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self._close_log()

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, grace)
        self.kill()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_records(self) -> list[dict[str, object]]:
        """The JSON lines of the log (other lines, such as tracebacks, are skipped)."""
        records: list[dict[str, object]] = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        records.append(record)
        return records

    def log_tail(self, lines: int = 40, *, requests: bool = True) -> str:
        """The last ``lines`` of the log; without the access log lines unless ``requests``."""
        try:
            kept = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        if not requests:
            kept = [line for line in kept if '"event": "http.request"' not in line]
        return "\n".join(kept[-lines:])


class Processes:
    """The service processes of one test; :meth:`close` stops them all (SIGKILL after a grace)."""

    def __init__(self, base_env: Mapping[str, str], log_dir: pathlib.Path) -> None:
        self.base_env = dict(base_env)
        self.log_dir = log_dir
        self.services: dict[str, ServiceProcess] = {}

    def add(self, name: str, module: str | None = None, **env: str) -> ServiceProcess:
        service = ServiceProcess(name, module or name, self.base_env | env, self.log_dir)
        self.services[name] = service
        return service

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    async def start(self, *names: str, within: float = 90.0) -> None:
        """Spawn ``names`` together, then wait for each to be ready."""
        for name in names:
            self.services[name].spawn()
        for name in names:
            await self.services[name].wait_ready(within)

    async def close(self, grace: float = 5.0) -> None:
        # all at once: executors first would be politer, but a test's end need not be polite
        await asyncio.gather(*(s.stop(grace) for s in self.services.values()), return_exceptions=True)

    def logs(self) -> str:
        """The tail of every log, for a failure message."""
        return "\n".join(f"--- {s.name} ({s.log_path})\n{s.log_tail(requests=False)}" for s in self.services.values())
