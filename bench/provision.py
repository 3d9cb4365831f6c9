"""Provisioning of a large image through the storage service, and reading it back, against ``cp``.

Run from the repository root::

    .venv/bin/python bench/provision.py                              # 1 GiB, 3 rounds, local and S3
    .venv/bin/python bench/provision.py --size-mib 64 --rounds 1     # smoke test, about a minute

It writes an uncompressed RGB TIFF of ``--size-mib`` MiB (a valid image: one strip of pixels,
header first) and starts ``python -m services.{registry,scheduler,storage}`` as separate
processes on a fresh schema, subject prefix and data directory (``bench/_stack.py``). A task whose
one input is an image (``formats: [tiff]``, large ``max_width``/``max_height``, so the storage
service reads the header with Pillow as it does for any image) is registered through the
registry's API. Then, per backend (``--backend local|s3|both``; S3 is moto's server mode on
loopback, in its own process) and per round:

1. **Baselines, same round, same file system:** ``cp`` of the image, and ``cp`` followed by an
   ``fsync`` of the copy. The local blob store fsyncs a blob before renaming it into place, so
   ``cp`` + ``fsync`` is the baseline of provisioning; reading back fsyncs nothing, on either side,
   so plain ``cp`` is the baseline of the read-back.
2. **Provision:** a run is created through the scheduler (``POST …/tasks/{ns}/{v}/runs``) and
   the image sent to ``POST …/task-runs/{run}/input-provisions/img`` as a multipart body streamed
   from disk. Timed from the request to the 200.
3. **Read back:** ``GET …/task-runs/{run}/inputs.zip`` streamed to a file. Timed from the request
   to the last byte. Then, untimed: the zip's entry must have the image's size, CRC-32 and sha256,
   and the run's ``input_provisioned`` event the image's sha256. The input is then cleared
   (provisioned with ``null``), which deletes its blob.
4. **S3 only, baseline of the backend itself:** the same bytes written and read by this process
   with the service's own adapter (``S3BlobStore.put_file`` and ``get``) against the same moto.

During each timed phase a thread samples, every 20 ms, the RSS of the storage process and its
children (the peak is reported, with the kernel's ``VmHWM`` of the process at the end), and when
the service's temporary upload file and the blob's ``.part`` file exist (local backend): these
marks split a provision into receiving, validating, copying into the blob store and recording.
CPU seconds and seconds spent waiting for a CPU (``schedstat``) of the storage process, of this
process (``cp`` included) and of moto are read around each phase, with the cores the rest of the
machine used meanwhile. Before each round the benchmark waits (``--patience``) for the machine to
calm down. Before every timed step it runs ``os.sync()`` and waits 3 s (see ``SETTLE``), untimed,
so that no step pays for an earlier one's dirty pages or profits from its freed memory. Reads
come from the page cache everywhere (the image was just written).

Targets (issue #4): provisioning and read-back on the local backend at least half as fast as
the baseline; the storage process's peak RSS under 150 MB (143 MiB) in every case. The exit
status is 1 on an error (a wrong read-back, a failed request), not on a missed target.

Everything is removed at the end, also on failure or SIGTERM/SIGINT: processes, schema, streams,
the temporary directory (the image included) and moto with its objects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import _machine
import aiohttp
import psutil  # type: ignore[import-untyped, unused-ignore]
from _images import add_manifest_and_config
from _machine import table, verdict
from _stack import ROOT, FileForm, Stack, call_json

from shared.s3blobstore import S3BlobStore, S3Config

sys.path.insert(0, str(ROOT))
from tests.descriptors import descriptor, params
from tests.s3server import moto_server

P = "/app-engine/v1"
MIB = 1024 * 1024
READ = 4 * MIB  # the client's reads from disk and from the response
TARGET_RATIO = 0.5  # local backend: throughput / baseline throughput, at least
TARGET_RSS = 150 * 1000 * 1000  # bytes: peak RSS of the storage process, under
SERVICES = ("registry", "scheduler", "storage")
NAMESPACE, VERSION, PARAM = "com.cytomine.bench.provision", "1.0.0", "img"
# The reference machine is a Firecracker guest that hands free memory back to the host (virtio-balloon
# free page reporting: free 8 MiB blocks, about 2 s after they are freed). Page cache built on such
# memory costs 1-4 s of kernel time per GiB instead of under 1 s, so a copy made right after a large
# file was deleted (reusing its pages) can be 2-4 times faster than the same copy after a pause.
# Every timed step therefore starts after the same pause, longer than the reporting delay. It does
# not remove the effect (see docs/benchmarks.md): compare CPU seconds, and use more rounds.
SETTLE = 3.0
S3_KEYS = {"S3_REGION": "us-east-1", "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": "testing"}

# the image is optional only so that a round can clear it (a `null` provision deletes its blob)
DESCRIPTOR = descriptor(
    NAMESPACE,
    "provision_bench",
    name="Provisioning benchmark",
    version=VERSION,
    inputs=f"  {PARAM}:\n    display_name: Image\n    description: a large uncompressed TIFF\n    optional: true\n"
    "    type: {id: image, formats: [tiff], max_width: 1000000, max_height: 1000000}\n",
    outputs=params([("n", "integer")]),
)

# ---------------------------------------------------------------------------------------------
# the files


@dataclass(frozen=True)
class Image:
    path: Path
    size: int
    width: int
    height: int
    sha256: str
    crc32: int


def write_tiff(path: Path, size: int) -> Image:
    """An uncompressed, untiled RGB TIFF of exactly ``size`` bytes: header and one strip of
    ``width`` x ``height`` pixels (incompressible), zero padding after the strip."""
    width, offset = 8192, 4096
    height = (size - offset) // (3 * width)
    if height < 1:
        raise ValueError(f"{size} bytes is too small for the benchmark's image")
    strip = 3 * width * height
    short, long = 3, 4  # TIFF field types
    tags = [  # (tag, type, count, value), sorted by tag as TIFF requires
        (256, long, 1, width),
        (257, long, 1, height),
        (258, short, 3, 8 + 2 + 10 * 12 + 4),  # BitsPerSample 8,8,8: stored right after the IFD
        (259, short, 1, 1),  # no compression
        (262, short, 1, 2),  # RGB
        (273, long, 1, offset),  # StripOffsets
        (277, short, 1, 3),  # SamplesPerPixel
        (278, long, 1, height),  # RowsPerStrip: one strip
        (279, long, 1, strip),  # StripByteCounts
        (284, short, 1, 1),  # PlanarConfiguration: chunky
    ]
    head = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == short and count == 1 else struct.pack("<I", value)
        head += struct.pack("<HHI", tag, kind, count) + packed
    head += struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8)
    head = head.ljust(offset, b"\0")
    block = os.urandom(MIB)
    digest, crc = hashlib.sha256(), 0
    with path.open("wb") as f:

        def put(data: bytes) -> None:
            nonlocal crc
            digest.update(data)
            crc = zlib.crc32(data, crc)
            f.write(data)

        put(head)
        left = strip
        while left:
            n = min(left, len(block))
            put(block[:n])
            left -= n
        put(b"\0" * (size - offset - strip))
    return Image(path, size, width, height, digest.hexdigest(), crc)


def image_tar() -> bytes:
    """A minimal ``docker save`` archive (the registry checks its manifest and layer digest)."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        layer.addfile(info, io.BytesIO(b"hello\n"))
    layer_bytes = layer_buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        name = add_manifest_and_config(tar, hashlib.sha256(layer_bytes).hexdigest(), "bench/provision:1")
        info = tarfile.TarInfo(name)
        info.size = len(layer_bytes)
        tar.addfile(info, io.BytesIO(layer_bytes))
    return buf.getvalue()


