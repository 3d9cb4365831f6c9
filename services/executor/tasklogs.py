"""A run's log: live lines on NATS while the task runs, the whole log in the blob store after.

Both are capped by ``LOG_CAP_BYTES`` and say so in the log when the cap is hit. The blob is
written once the container has exited (before the run's final event). It is written from the
lines the live follow saw when that follow saw them all, from the container's start to its exit;
otherwise (an adopted run, whose earlier lines went by before this process; a follow that broke
or ended well before the exit) from the engine's copy of the log, read again. Writing the log
never decides how a run ends: a failure to write it is logged and the run goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pathlib
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator

import msgspec
import structlog
from nats.aio.client import Client as NATS

from services.executor.errors import EngineError
from services.executor.runtime import Engine
from shared import layout
from shared.blobstore import BlobStore
from shared.contracts import LogLine, Subjects

log = structlog.get_logger("executor.logs")

_encoder = msgspec.json.Encoder()
_CHUNK = 64 * 1024
# a record's lines stay in memory up to this size, then go to a temporary file
_IN_MEMORY = 1024 * 1024
# the engine ends a followed log as the container stops, a moment before a wait for the exit
# returns; a follow that ended longer before the exit was seen ended early, and may lack lines
_EARLY_END = 1.0


def cap_notice(cap: int) -> str:
    return f"[log truncated: the executor keeps at most {cap} bytes of a run's log (LOG_CAP_BYTES)]"


class LogRecord:
    """A run's log as stored: the lines as printed, newline-ended, at most ``cap`` bytes of them,
    then the cap notice. ``keep=False`` only counts (the cap of the live lines of an adopted run,
    whose blob comes from the engine); kept bytes spill from memory into ``spool_dir``."""

    def __init__(self, cap: int, spool_dir: pathlib.Path | None = None, *, keep: bool = True) -> None:
        self._cap = cap
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = None
        if keep:
            folder = None if spool_dir is None else str(spool_dir)
            self._file = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY, dir=folder)  # noqa: SIM115 (closed by close())
        self.size = 0
        self.capped = False
        # the spool failed (its disk full): the record is not the whole log any more
        self.lost = False

    def take(self, line: str) -> bytes:
        """The bytes ``line`` adds to the stored log, counted: the line, newline-ended; the cap
        notice for the line that reaches the cap; nothing after it."""
        if self.capped:
            return b""
        data = (line + "\n").encode()
        if self.size + len(data) > self._cap:
            self.capped = True
            return (cap_notice(self._cap) + "\n").encode()
        self.size += len(data)
        return data

    def add(self, line: str) -> bool:
        """Keep ``line``; False once the cap is reached (the line is then dropped)."""
        data = self.take(line)
        if data:
            self._write(data)
        return not self.capped

    def _write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(data)
        except OSError as exc:
            self._spool_failed(exc)

    def _spool_failed(self, exc: OSError) -> None:
        log.warning("logs.spool_failed", error=str(exc))
        self.close()
        self._file = None
        self.lost = True

    def rewind(self) -> bool:
        """Ready the record to be read from its start: False (and lost) if the spool fails, as
        the flush of what is buffered does when the disk is full."""
        if self._file is None:
            return False
        try:
            self._file.seek(0)
        except OSError as exc:
            self._spool_failed(exc)
            return False
        return True

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        f = self._file
        assert f is not None, "rewind() first"
        if self.size <= _IN_MEMORY:
            yield f.read()  # still in memory
            return
        while chunk := await asyncio.to_thread(f.read, _IN_MEMORY):  # spilled to disk
            yield chunk

    async def store(self, blobs: BlobStore, run_id: uuid.UUID) -> None:
        """Write the record, rewound, as the run's log blob."""
        async with contextlib.aclosing(self._chunks()) as chunks:
            await blobs.put_stream(layout.run_log(run_id), chunks)

    def close(self) -> None:
        if self._file is not None:
            # a full disk fails the flush of what is buffered (the file is closed all the same)
            with contextlib.suppress(OSError):
                self._file.close()


