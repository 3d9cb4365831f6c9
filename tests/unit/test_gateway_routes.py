"""The gateway of `app-engine up`: its routing table as a pure function, and the proxy against a
fake service (streaming both ways, headers, errors in the upstream format)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from services.embedded.gateway import ROUTES, SERVICES, build_gateway, route
from shared.web import json_response
from tests.support import free_port

P = "/app-engine/v1"
RUN = "0b5f6e1c-1f53-4c3e-9d4c-3f1f7d0a2b11"
TASK = "5a3a1f0e-7c1b-4a8e-8f67-1b7f0e3c2d44"


@pytest.mark.parametrize(
    ("path", "service"),
    [
        # task bundles and their catalogue
        (f"{P}/tasks", "registry"),
        (f"{P}/tasks/{TASK}", "registry"),
        (f"{P}/tasks/ns.demo/1.0.0", "registry"),
        (f"{P}/tasks/{TASK}/inputs", "registry"),
        (f"{P}/tasks/ns.demo/1.0.0/outputs", "registry"),
        (f"{P}/tasks/{TASK}/descriptor.yml", "registry"),
        (f"{P}/tasks/ns.demo/1.0.0/logo", "registry"),
        (f"{P}/tasks/ns.demo/1.0.0/install", "registry"),
        (f"{P}/stores", "registry"),
        (f"{P}/stores/default", "registry"),
        (f"{P}/stores/42/default", "registry"),
        # run creation and runs of a task
        (f"{P}/tasks/{TASK}/runs", "scheduler"),
        (f"{P}/tasks/ns.demo/1.0.0/runs", "scheduler"),
        # run storage exchange
        (f"{P}/task-runs/{RUN}/input-provisions", "storage"),
        (f"{P}/task-runs/{RUN}/input-provisions/image", "storage"),
        (f"{P}/task-runs/{RUN}/input-provisions/list/indexes", "storage"),
        (f"{P}/task-runs/{RUN}/inputs", "storage"),
        (f"{P}/task-runs/{RUN}/inputs.zip", "storage"),
        (f"{P}/task-runs/{RUN}/input/image", "storage"),
        (f"{P}/task-runs/{RUN}/input/list/indexes", "storage"),
        (f"{P}/task-runs/{RUN}/outputs", "storage"),
        (f"{P}/task-runs/{RUN}/outputs.zip", "storage"),
        (f"{P}/task-runs/{RUN}/output/mask.geojson", "storage"),
        (f"{P}/task-runs/{RUN}/s3cr3t/outputs.zip", "storage"),
        # run lifecycle and its additions
        (f"{P}/task-runs/{RUN}", "scheduler"),
        (f"{P}/task-runs/{RUN}/state-actions", "scheduler"),
        (f"{P}/task-runs/{RUN}/logs", "scheduler"),
        (f"{P}/task-runs/{RUN}/events", "scheduler"),
        (f"{P}/task-runs/{RUN}/cancel", "scheduler"),
        (f"{P}/task-runs", "scheduler"),
        (f"{P}/runs", "scheduler"),
        (f"{P}/events", "scheduler"),
        (f"{P}/events/stream", "scheduler"),
    ],
)
def test_route(path: str, service: str) -> None:
    assert route(path, P) == service


@pytest.mark.parametrize(
    "path",
    [
        P,
        f"{P}/",
        f"{P}/nope",
        f"{P}/tasksx",
        f"{P}/task-runsx/1",
        "/app-engine/v2/tasks",
        "/tasks",
        "/ping",
        "/app-engine/v1tasks",
    ],
)
def test_no_route(path: str) -> None:
    assert route(path, P) is None


def test_route_follows_the_prefix() -> None:
    assert route("/api/v1/tasks/ns/1/runs", "/api/v1") == "scheduler"
    assert route(f"{P}/tasks", "/api/v1") is None


def test_every_route_names_a_service() -> None:
    assert {service for _, service in ROUTES} <= set(SERVICES)


# the proxy, against a fake service


class FakeUpstreams:
    def __init__(self) -> None:
        self.urls: dict[str, str | None] = dict.fromkeys(SERVICES)

    def base_url(self, service: str) -> str | None:
        return self.urls.get(service)

    def processes(self) -> dict[str, str]:
        return {name: "running" if url else "restarting" for name, url in self.urls.items()}


class Fake:
    """A service that streams: it answers each upload chunk and download chunk on cue."""

    def __init__(self) -> None:
        self.first_chunk_received = asyncio.Event()
        self.client_has_first_chunk = asyncio.Event()
        self.endless_aborted = asyncio.Event()

    async def upload(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
            self.first_chunk_received.set()
        return json_response({"size": size, "sha256": digest.hexdigest()}, status=201)

    async def download(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b"a" * 1000)
        # the rest only once the client holds the first part: a buffering proxy deadlocks here
        await asyncio.wait_for(self.client_has_first_chunk.wait(), 10)
        await response.write(b"b" * 1000)
        await response.write_eof()
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):  # 640 MiB at most: far more than any buffer on the way
                await response.write(b"e" * 65536)
        except ConnectionResetError:
            self.endless_aborted.set()
        except asyncio.CancelledError:
            # how aiohttp tells a handler that its peer is gone while it waits to write
            self.endless_aborted.set()
            raise
        return response

    async def broken(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"c" * 1000)
        assert request.transport is not None
        request.transport.close()
        return response

    async def echo(self, request: web.Request) -> web.Response:
        response = json_response(
            {"method": request.method, "path_qs": request.raw_path, "headers": dict(request.headers)},
            status=207,
        )
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers["Keep-Alive"] = "timeout=5"
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{P}/tasks", self.upload)
        app.router.add_get(f"{P}/tasks/download", self.download)
        app.router.add_get(f"{P}/tasks/broken", self.broken)
        app.router.add_get(f"{P}/tasks/endless", self.endless)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app


Stack = tuple[Fake, FakeUpstreams, TestClient[web.Request, web.Application]]


@pytest.fixture
async def fake() -> AsyncIterator[Stack]:
    service = Fake()
    upstream = TestServer(service.app())
    await upstream.start_server()
    upstreams = FakeUpstreams()
    upstreams.urls["registry"] = f"http://127.0.0.1:{upstream.port}"
    upstreams.urls["scheduler"] = f"http://127.0.0.1:{upstream.port}"
    upstreams.urls["storage"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = TestClient(TestServer(build_gateway(upstreams, P)))
    await client.start_server()
    yield service, upstreams, client
    await client.close()
    await upstream.close()


async def test_upload_is_streamed_to_the_service(fake: Stack) -> None:
    service, _, client = fake
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for n in range(4):
            chunk = bytes([n]) * 256 * 1024
            sent.update(chunk)
            yield chunk
            # the service must see bytes before the upload ends: a buffering proxy deadlocks here
            await asyncio.wait_for(service.first_chunk_received.wait(), 10)

    resp = await client.post(f"{P}/tasks", data=body())
    assert resp.status == 201
    assert await resp.json() == {"size": 4 * 256 * 1024, "sha256": sent.hexdigest()}


async def test_download_is_streamed_to_the_client(fake: Stack) -> None:
    service, _, client = fake
    resp = await client.get(f"{P}/tasks/download")
    assert resp.status == 200
    assert await resp.content.readexactly(1000) == b"a" * 1000
    service.client_has_first_chunk.set()
    assert await resp.read() == b"b" * 1000


async def test_a_client_that_leaves_stops_the_service_stream(fake: Stack) -> None:
    service, _, client = fake
    resp = await client.get(f"{P}/tasks/endless")
    assert len(await resp.content.readexactly(65536)) == 65536
    resp.close()
    await asyncio.wait_for(service.endless_aborted.wait(), 10)


async def test_a_body_cut_by_the_service_is_cut_for_the_client(
    fake: Stack,
) -> None:
    _, _, client = fake
    resp = await client.get(f"{P}/tasks/broken")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_status_query_and_headers_pass_through(fake: Stack) -> None:
    _, _, client = fake
    # sent exactly as written: the proxy must not re-encode what it forwards either
    raw = f"{P}/task-runs/{RUN}/state-actions?value=1%2F2&x=%20y"
    resp = await client.session.put(
        URL(str(client.make_url("")).rstrip("/") + raw, encoded=True),
        headers={
            "X-Custom": "kept",
            "Proxy-Authorization": "secret",
            "Connection": "keep-alive, X-Private",
            "X-Private": "dropped",
        },
        data=b"{}",
    )
    assert resp.status == 207
    echoed = await resp.json()
    assert echoed["method"] == "PUT"
    assert echoed["path_qs"] == raw
    assert echoed["headers"]["X-Custom"] == "kept"
    assert "Proxy-Authorization" not in echoed["headers"]
    assert "X-Private" not in echoed["headers"]
    assert echoed["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "Keep-Alive" not in resp.headers


async def test_service_operations_are_proxied(fake: Stack) -> None:
    _, _, client = fake
    resp = await client.get("/services/registry/metrics?name=x")
    assert (await resp.json())["path_qs"] == "/metrics?name=x"
    resp = await client.get("/services/registry/config")
    assert resp.status == 404


NOT_FOUND = {
    "errorCode": "APPE-internal-route-not-found",
    "message": "no such endpoint",
    "details": {"type": "empty"},
}


async def test_unknown_paths_get_the_upstream_404(fake: Stack) -> None:
    _, _, client = fake
    for path in (f"{P}/nope", "/nope", f"{P}/", "/services/nope/ping"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert await resp.json() == NOT_FOUND


async def test_ping_is_answered_by_the_gateway(fake: Stack) -> None:
    _, _, client = fake
    body = await (await client.get("/ping")).json()
    assert body["status"] == "UP" and body["service"] == "app-engine" and body["timestamp"].endswith("Z")


async def test_a_service_down_answers_at_once_in_the_upstream_format(
    fake: Stack,
) -> None:
    _, _, client = fake
    # not running (being restarted): 503
    resp = await client.get("/services/executor/ready", timeout=aiohttp.ClientTimeout(total=5))
    assert resp.status == 503
    body = await resp.json()
    assert body["errorCode"] == "APPE-internal-service-unavailable" and body["details"] == {"type": "empty"}
    # running but not answering: 502
    resp = await client.get(f"{P}/task-runs/{RUN}/inputs", timeout=aiohttp.ClientTimeout(total=5))
    assert resp.status == 502
    body = await resp.json()
    assert body["errorCode"] == "APPE-internal-bad-gateway" and body["details"]["type"] == "server"


async def test_health_aggregates_the_services(fake: Stack) -> None:
    _, _, client = fake
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "DOWN"
    assert set(body["services"]) == set(SERVICES)
    assert body["services"]["executor"] == {"status": "DOWN", "error": "not running"}
    assert body["services"]["storage"]["status"] == "DOWN"
    assert body["processes"]["executor"] == "restarting"
