"""Bundle upload throughput and memory of the registry, against ``cp`` of the same file.

Builds a task bundle of about ``--size-mib`` MiB (default 2048): a descriptor and a real
``docker save``-format image whose one layer is a tar holding a large incompressible file, zipped
STORED (as image tars usually are; deflating a 2 GiB layer would measure zlib, not the registry).
Starts the registry as its own process (``python -m services.registry``) on a fresh schema, data
directory and subject prefix; uploads the bundle over loopback with a streaming multipart body;
samples the registry's RSS every 20 ms. Baseline in the same run, same disk: ``cp`` of the bundle
followed by ``sync`` of the copy (the registry fsyncs what it stores).

    .venv/bin/python bench/upload.py [--size-mib 2048] [--rounds 2]

Targets: upload throughput at least half of ``cp``'s; registry peak RSS under 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile

import aiohttp
import asyncpg
import nats
import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._images import add_manifest_and_config  # noqa: E402
from bench._machine import code_lines, host_lines, print_lines  # noqa: E402
from bench._stack import FileForm  # noqa: E402
from tests.descriptors import descriptor, params  # noqa: E402

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
MIB = 1024 * 1024

DESCRIPTOR = descriptor(
    "com.cytomine.bench.upload",
    "upload_bench",
    name="Upload benchmark",
    inputs=params([("a", "integer")]),
    outputs=params([("b", "integer")]),
)


def write_layer(path: pathlib.Path, size: int) -> str:
    """A layer tar holding one incompressible file of ``size`` bytes; returns its sha256."""
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    info = tarfile.TarInfo("data/blob.bin")
    info.size = size
    with path.open("wb") as f:

        def put(data: bytes) -> None:
            digest.update(data)
            f.write(data)

        put(info.tobuf(format=tarfile.PAX_FORMAT))
        left = size
        while left:
            n = min(left, len(block))
            put(block[:n])
            left -= n
        put(b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE))
    return digest.hexdigest()


def build_bundle(work: pathlib.Path, size: int) -> pathlib.Path:
    layer = work / "layer.tar"
    layer_digest = write_layer(layer, size)
    image = work / "image.tar"
    with tarfile.open(image, "w") as tar:
        tar.add(layer, add_manifest_and_config(tar, layer_digest, "bench/upload:1"))
    layer.unlink()
    bundle = work / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr("descriptor.yml", DESCRIPTOR)
        z.write(image, "image.tar")
    image.unlink()
    return bundle


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_cp(bundle: pathlib.Path, target: pathlib.Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(bundle), str(target)], check=True)
    subprocess.run(["sync", "-f", str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


async def upload(url: str, bundle: pathlib.Path, proc: psutil.Process) -> tuple[float, int, int]:
    """Seconds to 200, the registry's peak RSS during it, and the HTTP status."""
    peak = proc.memory_info().rss
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    form = FileForm(bundle, field="task", content_type="application/zip", filename="bundle.zip")
    started = time.perf_counter()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session,
            session.post(url, data=form.chunks(), headers=form.headers) as resp,
        ):
            await resp.read()
            status = resp.status
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await sampler
    return elapsed, peak, status


async def main(size_mib: int, rounds: int) -> int:
    print_lines("machine", host_lines() + code_lines())
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-upload-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    suffix = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_{suffix}", f"bench{suffix}"
    proc: subprocess.Popen[bytes] | None = None
    try:
        print(f"building a {size_mib} MiB bundle in {work} ...", flush=True)
        bundle = build_bundle(work, size_mib * MIB)
        size = bundle.stat().st_size
        port = free_port()
        env = os.environ | {
            "PORT": str(port),
            "DATABASE_URL": DATABASE_URL,
            "NATS_URL": NATS_URL,
            "DATABASE_SCHEMA": schema,
            "NATS_SUBJECT_PREFIX": prefix,
            "DATA_DIR": str(work / "data"),
            "LOG_LEVEL": "warning",
            "MAX_BUNDLE_SIZE": str(size * 2),
        }
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], env=env, cwd=ROOT)
        registry = psutil.Process(proc.pid)
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
        idle_rss = registry.memory_info().rss
        print(f"\nbundle: {size / MIB:.0f} MiB; registry idle RSS {idle_rss / MIB:.1f} MiB\n")
        header = ("round", "cp s", "cp MiB/s", "upload s", "upload MiB/s", "ratio", "peak RSS MiB")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 8, 9, 9, 13, 6, 13), strict=True)))
        ratios, peaks = [], []
        url = f"http://127.0.0.1:{port}/app-engine/v1/tasks"
        for n in range(1, rounds + 1):
            cp_s = time_cp(bundle, work / "copy.zip")
            up_s, peak, status = await upload(url, bundle, registry)
            if status != 200:
                print(f"upload failed with {status}")
                return 1
            async with aiohttp.ClientSession() as session:
                await session.delete(f"{url}/com.cytomine.bench.upload/1.0.0")
            ratio = cp_s / up_s
            ratios.append(ratio)
            peaks.append(peak)
            print(
                f"{n:>5} {cp_s:>8.2f} {size / MIB / cp_s:>9.0f} {up_s:>9.2f} {size / MIB / up_s:>13.0f} "
                f"{ratio:>6.2f} {peak / MIB:>13.1f}"
            )
        best, worst_peak = max(ratios), max(peaks)
        print(f"\nthroughput vs cp: median {sorted(ratios)[len(ratios) // 2]:.2f}, best {best:.2f} (target >= 0.50)")
        print(f"registry peak RSS: {worst_peak / MIB:.1f} MiB (target < 150 MiB)")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
        conn = await asyncpg.connect(DATABASE_URL)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        for name in (f"{prefix.upper()}_EVENTS", f"{prefix.upper()}_JOBS"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.size_mib, args.rounds)))
