"""The HTTP edge every service shares: the upstream error body, one error middleware,
request logging and metrics, and the ``/ping``, ``/health``, ``/ready`` and ``/metrics`` routes.

The HTTP status of every error is chosen here, by error class, and nowhere else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from shared.domain.errors import (
    DomainError,
    InvalidRunState,
    NotProvisioned,
    RunNotFound,
    UnknownParameter,
)

log = structlog.get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[None]]

ErrorRenderer = Callable[[Exception], "ApiError"]

SERVICE_NAME = web.AppKey("service_name", str)
ERROR_RENDERERS = web.AppKey("error_renderers", dict[type[Exception], ErrorRenderer])
READINESS = web.AppKey("readiness", dict[str, ReadinessCheck])
METRICS = web.AppKey("metrics", CollectorRegistry)
# background loops the service is useless without (job intake, consumers, relay): if one ends,
# the process is not healthy any more and must be restarted
ESSENTIAL = web.AppKey("essential", dict[str, "asyncio.Task[None]"])


class ApiError(Exception):
    """An error answered in the upstream format ``{"errorCode","message","details"}``."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        with_details: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.details = details if details is not None else {"type": "empty"}
        self.with_details = with_details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errorCode": self.error_code, "message": self.message}
        if self.with_details:
            body["details"] = self.details
        return body


def bad_request(error_code: str, message: str, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(400, error_code, message, details)


def from_domain(error: DomainError) -> ApiError:
    """The upstream rendering of a domain error (reference §2.2)."""
    match error:
        case RunNotFound():
            return ApiError(404, error.error_code, error.message)
        case UnknownParameter():
            return ApiError(
                404, error.error_code, error.message, {"type": "parameter", "parameterName": error.parameter}
            )
        case InvalidRunState() | NotProvisioned():
            # upstream answers 403 state errors with only errorCode and message
            return ApiError(403, error.error_code, error.message, with_details=False)
        case _:
            return ApiError(400, error.error_code, error.message)


def render_errors(app: web.Application, renderers: dict[type[Exception], ErrorRenderer]) -> None:
    """Teach the error middleware a service's own error classes (matched in insertion order)."""
    app[ERROR_RENDERERS].update(renderers)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; a 400 in the upstream format otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "APPE-internal-request-validation-error", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "APPE-internal-request-validation-error", f"{name} must be between {low} and {high}")
    return value


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json", headers=headers)


def _error_response(err: ApiError) -> web.Response:
    return json_response(err.body(), status=err.status)


def _service_errors(request: web.Request) -> tuple[type[Exception], ...]:
    renderers: dict[type[Exception], ErrorRenderer] = request.app[ERROR_RENDERERS]
    return tuple(renderers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an upstream-format error; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err)
    except DomainError as err:
        return _error_response(from_domain(err))
    except _service_errors(request) as err:
        renderers = request.app[ERROR_RENDERERS]
        render = next(r for cls, r in renderers.items() if isinstance(err, cls))
        return _error_response(render(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: "APPE-internal-route-not-found",
            405: "APPE-internal-method-not-allowed",
            413: "APPE-internal-request-too-large",
        }.get(exc.status, "APPE-internal-request-error")
        message = {404: "no such endpoint", 405: "method not allowed", 413: "request body too large"}.get(
            exc.status, exc.reason
        )
        return _error_response(ApiError(exc.status, code, message))
    except Exception as exc:
        log.exception("http.unhandled", path=request.path, method=request.method)
        return _error_response(
            ApiError(
                500,
                "APPE-internal-server-error",
                "Server error.",
                {"type": "server", "exceptionMessage": type(exc).__name__},
            )
        )


def _metrics_middleware(registry: CollectorRegistry) -> Callable[..., Awaitable[web.StreamResponse]]:
    requests = Counter(
        "appengine_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "appengine_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry
    )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            elapsed = time.perf_counter() - started
            requests.labels(request.method, route, str(status)).inc()
            latency.labels(request.method, route).observe(elapsed)
            if route not in ("/metrics", "/health", "/ready", "/ping"):
                log.info(
                    "http.request",
                    method=request.method,
                    path=request.path,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )

    return middleware


async def ping(request: web.Request) -> web.Response:
    """The upstream ``GET /ping`` body."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return json_response({"status": "UP", "timestamp": now, "service": "app-engine"})


def ended_loops(app: web.Application) -> dict[str, str]:
    """The essential loops that ended (each ends only by cancellation at shutdown), and how."""
    ended = {}
    for name, task in app[ESSENTIAL].items():
        if task.done():
            error = None if task.cancelled() else task.exception()
            ended[name] = "cancelled" if task.cancelled() else f"ended: {error!r}"[:300]
    return ended


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves requests and its essential loops run (503 naming the ended
    ones otherwise: restart the process)."""
    ended = ended_loops(request.app)
    if ended:
        body = {"status": "DOWN", "service": request.app[SERVICE_NAME], "ended": ended}
        return json_response(body, status=503)
    return json_response({"status": "UP", "service": request.app[SERVICE_NAME]})


async def ready(request: web.Request) -> web.Response:
    """Readiness: every dependency answers (PostgreSQL, NATS, Docker for the executor)."""
    checks = {name: f"DOWN: {how}" for name, how in ended_loops(request.app).items()}
    ok = not checks
    for name, check in request.app[READINESS].items():
        try:
            await check()
            checks[name] = "UP"
        except Exception as exc:
            ok = False
            checks[name] = f"DOWN: {type(exc).__name__}: {exc}"[:300]
    body = {"status": "UP" if ok else "DOWN", "service": request.app[SERVICE_NAME], "checks": checks}
    return json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import REGISTRY

    payload = generate_latest(request.app[METRICS]) + generate_latest(REGISTRY)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(service: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An aiohttp application with the shared middleware and operational routes."""
    registry = CollectorRegistry()
    app = web.Application(
        middlewares=[_metrics_middleware(registry), error_middleware], client_max_size=client_max_size
    )
    app[SERVICE_NAME] = service
    app[ERROR_RENDERERS] = {}
    app[READINESS] = {}
    app[ESSENTIAL] = {}
    app[METRICS] = registry
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
