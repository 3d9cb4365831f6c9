"""How a service process stops: once, completely, and never later than its deadline.

The processes are real (``python -m tests.probe_service``, which runs :func:`shared.service.serve`
like every service) and are sent real signals. The case that drove this: ``app-engine up``
SIGKILLed, every child getting SIGTERM at once (``PR_SET_PDEATHSIG``), the executor's intake
ending because NATS went down too, and the second stop that followed cutting the first short.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.service import EXIT_LOOP_ENDED, EXIT_SHUTDOWN_OVERRAN, SHUTDOWN_SLACK, cancel_and_wait
from tests.processes import ServiceProcess


@pytest.fixture
async def probes(tmp_path: pathlib.Path) -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for probe in started:
        await probe.stop(grace=1)


async def start_probe(probes: list[ServiceProcess], log_dir: pathlib.Path, **env: str) -> ServiceProcess:
    probe = ServiceProcess("probe", "tests.probe_service", env, log_dir)
    probes.append(probe)
    await probe.start(within=30)
    return probe


async def exit_code(probe: ServiceProcess, within: float) -> int:
    assert probe.proc is not None
    code = await asyncio.to_thread(probe.proc.wait, within)
    return code


def events(probe: ServiceProcess) -> list[str]:
    found = []
    for line in probe.log_path.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line)["event"])
    return found


async def test_a_loop_ending_during_shutdown_does_not_cut_it_short(
    tmp_path: pathlib.Path, probes: list[ServiceProcess]
) -> None:
    probe = await start_probe(probes, tmp_path, PROBE_MODE="dies-with-dependencies")
    assert probe.proc is not None
    probe.proc.send_signal(signal.SIGTERM)
    assert await exit_code(probe, within=15) == 0, probe.log_tail()
    seen = events(probe)
    assert "probe.loop_ended" in seen
    # the cleanup ran to its end, and the service says it stopped cleanly
    assert seen[-2:] == ["probe.cleaned_up", "service.stopped"], seen


async def test_a_second_signal_changes_nothing(tmp_path: pathlib.Path, probes: list[ServiceProcess]) -> None:
    probe = await start_probe(probes, tmp_path, PROBE_CLEANUP_SECONDS="1.5")
    assert probe.proc is not None
    probe.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    probe.proc.send_signal(signal.SIGTERM)
    assert await exit_code(probe, within=15) == 0, probe.log_tail()
    seen = events(probe)
    assert "service.already_stopping" in seen
    assert seen[-2:] == ["probe.cleaned_up", "service.stopped"], seen


async def test_a_failed_loop_stops_the_service_cleanly_with_status_70(
    tmp_path: pathlib.Path, probes: list[ServiceProcess]
) -> None:
    probe = await start_probe(probes, tmp_path)
    async with aiohttp.ClientSession() as session, session.post(probe.url + "/fail") as resp:
        assert resp.status == 200
    assert await exit_code(probe, within=15) == EXIT_LOOP_ENDED, probe.log_tail()
    seen = events(probe)
    assert seen.index("task.ended") < seen.index("service.stopping") < seen.index("probe.cleaned_up")
    assert seen[-1] == "service.stopped"


async def test_a_wedged_shutdown_ends_at_the_deadline(tmp_path: pathlib.Path, probes: list[ServiceProcess]) -> None:
    probe = await start_probe(probes, tmp_path, PROBE_MODE="wedged", SHUTDOWN_TIMEOUT="0")
    assert probe.proc is not None
    started = time.monotonic()
    probe.proc.send_signal(signal.SIGTERM)
    assert await exit_code(probe, within=SHUTDOWN_SLACK + 15) == EXIT_SHUTDOWN_OVERRAN, probe.log_tail()
    took = time.monotonic() - started
    assert SHUTDOWN_SLACK - 1 < took < SHUTDOWN_SLACK + 10
    seen = events(probe)
    assert "probe.wedged" in seen and "probe.cleaned_up" not in seen
    assert seen[-1] == "service.shutdown_overran"


async def test_cancel_and_wait_outlasts_a_task_that_swallows_cancellations() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task], "stubborn")
    assert task.cancelled() and swallowed == 3


async def test_cancel_and_wait_lets_a_cancelled_task_finish_its_cleanup() -> None:
    """A job cancelled at shutdown hands its run back; a second cancellation must not cut that."""
    cleaned = asyncio.Event()

    async def job() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(1.5)  # as a container removal and an append under load
            cleaned.set()

    task = asyncio.create_task(job())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task], "job", grace=5)
    assert cleaned.is_set()
