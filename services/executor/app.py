"""Composition root of the executor service."""

from __future__ import annotations

from aiohttp import web

from services.executor.runtime import docker_ctx
from services.executor.settings import ExecutorSettings
from shared.service import infrastructure
from shared.web import create_app


def build_app(settings: ExecutorSettings) -> web.Application:
    app = create_app("executor")
    infrastructure(app, settings, "executor")
    app.cleanup_ctx.append(docker_ctx(settings))
    return app
