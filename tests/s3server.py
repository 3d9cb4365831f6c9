"""A real S3 server for the tests: moto's server mode in a child process on loopback.

A child process rather than moto's in-process ``ThreadedMotoServer``: the server then shares
neither the GIL nor the heap with the tests, so throughput is realistic and the memory the tests
measure (``tracemalloc``) is the client's alone. The server keeps everything in memory and dies
with the process; tests isolate themselves by using a fresh bucket each.
"""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.support import free_port

STARTUP_TIMEOUT = 30.0


class MotoServerError(RuntimeError):
    pass


def _responds(port: int) -> bool:
    # http.client ignores HTTP(S)_PROXY, so a proxy in the environment cannot answer for moto
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/moto-api/")
        return conn.getresponse().status < 500
    except OSError:
        return False
    finally:
        conn.close()


def _start(log: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MotoServerError(f"moto server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if _responds(port):
            return proc, port
        time.sleep(0.05)
    _stop(proc)
    raise MotoServerError(f"moto server not answering on port {port}:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def moto_server(log: pathlib.Path, attempts: int = 3) -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1 and yield its endpoint URL; stop it on exit.

    The free port is found by binding port 0 and releasing it, which another process could take
    in between: startup is retried on a new port a few times. The server's log goes to ``log``.
    """
    for attempt in range(attempts):
        try:
            proc, port = _start(log)
            break
        except MotoServerError:
            if attempt == attempts - 1:
                raise
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
