"""The single public port of `app-engine up`: a streaming reverse proxy in front of the services.

API paths under the prefix are routed to a service by the table ``ROUTES`` (data, tested as a
pure function). Bodies are streamed both ways chunk by chunk: an upload or a zip of gigabytes
never sits in memory. The gateway also answers the upstream ``/ping``, aggregates ``/health`` and
``/ready`` over the four services, and exposes each service's operational endpoints under
``/services/{name}/``. A service that is down gives a 502/503 in the upstream error format.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shared.web import ApiError, json_response, ping

log = structlog.get_logger("gateway")

SERVICES = ("registry", "scheduler", "storage", "executor")
OPERATIONS = ("ping", "health", "ready", "metrics")

# (pattern of the path after the API prefix, service), first match wins. Segments are matched
# on the raw (percent-encoded) path so an encoded "/" inside a name cannot change the route.
ROUTES: tuple[tuple[str, str], ...] = (
    # run creation and the runs of a task: the scheduler, although under /tasks
    (r"/tasks/[^/]+/runs/?", "scheduler"),
    (r"/tasks/[^/]+/[^/]+/runs/?", "scheduler"),
    (r"/tasks(/.*)?", "registry"),
    (r"/stores(/.*)?", "registry"),
    # the run storage exchange
    (r"/task-runs/[^/]+/input-provisions(/.*)?", "storage"),
    (r"/task-runs/[^/]+/inputs(\.zip)?/?", "storage"),
    (r"/task-runs/[^/]+/input/.+", "storage"),
    (r"/task-runs/[^/]+/outputs(\.zip)?/?", "storage"),
    (r"/task-runs/[^/]+/output/.+", "storage"),
    # upstream's cluster-mode outputs upload (POST .../{run_id}/{secret}/outputs.zip)
    (r"/task-runs/[^/]+/[^/]+/outputs\.zip", "storage"),
    (r"/task-runs(/.*)?", "scheduler"),
    (r"/runs(/.*)?", "scheduler"),
    (r"/events(/.*)?", "scheduler"),
)
_COMPILED = tuple((re.compile(pattern), service) for pattern, service in ROUTES)

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. Host is replaced by the
# upstream's (the original goes in X-Forwarded-Host); Expect was already answered by this server.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UP = frozenset({"host", "expect"})
# aiohttp's client would otherwise add its own defaults to what the caller sent
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3)


def route(path: str, prefix: str) -> str | None:
    """The service that serves ``path`` (raw, without query), or None if none does.

    ``prefix`` is where the API is mounted (``/app-engine/v1``).
    """
    if not path.startswith(prefix + "/"):
        return None
    rest = path[len(prefix) :]
    for pattern, service in _COMPILED:
        if pattern.fullmatch(rest):
            return service
    return None


class Upstreams(Protocol):
    """What the gateway needs from the supervisor: where each service listens right now."""

    def base_url(self, service: str) -> str | None:
        """``http://127.0.0.1:<port>`` of a running service, None while it is down."""

    def processes(self) -> dict[str, str]:
        """The state of every supervised process, by name, for /health."""