def bundle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("descriptor.yml", DESCRIPTOR)
        z.writestr("image.tar", image_tar())
    return buf.getvalue()


def verify_zip(path: Path, image: Image) -> None:
    """The read-back zip holds the image, byte for byte, under the parameter's name."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if names != [PARAM]:
            raise RuntimeError(f"inputs.zip holds {names}, expected [{PARAM!r}]")
        info = z.getinfo(PARAM)
        if info.file_size != image.size or image.crc32 != info.CRC:
            raise RuntimeError(f"inputs.zip entry: {info.file_size} bytes, CRC {info.CRC:08x}; expected {image.size}")
        digest = hashlib.sha256()
        with z.open(info) as f:  # zipfile checks the CRC-32 again at the end
            while chunk := f.read(READ):
                digest.update(chunk)
    if digest.hexdigest() != image.sha256:
        raise RuntimeError("inputs.zip entry: sha256 differs from the image's")


# ---------------------------------------------------------------------------------------------
# measuring


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """CPU time of the process and its ended children (``cp`` for this process): all, and the
    part spent in the kernel."""
    t = process.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system), float(t.system + t.children_system)


def run_queue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (``schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(task.path, "schedstat").read_text().split()[1])
    return total / 1e9


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (steal and guest time excluded)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


async def quiet(patience: float, cores: float = 0.5) -> float:
    """Wait (at most ``patience`` s) until the machine uses less than ``cores``; the last reading."""
    deadline = time.monotonic() + patience
    while True:
        t0, m0 = time.monotonic(), machine_busy()
        await asyncio.sleep(1.0)
        used = (machine_busy() - m0) / (time.monotonic() - t0)
        if used < cores or time.monotonic() >= deadline:
            return used


def vm_hwm(pid: int) -> int:
    """The kernel's high-water mark of the process's RSS since it started, bytes (0 if unknown)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def has_file(folder: Path, prefix: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(name.startswith(prefix) for name in os.listdir(folder))
        except OSError:
            return False

    return check


class Sampler:
    """In a thread, every 20 ms: the RSS of a process and its children (the peak is kept) and
    the first and last time each watched condition held."""

    def __init__(self, pid: int, watches: Mapping[str, Callable[[], bool]], started: float) -> None:
        self.process = psutil.Process(pid)
        self.watches = dict(watches)
        self.started = started
        self.peak = 0
        self.seen: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _rss(self, processes: Iterable[psutil.Process]) -> int:
        total = 0
        for p in processes:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        children: list[psutil.Process] = []
        tick = 0
        while True:
            if tick % 25 == 0:  # scanning /proc for children costs more than a sample
                with contextlib.suppress(psutil.Error):
                    children = self.process.children(recursive=True)
            tick += 1
            self.peak = max(self.peak, self._rss([self.process, *children]))
            now = time.perf_counter() - self.started
            for name, check in self.watches.items():
                if check():
                    self.seen[name] = (self.seen.get(name, (now, now))[0], now)
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Phase:
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process
    system: dict[str, float] = field(default_factory=dict)  # the part of ``cpu`` spent in the kernel
    waits: dict[str, float] = field(default_factory=dict)  # seconds waiting for a CPU, by process
    others: float = 0.0  # cores used meanwhile by every other process of the machine
    peak_rss: int = 0  # storage process and children, sampled
    marks: dict[str, float] = field(default_factory=dict)  # seconds from the start of the phase


@dataclass
class Reading:
    at: float
    machine: float
    cpu: dict[str, tuple[float, float]]
    waits: dict[str, float]


class Meter:
    """CPU time and run-queue wait of named processes, and the rest of the machine's CPU."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes

    def read(self) -> Reading:
        cpu, waits = {}, {}
        for name, p in self.processes.items():
            with contextlib.suppress(psutil.Error):
                cpu[name] = cpu_seconds(p)
                waits[name] = run_queue_wait(p.pid)
        return Reading(time.perf_counter(), machine_busy(), cpu, waits)

    def phase(self, before: Reading) -> Phase:
        after = self.read()
        seconds = after.at - before.at
        names = [n for n in after.cpu if n in before.cpu]
        cpu = {n: after.cpu[n][0] - before.cpu[n][0] for n in names}
        system = {n: after.cpu[n][1] - before.cpu[n][1] for n in names}
        waits = {n: after.waits[n] - before.waits[n] for n in after.waits if n in before.waits}
        others = max(0.0, after.machine - before.machine - sum(cpu.values())) / seconds
        return Phase(seconds, cpu, system, waits, others)


async def settle() -> None:
    """Before a timed step: write back every dirty page, then let the memory freed meanwhile go
    back to the hypervisor (see SETTLE), so that every step starts from the same state."""
    await asyncio.to_thread(os.sync)
    await asyncio.sleep(SETTLE)


async def timed_cp(meter: Meter, source: Path, target: Path, *, fsync: bool) -> Phase:
    await settle()
    before = meter.read()
    await asyncio.to_thread(subprocess.run, ["cp", "--reflink=never", str(source), str(target)], check=True)
    if fsync:
        fd = os.open(target, os.O_RDONLY)
        try:
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
    phase = meter.phase(before)
    target.unlink()
    return phase


# ---------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class Round:
    cp: Phase
    cp_fsync: Phase
    provision: Phase
    read_back: Phase
    direct_put: Phase | None = None  # S3 only: the adapter from this process
    direct_get: Phase | None = None


@dataclass
class Backend:
    name: str
    idle_rss: int = 0
    hwm: int = 0
    rounds: list[Round] = field(default_factory=list)


class Bench:
    def __init__(
        self, stack: Stack, session: aiohttp.ClientSession, image: Image, work: Path, cpu: dict[str, psutil.Process]
    ) -> None:
        self.stack = stack
        self.session = session
        self.image = image
        self.work = work
        self.meter = Meter(cpu)  # the processes whose CPU time each phase reports
        self.storage = f"{stack.url('storage')}{P}"

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        return await call_json(self.session, method, url, **kwargs)

    async def register(self) -> None:
        form = aiohttp.FormData()
        form.add_field("task", bundle(), filename="bundle.zip", content_type="application/zip")
        await self._call("POST", f"{self.stack.url('registry')}{P}/tasks", data=form)

    async def new_run(self) -> str:
        created = await self._call("POST", f"{self.stack.url('scheduler')}{P}/tasks/{NAMESPACE}/{VERSION}/runs")
        return str(created["id"])

    async def measured(
        self, action: Callable[[float], Awaitable[dict[str, float]]], watches: Mapping[str, Callable[[], bool]]
    ) -> Phase:
        """Run ``action(started)`` with the storage process sampled; its marks join the sampler's."""
        await settle()
        before = self.meter.read()
        with Sampler(self.stack.services["storage"].pid, watches, before.at) as sampler:
            marks = await action(before.at)
        phase = self.meter.phase(before)
        phase.peak_rss, phase.marks = sampler.peak, marks
        for name, (first, last) in sampler.seen.items():
            phase.marks[f"{name} first"], phase.marks[f"{name} last"] = first, last
        return phase

    async def provision(self, run: str, source: Path, started: float) -> dict[str, float]:
        """POST the file as part 1 of a multipart body streamed from disk; the time it was all sent."""
        form = FileForm(source, field="file", content_type="image/tiff")
        marks: dict[str, float] = {}

        async def body() -> AsyncIterator[bytes]:
            async for chunk in form.chunks():
                yield chunk
            marks["sent"] = time.perf_counter() - started  # aiohttp asks for more once the tail is written

        await self._call(
            "POST", f"{self.storage}/task-runs/{run}/input-provisions/{PARAM}", data=body(), headers=form.headers
        )
        return marks

    async def read_back(self, run: str, target: Path, started: float) -> dict[str, float]:
        """GET inputs.zip into ``target``; when the headers came."""
        marks: dict[str, float] = {}
        async with self.session.get(f"{self.storage}/task-runs/{run}/inputs.zip") as resp:
            marks["headers"] = time.perf_counter() - started
            if resp.status != 200:
                raise RuntimeError(f"inputs.zip: {resp.status} {(await resp.read())[:300]!r}")
            with target.open("wb") as f:
                async for chunk in resp.content.iter_any():
                    f.write(chunk)
        return marks

    async def check_event(self, run: str) -> None:
        events = await self._call("GET", f"{self.stack.url('scheduler')}{P}/task-runs/{run}/events")
        if f"sha256:{self.image.sha256}" not in json.dumps(events):
            raise RuntimeError(f"run {run}: no event records the image's sha256")

    async def clear(self, run: str) -> None:
        url = f"{self.storage}/task-runs/{run}/input-provisions/{PARAM}"
        await self._call("PUT", url, json={"parameterName": PARAM, "value": None})

    async def warm_up(self) -> None:
        """One small image provisioned and read back, untimed: imports and first-use costs."""
        small = write_tiff(self.work / "warm.tif", MIB)
        run = await self.new_run()
        await self.provision(run, small.path, time.perf_counter())
        await self.read_back(run, self.work / "warm.zip", time.perf_counter())
        await self.clear(run)
        small.path.unlink()
        (self.work / "warm.zip").unlink()

    async def round(self, backend: str, direct: S3BlobStore | None) -> Round:
        copy, download = self.work / "copy.tif", self.work / "inputs.zip"
        cp = await timed_cp(self.meter, self.image.path, copy, fsync=False)
        cp_fsync = await timed_cp(self.meter, self.image.path, copy, fsync=True)
        run = await self.new_run()
        watches: dict[str, Callable[[], bool]] = {"temp file": has_file(self.stack.data_dir / "tmp" / "storage", "in-")}
        if backend == "local":
            inputs = self.stack.data_dir / "blobs" / "runs" / run / "inputs"
            watches["blob .part"] = has_file(inputs, f".{PARAM}.")
        provision = await self.measured(lambda t: self.provision(run, self.image.path, t), watches)
        read_back = await self.measured(lambda t: self.read_back(run, download, t), {})
        await asyncio.to_thread(verify_zip, download, self.image)
        download.unlink()
        await self.check_event(run)
        await self.clear(run)
        result = Round(cp, cp_fsync, provision, read_back)
        if direct is not None:
            result.direct_put, result.direct_get = await self.direct(direct, download)
        return result

    async def direct(self, store: S3BlobStore, target: Path) -> tuple[Phase, Phase]:
        """The same bytes through the service's S3 adapter from this process: what moto allows."""
        key = f"bench-direct/{uuid.uuid4().hex}"
        await settle()
        before = self.meter.read()
        await store.put_file(key, self.image.path)
        put = self.meter.phase(before)
        await settle()
        before = self.meter.read()
        with target.open("wb") as f:
            async for chunk in store.get(key):
                f.write(chunk)
        get = self.meter.phase(before)
        if target.stat().st_size != self.image.size:
            raise RuntimeError("S3 direct read-back: wrong size")
        target.unlink()
        await store.delete(key)
        return put, get


def moto_process(endpoint: str) -> psutil.Process | None:
    port = endpoint.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "moto.server" in child.cmdline() and port in child.cmdline():
                return child
    return None


async def run_backend(name: str, args: argparse.Namespace, image: Image, work: Path) -> Backend:
    base = work / name
    base.mkdir()
    result = Backend(name)
    with contextlib.ExitStack() as resources:
        env = {"MAX_INPUT_FILE_SIZE": str(2 * image.size)}
        cpu = {"bench": psutil.Process()}
        config: S3Config | None = None
        if name == "s3":
            endpoint = resources.enter_context(moto_server(base / "moto.log"))
            moto = moto_process(endpoint)
            if moto is not None:
                cpu["moto"] = moto
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            env |= {"BLOB_BACKEND": "s3", "S3_ENDPOINT_URL": endpoint, "S3_BUCKET": bucket, **S3_KEYS}
            config = S3Config(
                bucket=bucket,
                endpoint_url=endpoint,
                region=S3_KEYS["S3_REGION"],
                access_key_id=S3_KEYS["S3_ACCESS_KEY_ID"],
                secret_access_key=S3_KEYS["S3_SECRET_ACCESS_KEY"],
            )
        # every service reads task descriptors from the same blob store
        stack = Stack(args.database_url, args.nats_url, base, names=SERVICES, extra_env=dict.fromkeys(SERVICES, env))
        try:
            await stack.start()
            storage_pid = stack.services["storage"].pid
            cpu["storage"] = psutil.Process(storage_pid)
            async with contextlib.AsyncExitStack() as clients:
                session = await clients.enter_async_context(
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600))
                )
                direct = None if config is None else await clients.enter_async_context(S3BlobStore.open(config))
                bench = Bench(stack, session, image, base, cpu)
                await bench.register()
                await bench.warm_up()
                result.idle_rss = psutil.Process(storage_pid).memory_info().rss
                print(
                    f"\n{name}: services ready, storage pid {storage_pid}, RSS after warm-up {mib(result.idle_rss)} MiB"
                )
                for n in range(1, args.rounds + 1):
                    calm = await quiet(args.patience)
                    r = await bench.round(name, direct)
                    result.rounds.append(r)
                    print_round(name, n, image.size, r, calm)
                result.hwm = vm_hwm(storage_pid)
        except Exception:
            for service in stack.services.values():
                print(f"--- last lines of {service.name}'s log:\n{service.log_tail(15)}", file=sys.stderr)
            raise
        finally:
            await stack.close()
    return result