class LiveLog:
    """Publishes a container's lines on ``<p>.logs.<run_id>``, remembers the last few, and
    records them for the log blob."""

    def __init__(
        self,
        engine: Engine,
        nc: NATS,
        subjects: Subjects,
        run_id: uuid.UUID,
        container_id: str,
        cap_bytes: int,
        spool_dir: pathlib.Path | None = None,
        *,
        since: str | None = None,
        tail: int = 20,
    ) -> None:
        self._engine = engine
        self._nc = nc
        self._subject = subjects.logs(run_id)
        self._run_id = run_id
        self._container_id = container_id
        self._cap = cap_bytes
        # an adopted run's earlier lines were published (or lost) before: only newer ones go out,
        # and its blob comes from the engine's copy, so the record only counts toward the cap
        self._since = since
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._record = LogRecord(cap_bytes, spool_dir, keep=since is None)
        # when the follow ended on its own (monotonic), having seen every line since the start
        self._ended_at: float | None = None

    async def run(self) -> None:
        """Follow the log until the container exits (the engine then ends the stream)."""
        record = self._record
        try:
            async with contextlib.aclosing(self._engine.logs(self._container_id, follow=True)) as chunks:
                async for chunk in chunks:
                    self.tail.append(chunk.line)
                    if record.capped or (self._since is not None and chunk.at < self._since):
                        continue
                    line, stream = chunk.line, chunk.stream
                    if not record.add(line):
                        line, stream = cap_notice(self._cap), "stderr"
                    message = LogLine(run_id=self._run_id, stream=stream, line=line, at=chunk.at)
                    await self._nc.publish(self._subject, _encoder.encode(message))
        except EngineError as exc:
            # live lines are a convenience: the blob is then written from the engine's copy
            log.warning("logs.live_stopped", run_id=str(self._run_id), error=str(exc))
            return
        if self._since is None:
            self._ended_at = time.monotonic()

    def complete(self, exit_seen: float) -> bool:
        """Whether the record is the whole log, given when the exit was seen (monotonic)."""
        if self._ended_at is None or self._record.lost:
            return False
        if self._ended_at < exit_seen - _EARLY_END:
            # the engine ended the follow while the task still ran (a log driver's fault)
            log.warning("logs.follow_ended_early", run_id=str(self._run_id), by=round(exit_seen - self._ended_at, 3))
            return False
        return True

    async def store(self, blobs: BlobStore, exit_seen: float) -> None:
        """Write the run's log blob, once the container has exited (seen at ``exit_seen``,
        monotonic) and :meth:`run` ended; a failure is logged, never raised."""
        try:
            if self.complete(exit_seen) and self._record.rewind():
                await self._record.store(blobs, self._run_id)
            else:
                await store_log(self._engine, blobs, self._run_id, self._container_id, self._cap)
        except Exception as exc:  # any backend's failure, a full disk
            log.warning("logs.not_stored", run_id=str(self._run_id), error=str(exc))

    def close(self) -> None:
        self._record.close()


async def store_log(engine: Engine, blobs: BlobStore, run_id: uuid.UUID, container_id: str, cap_bytes: int) -> int:
    """Write the container's whole log (stdout and stderr lines, as printed), read from the
    engine, to the run's log blob, streamed (no spool); the bytes of lines kept. Raises what the
    engine or the blob store raised; the blob then stays as it was."""
    record = LogRecord(cap_bytes, keep=False)

    async def chunks() -> AsyncGenerator[bytes, None]:
        buffer = bytearray()
        async with contextlib.aclosing(engine.logs(container_id, follow=False)) as logs:
            async for chunk in logs:
                buffer += record.take(chunk.line)
                if record.capped:
                    break
                if len(buffer) >= _CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    # closed whatever happens: a failed write must not leave the engine's log stream open
    async with contextlib.aclosing(chunks()) as stream:
        await blobs.put_stream(layout.run_log(run_id), stream)
    return record.size
