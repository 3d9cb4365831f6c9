"""Child processes of `app-engine up`: started, watched, restarted with backoff, stopped in order.

Each child runs in its own session, so a Ctrl-C at the terminal reaches only the supervisor, which
then stops the children in dependency order instead of all at once. Each child also asks the
kernel for a signal when the supervisor dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed
supervisor leaves nothing behind. Output goes to one log file per child under the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger("supervisor")

# A child that ran this long before dying was healthy: its next crash starts a fresh count.
STABLE_AFTER = 60.0
# Consecutive quick crashes tolerated before the supervisor gives up and stops everything.
MAX_QUICK_CRASHES = 5
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 15.0

_PR_SET_PDEATHSIG = 1
# loaded once here: the pre-exec hook runs between fork and exec, where little else is safe
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Account:
    """An unprivileged system user a child runs as (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one incarnation of a child."""

    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    account: Account | None = None
    port: int | None = None
    # exit codes that mean "misconfigured": restarting would only repeat the failure
    fatal_exit_codes: frozenset[int] = frozenset()


def _die_with_parent(sig: signal.Signals, parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # runs after the switch to the child's user, which would otherwise clear the setting
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # the supervisor may have died between fork and prctl: then no signal would ever come
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


async def spawn(spec: ProcessSpec) -> asyncio.subprocess.Process:
    """Start ``spec`` in a new session, output appended to its log file."""
    account = spec.account
    # the child gets its own copy of the descriptor: ours is closed as soon as it is started
    with _open_log(spec.log_path) as out:
        return await asyncio.create_subprocess_exec(
            *spec.argv,
            env=dict(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(spec.stop_signal, os.getpid()),
            user=account.uid if account else None,
            group=account.gid if account else None,
            # drop root's supplementary groups along with its uid
            extra_groups=[] if account else None,
        )


async def stop_process(name: str, process: asyncio.subprocess.Process, spec: ProcessSpec) -> None:
    """Ask ``process`` to stop with its stop signal; SIGKILL its whole session after the deadline."""
    if process.returncode is None:
        try:
            process.send_signal(spec.stop_signal)
            async with asyncio.timeout(spec.stop_timeout):
                await process.wait()
        except ProcessLookupError:
            pass
        except TimeoutError:
            log.warning("process.killed", process=name, pid=process.pid, after_seconds=spec.stop_timeout)
            # still unreaped, so its process group id cannot have been reused: safe to kill it all
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


class Child:
    """One supervised program: restarted when it dies unexpectedly, until stopped or given up."""

    def __init__(self, name: str, prepare: Callable[[], ProcessSpec], on_give_up: Callable[[str], None]):
        self.name = name
        self.state = "stopped"
        self.spec: ProcessSpec | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._prepare = prepare  # called before each start: a restarted service may take a new port
        self._on_give_up = on_give_up
        self._stopping = False
        self._quick_crashes = 0
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.state == "running" and self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the program and the task that watches it."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _spawn(self) -> None:
        self.spec = spec = self._prepare()
        self.process = await spawn(spec)
        self._started_at = asyncio.get_running_loop().time()
        self.state = "running"
        log.info("process.started", process=self.name, pid=self.process.pid, port=spec.port, log=str(spec.log_path))

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            returncode = await self.process.wait() if self.process is not None else None
            if self._stopping:
                return
            ran_for = loop.time() - self._started_at
            self._quick_crashes = 1 if ran_for >= STABLE_AFTER else self._quick_crashes + 1
            log_path = str(self.spec.log_path) if self.spec else None
            if self.spec is not None and returncode in self.spec.fatal_exit_codes:
                self.state = "failed"
                log.critical(
                    "process.gave_up",
                    process=self.name,
                    returncode=returncode,
                    log=log_path,
                    hint=f"it stopped on a configuration error: read {log_path}",
                )
                self._on_give_up(self.name)
                return
            if self._quick_crashes > MAX_QUICK_CRASHES:
                self.state = "failed"
                log.critical(
                    "process.gave_up",
                    process=self.name,
                    returncode=returncode,
                    crashes=self._quick_crashes - 1,
                    log=log_path,
                    hint=f"it keeps dying: read {log_path}",
                )
                self._on_give_up(self.name)
                return
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self._quick_crashes - 1))
            self.state = "restarting"
            log.error(
                "process.exited",
                process=self.name,
                returncode=returncode,
                ran_seconds=round(ran_for, 1),
                restart_in_seconds=delay,
                log=log_path,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except OSError as exc:
                # counted like a crash on the next turn of the loop
                log.error("process.start_failed", process=self.name, error=repr(exc))
                self.process = None
                self._started_at = loop.time()

    async def stop(self) -> None:
        """Stop for good: no restart, stop signal, SIGKILL after the deadline."""
        self._stopping = True
        if self._task is not None:
            # it may be sleeping before a restart: end it first so nothing is respawned
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.process is not None and self.spec is not None:
            self.state = "stopping"
            await stop_process(self.name, self.process, self.spec)
            log.info("process.stopped", process=self.name, pid=self.process.pid, returncode=self.process.returncode)
        self.state = "stopped"


class Supervisor:
    """The supervised children by name, and the event that ends `app-engine up`."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}
        self.shutdown = asyncio.Event()
        self.exit_code = 0

    def child(self, name: str, prepare: Callable[[], ProcessSpec]) -> Child:
        child = Child(name, prepare, self._gave_up)
        self.children[name] = child
        return child

    def _gave_up(self, name: str) -> None:
        self.exit_code = 1
        self.shutdown.set()

    def request_stop(self, reason: str) -> None:
        if self.shutdown.is_set():
            log.info("supervisor.already_stopping", reason=reason)
            return
        log.info("supervisor.stop_requested", reason=reason)
        self.shutdown.set()

    @staticmethod
    async def stop_all(children: Sequence[Child]) -> None:
        """Stop ``children`` together (they do not depend on each other)."""
        results = await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        for child, result in zip(children, results, strict=True):
            if isinstance(result, BaseException):
                log.error("process.stop_failed", process=child.name, error=repr(result))

    # the gateway's view (gateway.Upstreams)

    def base_url(self, service: str) -> str | None:
        child = self.children.get(service)
        if child is None or not child.running or child.spec is None or child.spec.port is None:
            return None
        return f"http://127.0.0.1:{child.spec.port}"

    def processes(self) -> dict[str, str]:
        return {name: child.state for name, child in self.children.items()}
