"""The machine a benchmark ran on, printed with its figures so they can be compared.

Everything here is best effort: a figure that cannot be read is reported as ``unknown``,
never an error, so a benchmark still runs against a remote database or in a container.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped, unused-ignore]

PG_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "autovacuum",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fdatasync_latency_us(samples: int = 200) -> float | None:
    """Median time of an 8 kB write + fdatasync in the temporary directory (its disk may not be
    the database's: label it as such)."""
    if not hasattr(os, "fdatasync"):
        return None
    block = os.urandom(8192)
    times: list[float] = []
    with tempfile.NamedTemporaryFile(prefix="bench_fsync_") as f:
        fd = f.fileno()
        for _ in range(samples):
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def host_lines() -> list[tuple[str, str]]:
    mem = psutil.virtual_memory()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    fsync_us = fdatasync_latency_us()
    return [
        ("CPU", cpu_model()),
        ("cores", f"{psutil.cpu_count(logical=True)} logical, {psutil.cpu_count(logical=False)} physical"),
        ("memory", f"{mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", platform.python_version()),
        ("load average (1, 5, 15 min)", load),
        (
            f"8 kB write+fdatasync in {tempfile.gettempdir()}",
            "unknown" if fsync_us is None else f"{fsync_us:.0f} µs (median of 200)",
        ),
    ]


async def postgres_lines(conn: asyncpg.Connection) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Lines describing the server, and its settings by name."""
    version = await conn.fetchval("SELECT version()")
    rows = await conn.fetch(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])", list(PG_SETTINGS)
    )
    settings = {r["name"]: r["setting"] for r in rows}
    shown: dict[str, str] = {}
    for r in rows:
        unit = r["unit"] or ""
        value = r["setting"]
        if unit == "8kB":
            value = f"{int(value) * 8 // 1024} MB"
        elif unit:
            value = f"{value} {unit}"
        shown[r["name"]] = value
    lines = [("PostgreSQL", str(version).split(" on ")[0])]
    lines += [(f"  {name}", shown.get(name, "unknown")) for name in PG_SETTINGS]
    return lines, settings


def code_lines() -> list[tuple[str, str]]:
    """The commit of the code measured, and whether the work tree had changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return [("code", "unknown (not a git work tree)")]
    return [("code", f"commit {head}" + (" with uncommitted changes" if dirty else ""))]


def print_lines(title: str, lines: list[tuple[str, str]]) -> None:
    print(title)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table (pasted as is into docs/benchmarks.md)."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--nats-url``: else ``BENCH_*``, else ``TEST_*``, else loopback."""
    env = os.environ.get
    parser.add_argument(
        "--database-url", default=env("BENCH_DATABASE_URL", env("TEST_DATABASE_URL", DEFAULT_DATABASE_URL))
    )
    parser.add_argument("--nats-url", default=env("BENCH_NATS_URL", env("TEST_NATS_URL", DEFAULT_NATS_URL)))
