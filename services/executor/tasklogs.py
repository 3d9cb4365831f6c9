"""A run's log: live lines on NATS while the task runs, the whole log in the blob store after.

Both are capped by ``LOG_CAP_BYTES`` and say so in the log when the cap is hit. The blob is
written once the container has exited (before the run's final event). It is written from the
lines the live follow saw when that follow saw them all, from the container's start to the end
of its output; otherwise (an adopted run, whose earlier lines went by before this process, or a
follow cut short) from the engine's copy of the log, read again. Either way the blob is complete.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator

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


def cap_notice(cap: int) -> str:
    return f"[log truncated: the executor keeps at most {cap} bytes of a run's log (LOG_CAP_BYTES)]"


class LogRecord:
    """A run's log as stored: the lines as printed, newline-ended, at most ``cap`` bytes of them,
    then the cap notice."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._file = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115 (closed by close())
        self.size = 0
        self.capped = False

    def add(self, line: str) -> bool:
        """Keep ``line``; False once the cap is reached (the line is then dropped)."""
        if self.capped:
            return False
        data = (line + "\n").encode()
        if self.size + len(data) > self._cap:
            self.capped = True
            self._file.write((cap_notice(self._cap) + "\n").encode())
            return False
        self._file.write(data)
        self.size += len(data)
        return True

    async def _chunks(self) -> AsyncIterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            yield chunk

    async def store(self, blobs: BlobStore, run_id: uuid.UUID) -> None:
        """Write the record as the run's log blob; a failed write is logged, never raised (a
        log write never decides how a run ends)."""
        try:
            await blobs.put_stream(layout.run_log(run_id), self._chunks())
        except Exception as exc:  # any backend's failure
            log.warning("logs.not_stored", run_id=str(run_id), error=str(exc))

    def close(self) -> None:
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
        # an adopted run's earlier lines were published (or lost) before: only newer ones go out
        self._since = since
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._record = LogRecord(cap_bytes)
        # the follow saw every line, start to end: the record is the whole log
        self.complete = False

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
        self.complete = self._since is None

    async def store(self, blobs: BlobStore) -> None:
        """Write the run's log blob (once the container has exited and :meth:`run` ended)."""
        if self.complete:
            await self._record.store(blobs, self._run_id)
        else:
            await store_log(self._engine, blobs, self._run_id, self._container_id, self._cap)

    def close(self) -> None:
        self._record.close()


async def store_log(engine: Engine, blobs: BlobStore, run_id: uuid.UUID, container_id: str, cap_bytes: int) -> int:
    """Write the container's whole log (stdout and stderr lines, as printed), read from the
    engine, to the run's log blob; the bytes of lines kept."""
    record = LogRecord(cap_bytes)
    try:
        try:
            async with contextlib.aclosing(engine.logs(container_id, follow=False)) as logs:
                async for chunk in logs:
                    if not record.add(chunk.line):
                        break
        except EngineError as exc:
            log.warning("logs.not_read", run_id=str(run_id), error=str(exc))
            return 0
        await record.store(blobs, run_id)
        return record.size
    finally:
        record.close()
