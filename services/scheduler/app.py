"""Composition root of the scheduler service."""

from __future__ import annotations

from aiohttp import web

from services.scheduler.settings import SchedulerSettings
from shared.service import infrastructure
from shared.web import create_app


def build_app(settings: SchedulerSettings) -> web.Application:
    app = create_app("scheduler")
    infrastructure(app, settings, "scheduler")
    return app
