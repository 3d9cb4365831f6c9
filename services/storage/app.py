"""Composition root of the storage service."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.storage.api import (
    COLLECTION,
    MAX_FILE,
    PROVISIONING,
    READING,
    WORKDIR,
    add_routes,
    install_error_renderers,
)
from services.storage.collection import Collection
from services.storage.handlers import Limits, Storage
from services.storage.provisioning import Provisioning
from services.storage.reading import Reading
from services.storage.settings import StorageSettings
from shared.blobs import open_blob_store
from shared.service import RUNLOG, STORE, infrastructure
from shared.tasks import TaskDirectory
from shared.web import create_app


def build_app(settings: StorageSettings) -> web.Application:
    app = create_app("storage", client_max_size=settings.max_json_body)
    infrastructure(app, settings, "storage")

    async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
        workdir = pathlib.Path(settings.data_dir) / "tmp" / "storage"
        workdir.mkdir(parents=True, exist_ok=True)
        limits = Limits(
            max_input_file=settings.max_input_file_size,
            max_output=settings.max_output_size,
            max_output_entries=settings.max_output_entries,
            max_array=settings.max_array_size,
            max_batch=settings.max_batch_size,
        )
        async with open_blob_store(settings) as blobs:
            storage = Storage(app[RUNLOG], TaskDirectory(app[STORE], blobs), blobs, limits)
            app[WORKDIR] = workdir
            app[MAX_FILE] = settings.max_input_file_size
            app[PROVISIONING] = Provisioning(storage)
            app[READING] = Reading(storage)
            app[COLLECTION] = Collection(storage, workdir)
            yield

    app.cleanup_ctx.append(storage_ctx)
    install_error_renderers(app)
    add_routes(app, settings.route_prefix)
    return app
