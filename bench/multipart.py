"""Diagnostic: the CPU a binary provision's multipart body costs to receive, by reader.

Run from the repository root::

    .venv/bin/python bench/multipart.py                 # 512 MiB, 3 rounds
    .venv/bin/python bench/multipart.py --size-mib 64   # quick

Why storage has its own reader (``services/storage/multipart.py``) and not aiohttp's. One aiohttp
server on loopback, in this process, receives the same body with both readers in turn. The body
is a random file sent by aiohttp's client as ``multipart/form-data``, like ``bench/provision.py``
sends it. Each reader does what the provision handler does with each piece: sha256 and a write
to a file in the page cache. Printed: wall time and the server's CPU time in the handler per
GiB, for aiohttp's ``BodyPartReader.read_chunk`` (1 MiB chunks, as storage used before) and for
``MultipartStream``. The client runs in the same process, so the CPU figures include its share:
compare the two rows, not the absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _machine
import aiohttp
from aiohttp import hdrs, web

from services.storage.multipart import MultipartStream, boundary_of

CHUNK = 1024 * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def aiohttp_reader(request: web.Request, out: Path) -> str:
    reader = await request.multipart()
    part = await reader.next()
    assert isinstance(part, aiohttp.BodyPartReader)
    digest = hashlib.sha256()
    with out.open("wb") as f:
        while chunk := await part.read_chunk(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


async def our_reader(request: web.Request, out: Path) -> str:
    parts = MultipartStream(request.content, boundary_of(request.headers[hdrs.CONTENT_TYPE]))
    assert await parts.next_part() is not None
    digest = hashlib.sha256()
    with out.open("wb") as f:
        async for piece in parts.body():
            digest.update(piece)
            f.write(piece)
    return digest.hexdigest()


READERS = {"aiohttp BodyPartReader.read_chunk(1 MiB)": aiohttp_reader, "MultipartStream (storage)": our_reader}


async def main(size_mib: int, rounds: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-multipart-"))
    source, out = workdir / "source.bin", workdir / "out.bin"
    with source.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(CHUNK))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in READERS}

    async def handle(request: web.Request) -> web.Response:
        reader = READERS[request.query["reader"]]
        started = cpu_seconds()
        digest = await reader(request, out)
        return web.json_response({"cpu": cpu_seconds() - started, "sha256": digest})

    app = web.Application(client_max_size=2**40)
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    _machine.print_lines("Machine", _machine.host_lines() + _machine.code_lines())
    print(f"\nbody: {size_mib} MiB of random bytes, {rounds} rounds, the readers taking turns\n")
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(rounds):
                for name in READERS:
                    form = aiohttp.FormData()
                    with source.open("rb") as f:
                        form.add_field("file", f, filename="image.tif", content_type="application/octet-stream")
                        began = time.perf_counter()
                        async with session.post(f"http://127.0.0.1:{port}/", params={"reader": name}, data=form) as r:
                            body = await r.json()
                        wall = time.perf_counter() - began
                    assert body["sha256"] == expected, f"{name}: wrong bytes"
                    results[name].append((wall, body["cpu"]))
                    print(f"  round {n + 1} {name:<42} wall {wall:6.2f} s  cpu {body['cpu']:6.2f} s", flush=True)
    finally:
        await runner.cleanup()
        for path in (source, out):
            path.unlink(missing_ok=True)
        workdir.rmdir()
    gib = size_mib / 1024
    rows = []
    base = statistics.median(c for _, c in results[next(iter(READERS))])
    for name, samples in results.items():
        cpu = statistics.median(c for _, c in samples)
        wall = statistics.median(w for w, _ in samples)
        rows.append((name, f"{wall / gib:.2f}", f"{cpu / gib:.2f}", f"{cpu / base:.2f}"))
    print()
    _machine.table(("reader", "wall s/GiB (median)", "CPU s/GiB (median)", "CPU / aiohttp's"), rows)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.size_mib, args.rounds)))
