"""The Docker engine adapter (aiodocker)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiodocker
from aiohttp import web

from services.executor.settings import ExecutorSettings
from shared.web import READINESS


class NoDockerEngine(ConnectionError):
    """No Docker engine answers at the configured or default address."""


class Engine:
    """Holds the Docker client, created when an engine becomes reachable.

    The executor starts without an engine (readiness reports it) rather than crashing, so an
    operator sees one clear message instead of a restart loop.
    """

    def __init__(self, docker_host: str) -> None:
        self._docker_host = docker_host or None
        self._client: aiodocker.Docker | None = None

    def client(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self._docker_host)
            except (AssertionError, ValueError) as exc:
                # aiodocker asserts when neither DOCKER_HOST nor a default socket exists
                raise NoDockerEngine(
                    "no Docker engine found: set DOCKER_HOST or start dockerd (tasks cannot run without one)"
                ) from exc
        return self._client

    async def check(self) -> None:
        await self.client().version()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


ENGINE = web.AppKey("engine", Engine)


def docker_ctx(settings: ExecutorSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The Docker engine for the app's lifetime; readiness fails while it does not answer."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = Engine(settings.docker_host)
        app[ENGINE] = engine
        app[READINESS]["docker"] = engine.check
        try:
            yield
        finally:
            await engine.close()

    return ctx