UPSTREAMS = web.AppKey("upstreams", Upstreams)
PREFIX = web.AppKey("prefix", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _not_found() -> ApiError:
    return ApiError(404, "APPE-internal-route-not-found", "no such endpoint")


def _unavailable(service: str) -> ApiError:
    return ApiError(
        503, "APPE-internal-service-unavailable", f"the {service} service is not running; it is being restarted"
    )


def _bad_gateway(service: str, exc: BaseException) -> ApiError:
    return ApiError(
        502,
        "APPE-internal-bad-gateway",
        f"the {service} service did not answer",
        {"type": "server", "exceptionMessage": f"{type(exc).__name__}: {exc}"[:300]},
    )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors before a response starts leave in the upstream format."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as err:
        return json_response(err.body(), status=err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            error = _not_found()
        elif exc.status == 405:
            error = ApiError(405, "APPE-internal-method-not-allowed", "method not allowed")
        else:
            error = ApiError(exc.status, "APPE-internal-request-error", exc.reason)
        return json_response(error.body(), status=error.status)
    except Exception as exc:
        log.exception("gateway.unhandled", path=request.path, method=request.method)
        error = ApiError(
            500,
            "APPE-internal-server-error",
            "Server error.",
            {"type": "server", "exceptionMessage": type(exc).__name__},
        )
        return json_response(error.body(), status=error.status)


def _filtered(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop ones (including those Connection names)."""
    named = {
        token.strip().lower()
        for key, value in headers.items()
        if key.lower() == "connection"
        for token in value.split(",")
    }
    skip = _HOP_BY_HOP | named | set(drop)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in skip:
            out.add(key, value)
    return out


def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
    headers = _filtered(request.headers, _NOT_FORWARDED_UP)
    peer = request.remote or ""
    earlier = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer
    headers.setdefault("X-Forwarded-Host", request.host)
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    return headers


async def proxy(request: web.Request, service: str, path_qs: str) -> web.StreamResponse:
    """Forward ``request`` to ``service`` at ``path_qs`` (raw path and query), streaming both ways."""
    base = request.app[UPSTREAMS].base_url(service)
    if base is None:
        raise _unavailable(service)
    try:
        async with request.app[SESSION].request(
            request.method,
            URL(base + path_qs, encoded=True),
            headers=_upstream_headers(request),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        ) as upstream:
            # leaving this block early closes the upstream connection: the service sees it
            return await _relay(request, upstream, service)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # no byte of an answer has gone out yet (_relay deals with failures after that)
        log.warning("gateway.upstream_failed", service=service, path=request.path, error=repr(exc))
        raise _bad_gateway(service, exc) from exc


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, service: str) -> web.StreamResponse:
    """Copy the service's answer to the client as it arrives."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_filtered(upstream.headers))
    try:
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # the service died mid-body and the status is already sent: cutting the connection
                # is the only honest signal left (a clean end would pass a truncated body off as whole)
                log.warning("gateway.upstream_broke", service=service, path=request.path, error=repr(exc))
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
                return response
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        # the client went away: nobody is left to answer
        pass
    return response


async def api(request: web.Request) -> web.StreamResponse:
    service = route(request.raw_path.split("?", 1)[0], request.app[PREFIX])
    if service is None:
        raise _not_found()
    return await proxy(request, service, request.raw_path)


async def service_operation(request: web.Request) -> web.StreamResponse:
    name, operation = request.match_info["name"], request.match_info["operation"]
    if name not in SERVICES or operation not in OPERATIONS:
        raise _not_found()
    query = f"?{request.query_string}" if request.query_string else ""
    return await proxy(request, name, f"/{operation}{query}")


async def _probe(session: aiohttp.ClientSession, base: str | None, operation: str) -> dict[str, Any]:
    """A service's own /health or /ready body, or why there is none."""
    if base is None:
        return {"status": "DOWN", "error": "not running"}
    try:
        async with session.get(f"{base}/{operation}", timeout=_PROBE_TIMEOUT) as resp:
            body = await resp.json(content_type=None)
            if not isinstance(body, dict):
                return {"status": "DOWN", "error": f"unexpected answer (HTTP {resp.status})"}
            if resp.status != 200:
                body.setdefault("status", "DOWN")
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"status": "DOWN", "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _aggregate(request: web.Request, operation: str) -> web.Response:
    upstreams, session = request.app[UPSTREAMS], request.app[SESSION]
    bodies = await asyncio.gather(*(_probe(session, upstreams.base_url(s), operation) for s in SERVICES))
    services = dict(zip(SERVICES, bodies, strict=True))
    ok = all(body.get("status") == "UP" for body in bodies)
    payload = {"status": "UP" if ok else "DOWN", "services": services, "processes": upstreams.processes()}
    return json_response(payload, status=200 if ok else 503)


async def health(request: web.Request) -> web.Response:
    """UP when all four services are alive."""
    return await _aggregate(request, "health")


async def ready(request: web.Request) -> web.Response:
    """UP when all four services are ready (their PostgreSQL, NATS, Docker answer); else 503."""
    return await _aggregate(request, "ready")


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(
        # no overall or read deadline: uploads, downloads and live logs last as long as they last
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        connector=aiohttp.TCPConnector(limit=0),
        # bytes pass through as the service encoded them
        auto_decompress=False,
        # a proxy must never keep one client's cookies and send them with another's requests
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[SESSION] = session
    try:
        yield
    finally:
        await session.close()


def build_gateway(upstreams: Upstreams, prefix: str) -> web.Application:
    """The gateway application; ``prefix`` is the API mount point (``/app-engine/v1``)."""
    app = web.Application(middlewares=[_errors])
    app[UPSTREAMS] = upstreams
    app[PREFIX] = prefix
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/services/{name}/{operation}", service_operation)
    app.router.add_route("*", "/{tail:.*}", api)
    return app
