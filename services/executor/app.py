"""Composition root of the executor service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.executor.consumers import Worker
from services.executor.handlers import Executor
from services.executor.liveness import heartbeat
from services.executor.metrics import ExecutorMetrics
from services.executor.preload import preload_images
from services.executor.runtime import ENGINE, docker_ctx
from services.executor.settings import ExecutorSettings
from services.executor.storage import StorageClient
from shared.blobs import open_blob_store
from shared.heartbeats import migrate_heartbeats
from shared.service import (
    JETSTREAM,
    NATS_CLIENT,
    POOL,
    RUNLOG,
    STORE,
    SUBJECTS,
    essential_task,
    infrastructure,
    owned_task,
)
from shared.tasks import TaskDirectory
from shared.web import METRICS, create_app

EXECUTOR = web.AppKey("executor", Executor)


def build_app(settings: ExecutorSettings) -> web.Application:
    app = create_app("executor")
    infrastructure(app, settings, "executor")
    app.cleanup_ctx.append(docker_ctx(settings))

    async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
        async with app[POOL].acquire() as conn:
            # the scheduler creates the table too; whichever starts first does it
            await migrate_heartbeats(conn, settings.database_schema)
        async with aiohttp.ClientSession() as http, open_blob_store(settings) as blobs:
            executor = Executor(
                settings,
                app[ENGINE],
                app[RUNLOG],
                TaskDirectory(app[STORE], blobs),
                blobs,
                StorageClient(settings.storage_url, http),
                app[NATS_CLIENT],
                app[SUBJECTS],
                ExecutorMetrics(app[METRICS]),
            )
            app[EXECUTOR] = executor
            worker = Worker(
                executor,
                app[ENGINE],
                app[JETSTREAM],
                app[SUBJECTS],
                slots=settings.executor_slots,
                ack_wait=settings.job_ack_wait,
            )
            beats = heartbeat(
                app[POOL],
                settings.database_schema,
                settings.executor_id,
                settings.executor_slots,
                lambda: len(executor.active_runs),
                settings.heartbeat_interval,
            )
            async with contextlib.AsyncExitStack() as loops:
                # beating from the start: adopted runs are this executor's before its first job
                await loops.enter_async_context(essential_task(app, "heartbeat", beats))
                if settings.preload_images:
                    preload = preload_images(executor, app[JETSTREAM], app[SUBJECTS])
                    await loops.enter_async_context(owned_task("preload", preload))
                intake = await loops.enter_async_context(essential_task(app, "jobs", worker.run()))
                yield
                # stop intake, let running runs end for a while, then leave them to adoption
                await worker.drain(intake, settings.shutdown_timeout)

    app.cleanup_ctx.append(executor_ctx)
    return app
