"""A service with nothing but the process machinery of :func:`shared.service.serve`, for tests of
how a service process stops. ``PROBE_MODE`` picks what its background loop and cleanup do:

- ``dies-with-dependencies``: the essential loop ends as soon as shutdown begins, as a job
  intake does when NATS goes down with the service (``app-engine up`` killed);
- ``wedged``: the cleanup never ends, as a hung library call would not.

``POST /fail`` ends the essential loop with an error. Cleanup takes ``PROBE_CLEANUP_SECONDS`` and
logs ``probe.cleaned_up`` when it is complete.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from shared.service import essential_task, serve
from shared.settings import CommonSettings
from shared.web import create_app

log = structlog.get_logger("probe")


def build(settings: CommonSettings) -> web.Application:
    app = create_app("probe")
    mode = os.environ.get("PROBE_MODE", "")
    cleanup_seconds = float(os.environ.get("PROBE_CLEANUP_SECONDS", "0.5"))
    failed = asyncio.Event()
    shutting_down = asyncio.Event()
    loop_done = asyncio.Event()

    async def fail(request: web.Request) -> web.Response:
        failed.set()
        return web.json_response({"failing": True})

    async def on_shutdown(app: web.Application) -> None:
        shutting_down.set()
        if mode == "dies-with-dependencies":
            await loop_done.wait()  # the loop ends before its cleanup, not after

    async def intake() -> None:
        waits = [asyncio.ensure_future(failed.wait())]
        if mode == "dies-with-dependencies":
            waits.append(asyncio.ensure_future(shutting_down.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop_done.set()
            for wait in waits:
                wait.cancel()
        if failed.is_set():
            raise RuntimeError("fetch broke")
        log.info("probe.loop_ended")

    async def loops(app: web.Application) -> AsyncIterator[None]:
        async with essential_task(app, "jobs", intake()):
            yield
        if mode == "wedged":
            log.info("probe.wedged")
            await asyncio.Event().wait()
        await asyncio.sleep(cleanup_seconds)
        log.info("probe.cleaned_up")

    app.router.add_post("/fail", fail)
    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(loops)
    return app


if __name__ == "__main__":
    serve("probe", CommonSettings, build, default_port=8099)
