"""A run's log: live lines on NATS while the task runs, the whole log in the blob store after.

Both are capped by ``LOG_CAP_BYTES`` and say so in the log when the cap is hit. The blob is
written from the engine's copy of the log once the container has exited (before the run's final
event), so an adopted run's blob is as complete as any other.
"""

from __future__ import annotations

import collections
import contextlib
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
_FLUSH = 64 * 1024


def cap_notice(cap: int) -> str:
    return f"[log truncated: the executor keeps at most {cap} bytes of a run's log (LOG_CAP_BYTES)]"


class LiveLog:
    """Publishes a container's lines on ``<p>.logs.<run_id>`` and remembers the last few."""

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

    async def run(self) -> None:
        """Follow the log until the container exits (the engine then ends the stream)."""
        sent = 0
        capped = False
        try:
            async with contextlib.aclosing(self._engine.logs(self._container_id, follow=True)) as chunks:
                async for chunk in chunks:
                    self.tail.append(chunk.line)
                    if capped or (self._since is not None and chunk.at < self._since):
                        continue
                    sent += len(chunk.line) + 1
                    line = chunk.line
                    stream = chunk.stream
                    if sent > self._cap:
                        capped = True
                        line, stream = cap_notice(self._cap), "stderr"
                    message = LogLine(run_id=self._run_id, stream=stream, line=line, at=chunk.at)
                    await self._nc.publish(self._subject, _encoder.encode(message))
        except EngineError as exc:
            # live lines are a convenience: the blob, written from the engine after exit, is the record
            log.warning("logs.live_stopped", run_id=str(self._run_id), error=str(exc))


async def store_log(engine: Engine, blobs: BlobStore, run_id: uuid.UUID, container_id: str, cap_bytes: int) -> int:
    """Write the container's whole log (stdout and stderr lines, as printed) to the run's log blob."""
    written = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal written
        buffer = bytearray()
        async with contextlib.aclosing(engine.logs(container_id, follow=False)) as logs:
            async for chunk in logs:
                data = (chunk.line + "\n").encode()
                if written + len(buffer) + len(data) > cap_bytes:
                    buffer += (cap_notice(cap_bytes) + "\n").encode()
                    break
                buffer += data
                if len(buffer) >= _FLUSH:
                    written += len(buffer)
                    yield bytes(buffer)
                    buffer.clear()
        written += len(buffer)
        if buffer:
            yield bytes(buffer)

    try:
        await blobs.put_stream(layout.run_log(run_id), chunks())
    except Exception as exc:  # any backend's failure: a log write never decides how a run ends
        log.warning("logs.not_stored", run_id=str(run_id), error=str(exc))
    return written