# ---------------------------------------------------------------------------------------------
# printing


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:,.0f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def split(phase: Phase) -> str:
    """Where a provision's time went, from the client's and the sampler's marks."""
    m = phase.marks
    sent = m.get("sent", math.nan)
    if "blob .part first" in m:
        first, last = m["blob .part first"], m["blob .part last"]
        return (
            f"receive {sent:.2f} + check {first - sent:.2f} + copy/hash/fsync {last - first:.2f}"
            f" + record {phase.seconds - last:.2f}"
        )
    return f"receive {sent:.2f} + check/store/record {phase.seconds - sent:.2f}"


def by_process(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(values.items()))


def cpu_text(phase: Phase) -> str:
    return ", ".join(
        f"{name} {seconds:.2f} ({phase.system.get(name, math.nan):.2f})" for name, seconds in sorted(phase.cpu.items())
    )


def print_round(backend: str, n: int, size: int, r: Round, calm: float) -> None:
    steps: list[tuple[str, Phase | None, str, str]] = [
        ("cp", r.cp, "", ""),
        ("cp + fsync", r.cp_fsync, "", ""),
        ("provision", r.provision, f"{r.cp_fsync.seconds / r.provision.seconds:.2f} of cp + fsync", split(r.provision)),
        (
            "read back",
            r.read_back,
            f"{r.cp.seconds / r.read_back.seconds:.2f} of cp",
            f"headers after {r.read_back.marks.get('headers', math.nan):.3f}",
        ),
        ("S3 adapter put, no service", r.direct_put, "", ""),
        ("S3 adapter get, no service", r.direct_get, "", ""),
    ]
    rows = [
        [
            label,
            f"{phase.seconds:.2f}",
            rate(size, phase.seconds),
            ratio,
            mib(phase.peak_rss) if phase.peak_rss else "",
            cpu_text(phase),
            by_process(phase.waits),
            f"{phase.others:.2f}",
            notes,
        ]
        for label, phase, ratio, notes in steps
        if phase is not None
    ]
    print(f"\n{backend}, round {n} (the machine used {calm:.2f} cores just before):\n")
    headers = ["step", "s", "MiB/s", "ratio", "storage peak RSS MiB", "CPU s (kernel)", "waiting for a CPU s", "others"]
    table([*headers, "where the time went, s"], rows)


