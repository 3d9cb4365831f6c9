"""Composition root of the registry service."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.registry.api import BLOBS, MAX_BUNDLE, REGISTRY, UPLOADS, add_routes, install_error_renderers
from services.registry.bundle import BundleLimits
from services.registry.catalogue import MIGRATIONS, Catalogue
from services.registry.handlers import Registry
from services.registry.settings import RegistrySettings
from shared.blobs import open_blob_store
from shared.runlog.schema import migrate
from shared.service import POOL, STORE, infrastructure
from shared.web import create_app


def build_app(settings: RegistrySettings) -> web.Application:
    app = create_app("registry")
    infrastructure(app, settings, "registry")

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        async with app[POOL].acquire() as conn:
            await migrate(conn, settings.database_schema, "registry", MIGRATIONS)
        data = pathlib.Path(settings.data_dir)
        uploads = data / "tmp" / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        limits = BundleLimits(
            max_entries=settings.max_bundle_entries,
            max_uncompressed_bytes=settings.max_bundle_uncompressed_size,
            max_ratio=settings.max_bundle_compression_ratio,
        )
        app[UPLOADS] = uploads
        app[MAX_BUNDLE] = settings.max_bundle_size
        async with open_blob_store(settings) as blobs:
            app[BLOBS] = blobs
            app[REGISTRY] = Registry(Catalogue(app[STORE]), blobs, limits, uploads)
            yield

    app.cleanup_ctx.append(registry_ctx)
    install_error_renderers(app)
    add_routes(app, settings.route_prefix)
    return app
