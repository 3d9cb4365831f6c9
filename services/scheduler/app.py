"""Composition root of the scheduler service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.scheduler.api import SCHEDULER, add_routes, install_error_renderers
from services.scheduler.consumers import Reactions, consumer_tasks
from services.scheduler.handlers import Scheduler
from services.scheduler.settings import SchedulerSettings
from services.scheduler.watchdog import watch
from shared.blobs import open_blob_store
from shared.heartbeats import migrate_heartbeats
from shared.service import JETSTREAM, POOL, RUNLOG, STORE, SUBJECTS, essential_task, infrastructure
from shared.tasks import TaskDirectory
from shared.web import create_app


def build_app(settings: SchedulerSettings) -> web.Application:
    app = create_app("scheduler")
    infrastructure(app, settings, "scheduler")

    async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
        async with app[POOL].acquire() as conn:
            await migrate_heartbeats(conn, settings.database_schema)
        async with open_blob_store(settings) as blobs, contextlib.AsyncExitStack() as tasks:
            scheduler = Scheduler(app[RUNLOG], TaskDirectory(app[STORE], blobs), blobs, settings)
            app[SCHEDULER] = scheduler
            reactions = Reactions(scheduler, app[JETSTREAM], app[SUBJECTS])
            for n, factory in enumerate(consumer_tasks(reactions, app[SUBJECTS])):
                await tasks.enter_async_context(essential_task(app, f"consumer-{n}", factory()))
            await tasks.enter_async_context(essential_task(app, "watchdog", watch(scheduler)))
            yield

    app.cleanup_ctx.append(scheduler_ctx)
    install_error_renderers(app)
    add_routes(app, settings.route_prefix)
    return app
