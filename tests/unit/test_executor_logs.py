"""Where a run's log blob comes from: the live follow's record when it saw the whole log, the
engine's copy otherwise; and a log that cannot be written never fails the run.

The engine here is a stand-in that can misbehave as a Docker log driver can (ending a follow
early); what a real engine does is covered end to end in tests/integration/test_executor_run.py.
"""

from __future__ import annotations

import errno
import io
import pathlib
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from services.executor.errors import EngineError
from services.executor.runtime import Engine, LogChunk
from services.executor.tasklogs import LiveLog, cap_notice
from shared import layout
from shared.blobstore import LocalBlobStore
from shared.contracts import Subjects


class ScriptedEngine:
    """A followed log and an engine's copy of it, each a list of lines."""

    def __init__(self, followed: list[str], copy: list[str], *, copy_fails_after: int | None = None) -> None:
        self.followed = followed
        self.copy = copy
        self.copy_fails_after = copy_fails_after

    async def logs(self, container_id: str, *, follow: bool) -> AsyncGenerator[LogChunk, None]:
        lines = self.followed if follow else self.copy
        for i, line in enumerate(lines):
            if not follow and self.copy_fails_after is not None and i == self.copy_fails_after:
                raise EngineError("logs: connection reset")
            yield LogChunk(stream="stdout", at=f"2026-12-03T08:00:{i:02d}.000000000Z", line=line)


class Published:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.messages.append(payload)


def live_log(
    engine: ScriptedEngine, tmp_path: pathlib.Path, *, cap: int = 1 << 20, **kw: Any
) -> tuple[LiveLog, Published]:
    nc = Published()
    live = LiveLog(
        cast(Engine, engine), cast(Any, nc), Subjects(prefix="t"), RUN, "c0ffee", cap, tmp_path / "spool", **kw
    )
    return live, nc


RUN = uuid.uuid4()


@pytest.fixture
def blobs(tmp_path: pathlib.Path) -> LocalBlobStore:
    (tmp_path / "spool").mkdir()
    return LocalBlobStore(tmp_path / "blobs")


async def blob_text(blobs: LocalBlobStore) -> str:
    return b"".join([c async for c in blobs.get(layout.run_log(RUN))]).decode()


async def test_a_follow_that_saw_every_line_is_the_blob(blobs: LocalBlobStore, tmp_path: pathlib.Path) -> None:
    live, nc = live_log(ScriptedEngine(["one", "two"], ["the engine's copy"]), tmp_path)
    await live.run()
    await live.store(blobs, time.monotonic())
    live.close()
    assert await blob_text(blobs) == "one\ntwo\n"
    assert len(nc.messages) == 2


async def test_a_follow_that_ended_long_before_the_exit_is_not_trusted(
    blobs: LocalBlobStore, tmp_path: pathlib.Path
) -> None:
    # the engine ended the follow while the task went on printing: its copy has the rest
    live, _ = live_log(ScriptedEngine(["one"], ["one", "two", "three"]), tmp_path)
    await live.run()
    await live.store(blobs, time.monotonic() + 5)
    live.close()
    assert await blob_text(blobs) == "one\ntwo\nthree\n"


async def test_a_full_spool_falls_back_to_the_engine_copy(blobs: LocalBlobStore, tmp_path: pathlib.Path) -> None:
    # more than a record keeps in memory, and the spool folder cannot take the rest
    line = "x" * 1000
    followed = [line] * 1200
    live, nc = live_log(ScriptedEngine(followed, ["copy"]), tmp_path, cap=4 << 20)
    (tmp_path / "spool").rmdir()
    await live.run()
    await live.store(blobs, time.monotonic())
    live.close()
    assert await blob_text(blobs) == "copy\n"
    assert len(nc.messages) == 1200  # the live lines went on


class FullDisk(io.RawIOBase):
    """A spool file on a disk that is full after ``room`` bytes: writes beyond fail (ENOSPC)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self.pos + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data[self.pos : self.pos + len(data)] = data
        self.pos += len(data)
        return len(data)

    def readinto(self, b: Any) -> int:
        chunk = self.data[self.pos : self.pos + len(b)]
        b[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else len(self.data) + offset)
        return self.pos


LINE = "x" * 999  # 1,000 bytes with its newline; a record spills to disk past 1,048,576


@pytest.mark.parametrize(
    ("lines", "room", "fails"),
    [
        (2000, 1_500_000, "on a write"),
        # every write fits in the spool's buffer; its flush, as the record is read back, fails
        (1050, 1_049_500, "on the last flush"),
    ],
)
async def test_a_full_spool_disk_falls_back_to_the_engine_copy(
    blobs: LocalBlobStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, lines: int, room: int, fails: str
) -> None:
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **kw: io.BufferedRandom(FullDisk(room)))
    live, nc = live_log(ScriptedEngine([LINE] * lines, ["copy"]), tmp_path, cap=4 << 20)
    await live.run()
    await live.store(blobs, time.monotonic())
    live.close()  # nothing left to raise
    assert await blob_text(blobs) == "copy\n", fails
    assert len(nc.messages) == lines  # the live lines went on


async def test_the_engine_copy_is_capped_and_says_so(blobs: LocalBlobStore, tmp_path: pathlib.Path) -> None:
    live, _ = live_log(ScriptedEngine([], ["a" * 10, "b" * 10, "c" * 10]), tmp_path, cap=25, since="2026")
    await live.run()
    await live.store(blobs, time.monotonic())
    live.close()
    assert await blob_text(blobs) == "a" * 10 + "\n" + "b" * 10 + "\n" + cap_notice(25) + "\n"


async def test_a_log_that_cannot_be_read_is_logged_not_raised(blobs: LocalBlobStore, tmp_path: pathlib.Path) -> None:
    # an adopted run: the blob comes from the engine, which fails half way; nothing is written
    engine = ScriptedEngine(["late"], ["early", "late"], copy_fails_after=1)
    live, _ = live_log(engine, tmp_path, since="2026-12-03T08:00:00.5Z")
    await live.run()
    await live.store(blobs, time.monotonic())
    live.close()
    assert not await blobs.exists(layout.run_log(RUN))
    assert list((tmp_path / "blobs").rglob("*.part")) == []