def summary(results: Sequence[Backend], size: int) -> list[str]:
    """The summary table and the verdicts; the verdict lines."""
    rows: list[list[object]] = []
    lines: list[str] = []
    worst_rss = 0
    for b in results:
        rs = b.rounds
        for label, step in (("baseline: cp", "cp"), ("baseline: cp + fsync", "cp_fsync")):
            phases: list[Phase] = [getattr(r, step) for r in rs]
            seconds = [p.seconds for p in phases]
            cp_cpu = median([p.cpu.get("bench", math.nan) for p in phases])
            rows.append(
                [
                    b.name,
                    label,
                    f"{median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})",
                    rate(size, median(seconds)),
                    "",
                    "",
                    f"cp {cp_cpu:.2f}",
                ]
            )
        for label, step, base, base_name in (
            ("provision", "provision", "cp_fsync", "cp + fsync"),
            ("read back inputs.zip", "read_back", "cp", "cp"),
        ):
            phases = [getattr(r, step) for r in rs]
            seconds = [p.seconds for p in phases]
            ratio = median([getattr(r, base).seconds / getattr(r, step).seconds for r in rs])
            peak = max(p.peak_rss for p in phases)
            worst_rss = max(worst_rss, peak)
            rows.append(
                [
                    b.name,
                    label,
                    f"{median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})",
                    rate(size, median(seconds)),
                    f"{ratio:.2f} of {base_name}",
                    mib(peak),
                    f"storage {median([p.cpu.get('storage', math.nan) for p in phases]):.2f}",
                ]
            )
            if b.name == "local":
                lines.append(
                    f"local {label}: {ratio:.2f} of {base_name} (median of {len(rs)}; target >= {TARGET_RATIO}): "
                    + verdict(ratio >= TARGET_RATIO)
                )
        direct = [r for r in rs if r.direct_put is not None and r.direct_get is not None]
        for label, pick in (("S3 adapter put, no service", "direct_put"), ("S3 adapter get, no service", "direct_get")):
            if direct:
                seconds = [getattr(r, pick).seconds for r in direct]
                rows.append([b.name, label, f"{median(seconds):.2f}", rate(size, median(seconds)), "", "", ""])
        worst_rss = max(worst_rss, b.hwm)
        lines.append(f"{b.name}: storage RSS after warm-up {mib(b.idle_rss)} MiB, VmHWM at the end {mib(b.hwm)} MiB")
    lines.append(
        f"storage peak RSS, every backend and phase: {mib(worst_rss)} MiB (target < {mib(TARGET_RSS)} MiB = 150 MB): "
        + verdict(worst_rss < TARGET_RSS)
    )
    print(f"\nSummary: medians over the rounds, {mib(size)} MiB image\n")
    table(
        ["backend", "step", "s (range)", "MiB/s", "ratio (median of rounds)", "storage peak RSS MiB", "CPU s"],
        rows,
    )
    return lines


