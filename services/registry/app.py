"""Composition root of the registry service."""

from __future__ import annotations

from aiohttp import web

from services.registry.settings import RegistrySettings
from shared.service import infrastructure
from shared.web import create_app


def build_app(settings: RegistrySettings) -> web.Application:
    app = create_app("registry")
    infrastructure(app, settings, "registry")
    return app
