"""The data directory of `app-engine up`, and the file that says what runs on it.

Everything lives in one directory (``Layout``): ``postgres/`` (PGDATA), ``nats/`` (JetStream
store), ``files/`` (the services' DATA_DIR), ``logs/`` (one file per process), ``embedded.json``
(``EmbeddedState``: the URLs and ports of the stack, read by tools and tests) and
``app-engine.lock`` (held while a stack runs). The ports of PostgreSQL and NATS are kept in the
state file and reused on the next start when they are free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

LOOPBACK = "127.0.0.1"


class StartupFailed(Exception):
    """The stack cannot start; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where each kind of data lives under the data directory."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "embedded.json"

    @property
    def lock(self) -> Path:
        return self.root / "app-engine.lock"

    def create(self) -> None:
        for path in (self.root, self.files, self.logs):
            path.mkdir(parents=True, exist_ok=True)


class EmbeddedState(msgspec.Struct, kw_only=True):
    """``<data-dir>/embedded.json``: what a running `app-engine up` serves and where.

    ``pid`` is the supervisor's while it runs, null after a clean stop. ``services`` are the
    ports the services listened on at start-up (a restarted service may move).
    """

    pid: int | None = None
    api_url: str = ""
    data_dir: str = ""
    database_url: str = ""
    nats_url: str = ""
    postgres_port: int | None = None
    nats_port: int | None = None
    services: dict[str, int] = {}


def read_state(path: Path) -> EmbeddedState:
    """The state file, or an empty state when there is none (or it cannot be read)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=EmbeddedState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return EmbeddedState()


def write_state(path: Path, state: EmbeddedState) -> None:
    """Replace the state file atomically; private, since an external DATABASE_URL may hold a password."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold the data directory for this process: two stacks on one directory would corrupt it."""
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise StartupFailed(
                f"another `app-engine up` (pid {holder}) is using {lock_path.parent}; stop it or use another --data-dir"
            ) from None
        _write_pid(handle)
        yield  # the lock goes with the descriptor, even if this process is killed


def _write_pid(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on the loopback interface, else any free port."""
    for port in ((preferred,) if preferred else ()) + (0,):
        with socket.socket() as sock:
            # as the servers themselves do, so a port in TIME_WAIT still counts as free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise StartupFailed("no free TCP port on the loopback interface")