# ---------------------------------------------------------------------------------------------
# main


def disk_lines(work: Path, size: int, backends: Sequence[str]) -> list[tuple[str, str]]:
    usage = shutil.disk_usage(work)
    mounts = [m for m in psutil.disk_partitions(all=True) if work.is_relative_to(m.mountpoint)]
    fs = max(mounts, key=lambda m: len(m.mountpoint)).fstype if mounts else ""
    return [
        ("work directory", f"{work} ({fs or 'unknown'} file system), {usage.free / 2**30:.1f} GiB free"),
        ("image", f"{size / MIB:,.0f} MiB, backends {', '.join(backends)}"),
    ]


async def main(args: argparse.Namespace) -> int:
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench_provision_", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        _machine.print_lines(
            "machine", _machine.host_lines() + _machine.code_lines() + disk_lines(work, size, backends)
        )
        # the image, a copy, the upload's temporary file, the blob (twice while replaced) and the
        # read-back zip; moto spools its parts and objects to the temporary directory too
        needed = 6 * size + 2 * 2**30
        if shutil.disk_usage(work).free < needed:
            print(f"not enough free space in {work}: {needed / 2**30:.1f} GiB needed; use a smaller --size-mib")
            return 1
        started = time.perf_counter()
        image = await asyncio.to_thread(write_tiff, work / "image.tif", size)
        print(
            f"\nimage: {image.width} x {image.height} RGB TIFF, {mib(image.size)} MiB, written in "
            f"{time.perf_counter() - started:.1f} s; sha256 {image.sha256[:16]}…"
        )
        results = [await run_backend(name, args, image, work) for name in backends]
        for line in summary(results, size):
            print(f"  {line}")
    return 0


async def guarded(args: argparse.Namespace) -> int:
    """:func:`main` with SIGTERM and SIGINT cancelling it, so that its clean-up still runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await main(args)
    except asyncio.CancelledError:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the image (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend; medians are reported (default 3)")
    parser.add_argument("--backend", choices=("local", "s3", "both"), default="both")
    parser.add_argument(
        "--patience",
        type=float,
        default=60.0,
        help="before each round, wait at most this long for the machine to use under 0.5 cores (default 60 s)",
    )
    _machine.add_server_options(parser)
    args = parser.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        parser.error("--size-mib and --rounds must be positive")
    return asyncio.run(guarded(args))


if __name__ == "__main__":
    sys.exit(cli())
