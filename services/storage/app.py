"""Composition root of the storage service."""

from __future__ import annotations

from aiohttp import web

from services.storage.settings import StorageSettings
from shared.service import infrastructure
from shared.web import create_app


def build_app(settings: StorageSettings) -> web.Application:
    app = create_app("storage")
    infrastructure(app, settings, "storage")
    return app
