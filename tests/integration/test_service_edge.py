"""Every service's operational edge over real HTTP: ping, health, readiness, metrics, errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.executor.app import build_app as executor_app
from services.executor.settings import ExecutorSettings
from services.registry.app import build_app as registry_app
from services.registry.settings import RegistrySettings
from services.scheduler.app import build_app as scheduler_app
from services.scheduler.settings import SchedulerSettings
from services.storage.app import build_app as storage_app
from services.storage.settings import StorageSettings
from shared.contracts import Subjects
from shared.service import STOP_ON_LOOP_END, essential_task
from shared.settings import load_settings
from shared.web import ESSENTIAL, SERVICE_NAME, ApiError, create_app


@pytest.fixture(params=["registry", "scheduler", "storage", "executor"])
async def client(
    request: pytest.FixtureRequest, schema: str, subjects: Subjects, database_url: str, nats_url: str
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "DATABASE_SCHEMA": schema,
        "NATS_SUBJECT_PREFIX": subjects.prefix,
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    builders = {
        "registry": lambda: registry_app(load_settings(RegistrySettings, env)),
        "scheduler": lambda: scheduler_app(load_settings(SchedulerSettings, env)),
        "storage": lambda: storage_app(load_settings(StorageSettings, env)),
        "executor": lambda: executor_app(load_settings(ExecutorSettings, env)),
    }
    async with TestClient(TestServer(builders[request.param]())) as c:
        yield c
    # the service created streams under this test's prefix
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name in (subjects.events_stream, subjects.jobs_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await nc.close()


async def test_ping_is_the_upstream_body(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/ping")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "UP" and body["service"] == "app-engine" and body["timestamp"].endswith("Z")


async def test_readiness_checks_postgres_and_nats(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/ready")
    body = await resp.json()
    assert body["checks"]["postgres"] == "UP"
    assert body["checks"]["nats"] == "UP"
    if body["service"] == "executor":
        # DOCKER_HOST points nowhere: not ready, and it says why
        assert resp.status == 503 and body["checks"]["docker"].startswith("DOWN")
    else:
        assert resp.status == 200 and body["status"] == "UP"


ESSENTIAL_LOOPS = {
    "registry": {"relay"},
    "storage": {"relay"},
    "scheduler": {"relay", "watchdog", "consumer-0", "consumer-1", "consumer-2", "consumer-3"},
    "executor": {"relay", "heartbeat", "jobs"},
}


async def test_a_service_whose_loop_ended_is_not_healthy(client: TestClient[web.Request, web.Application]) -> None:
    """A service that no longer takes jobs or relays events must be restarted, not look fine."""
    service = client.app[SERVICE_NAME]
    resp = await client.get("/health")
    assert (resp.status, (await resp.json())["status"]) == (200, "UP")
    loops = client.app[ESSENTIAL]
    assert set(loops) == ESSENTIAL_LOOPS[service]
    victim = sorted(loops)[-1]
    loops[victim].cancel()  # as if it had died: only shutdown may end it
    await asyncio.wait([loops[victim]])
    resp = await client.get("/health")
    assert resp.status == 503
    assert await resp.json() == {"status": "DOWN", "service": service, "ended": {victim: "cancelled"}}
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.json())["checks"][victim] == "DOWN: cancelled"


async def test_a_loop_that_fails_stops_the_service_for_a_restart() -> None:
    app = create_app("probe")
    stops: list[str] = []
    app[STOP_ON_LOOP_END] = stops.append  # serve() shuts the process down and exits 70
    failed = asyncio.Event()

    async def intake() -> None:
        await failed.wait()
        raise RuntimeError("fetch broke")

    async def loops(app: web.Application) -> AsyncIterator[None]:
        async with essential_task(app, "jobs", intake()):
            yield

    app.cleanup_ctx.append(loops)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/health")).status == 200
        failed.set()
        await asyncio.wait([c.app[ESSENTIAL]["jobs"]])
        resp = await c.get("/health")
        assert resp.status == 503
        assert (await resp.json())["ended"] == {"jobs": "ended: RuntimeError('fetch broke')"}
        assert stops == ["jobs"]
    assert stops == ["jobs"]  # and not again at shutdown


async def test_unknown_route_is_an_upstream_error(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/app-engine/v1/no/such/thing")
    assert resp.status == 404
    assert await resp.json() == {
        "errorCode": "APPE-internal-route-not-found",
        "message": "no such endpoint",
        "details": {"type": "empty"},
    }


async def test_metrics_are_prometheus_text(client: TestClient[web.Request, web.Application]) -> None:
    await client.get("/ping")
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert 'appengine_http_requests_total{method="GET",route="/ping",status="200"}' in text


async def test_errors_are_rendered_by_one_middleware() -> None:
    app = create_app("probe")

    async def forbidden(request: web.Request) -> web.Response:
        raise ApiError(403, "APPE-internal-task-run-state-error", "run is in invalid state", with_details=False)

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/forbidden", forbidden)
    app.router.add_get("/crash", crash)
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/forbidden")
        assert resp.status == 403
        assert await resp.json() == {
            "errorCode": "APPE-internal-task-run-state-error",
            "message": "run is in invalid state",
        }
        resp = await c.get("/crash")
        assert resp.status == 500
        assert await resp.json() == {
            "errorCode": "APPE-internal-server-error",
            "message": "Server error.",
            "details": {"type": "server", "exceptionMessage": "RuntimeError"},
        }
