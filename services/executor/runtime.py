"""The Docker engine adapter (aiodocker): images, containers, archives, logs.

Every Docker failure leaves this module as an :class:`~services.executor.errors.EngineError`
(404 as :class:`~services.executor.errors.ContainerGone`). Bulk data (image archives, input and
output tars, logs) is streamed through the engine API, never held in memory, so it works the
same with a remote engine and needs no shared paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import aiodocker
import aiohttp
import msgspec
from aiodocker.exceptions import DockerError
from aiohttp import web

from services.executor.errors import ContainerGone, EngineError, ImageUnavailable
from services.executor.settings import ExecutorSettings
from shared.web import READINESS

LABEL_RUN = "org.cytomine.appengine.run"
LABEL_EXECUTOR = "org.cytomine.appengine.executor"
LABEL_TASK = "org.cytomine.appengine.task"
LABEL_ATTEMPT = "org.cytomine.appengine.attempt"

_NO_TIMEOUT = aiohttp.ClientTimeout()
_QUICK = aiohttp.ClientTimeout(total=60)


class NoDockerEngine(ConnectionError):
    """No Docker engine answers at the configured or default address."""


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a task container is created with (the engine-neutral part of the request)."""

    name: str
    image_id: str
    labels: dict[str, str]
    nano_cpus: int | None
    memory_bytes: int
    gpus: int
    internet: bool
    pids_limit: int

    def create_config(self) -> dict[str, Any]:
        host: dict[str, Any] = {
            "Memory": self.memory_bytes,
            # no swap beyond the memory limit: a task over its RAM is OOM-killed, not slowed down
            "MemorySwap": self.memory_bytes,
            "NetworkMode": "bridge" if self.internet else "none",
            "Privileged": False,
            "SecurityOpt": ["no-new-privileges"],
            "CapDrop": ["ALL"],
            "PidsLimit": self.pids_limit,
            "PortBindings": {},
            "PublishAllPorts": False,
            "AutoRemove": False,
            "RestartPolicy": {"Name": "no"},
        }
        if self.nano_cpus is not None:
            host["NanoCpus"] = self.nano_cpus
        if self.gpus > 0:
            host["DeviceRequests"] = [{"Driver": "", "Count": self.gpus, "Capabilities": [["gpu"]]}]
        # entrypoint and command are the image's own (the upstream task contract)
        return {
            "Image": self.image_id,
            "Labels": self.labels,
            "Tty": False,
            "OpenStdin": False,
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "NetworkDisabled": not self.internet,
            "HostConfig": host,
        }


class ContainerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of ``docker inspect`` the executor acts on."""

    id: str
    running: bool
    status: str
    exit_code: int
    oom_killed: bool
    labels: dict[str, str]


class LogChunk(msgspec.Struct, frozen=True):
    """A line the task printed: ``stream`` is ``stdout`` or ``stderr``; ``at`` Docker's RFC 3339 time."""

    stream: str
    at: str
    line: str


def _translate(exc: BaseException, what: str) -> EngineError:
    if isinstance(exc, DockerError):
        cls = ContainerGone if exc.status == 404 else EngineError
        return cls(f"{what}: Docker answered {exc.status}: {exc.message}", exc.status)
    return EngineError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _docker_errors(what: str) -> Any:
    try:
        yield
    except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _translate(exc, what) from exc


class Engine:
    """Holds the Docker client, created when an engine becomes reachable.

    The executor starts without an engine (readiness reports it) rather than crashing, so an
    operator sees one clear message instead of a restart loop.
    """

    def __init__(self, docker_host: str) -> None:
        self._docker_host = docker_host or None
        self._client: aiodocker.Docker | None = None
        self._image_locks: dict[str, asyncio.Lock] = {}

    def client(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self._docker_host)
            except (AssertionError, ValueError) as exc:
                # aiodocker asserts when neither DOCKER_HOST nor a default socket exists
                raise NoDockerEngine(
                    "no Docker engine found: set DOCKER_HOST or start dockerd (tasks cannot run without one)"
                ) from exc
        return self._client

    def _docker(self) -> aiodocker.Docker:
        try:
            return self.client()
        except NoDockerEngine as exc:
            raise EngineError(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def _request(self, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """A raw engine request whose response is released on exit, even when abandoned midway
        (aiodocker's ``_query`` leaves that to the caller)."""
        async with self._docker()._query(path, **kwargs) as response:
            try:
                yield response
            finally:
                response.release()

    async def _send(self, what: str, path: str, **kwargs: Any) -> None:
        """A request whose answer is only its status (errors as :class:`EngineError`); quick
        unless ``timeout`` says otherwise."""
        kwargs.setdefault("timeout", _QUICK)
        with _docker_errors(what):
            async with self._request(path, **kwargs):
                pass

    async def check(self) -> None:
        await self.client().version()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    # --- images ---------------------------------------------------------------------------------

    async def has_image(self, image_id: str) -> bool:
        try:
            with _docker_errors(f"inspect image {image_id}"):
                await self._docker()._query_json(f"images/{image_id}/json", timeout=_QUICK)
        except ContainerGone:
            return False
        return True

    async def ensure_image(self, image_id: str, archive: Callable[[], AsyncIterator[bytes]]) -> bool:
        """Make ``image_id`` present, loading ``archive()`` (a ``docker save`` tar) if absent.

        Returns whether it had to load. One load per image at a time: concurrent runs of a task
        wait for the first load instead of streaming the same archive twice.
        """
        if await self.has_image(image_id):
            return False
        lock = self._image_locks.setdefault(image_id, asyncio.Lock())
        async with lock:
            if await self.has_image(image_id):
                return False
            with _docker_errors(f"load image {image_id}"):
                async with self._request(
                    "images/load",
                    method="POST",
                    params={"quiet": "1"},
                    data=archive(),
                    headers={"Content-Type": "application/x-tar"},
                    timeout=_NO_TIMEOUT,
                    chunked=True,
                ) as response:
                    # the engine reports archive errors inside a 200 JSON stream
                    async for raw in response.content:
                        line = raw.strip()
                        if line.startswith(b"{") and b'"error"' in line:
                            detail = json.loads(line).get("error", line.decode(errors="replace"))
                            raise ImageUnavailable(f"the engine refused the image archive: {detail}")
            if not await self.has_image(image_id):
                raise ImageUnavailable(f"the image archive does not contain image {image_id}")
            return True

    # --- containers -----------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        with _docker_errors(f"create container {spec.name}"):
            data = await self._docker()._query_json(
                "containers/create",
                method="POST",
                params={"name": spec.name},
                data=spec.create_config(),
                timeout=_QUICK,
            )
        return str(data["Id"])

    async def put_archive(self, container_id: str, path: str, data: bytes | AsyncIterator[bytes]) -> None:
        """Extract a tar (bytes or a stream of chunks) at ``path`` inside the container."""
        await self._send(
            f"copy into container {container_id[:12]} at {path}",
            f"containers/{container_id}/archive",
            method="PUT",
            params={"path": path},
            data=data,
            headers={"Content-Type": "application/x-tar"},
            timeout=_NO_TIMEOUT,
            chunked=None if isinstance(data, bytes) else True,
        )

    @contextlib.asynccontextmanager
    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The tar of ``path`` in the container, as a stream of chunks (top-level entry: its basename)."""
        with _docker_errors(f"copy out of container {container_id[:12]} at {path}"):
            async with self._request(
                f"containers/{container_id}/archive",
                method="GET",
                params={"path": path},
                timeout=_NO_TIMEOUT,
            ) as response:
                yield response.content.iter_chunked(256 * 1024)

    async def start(self, container_id: str) -> None:
        await self._send(f"start container {container_id[:12]}", f"containers/{container_id}/start", method="POST")

    async def wait(self, container_id: str) -> int:
        """Block until the container exits; its exit code."""
        with _docker_errors(f"wait for container {container_id[:12]}"):
            data = await self._docker()._query_json(
                f"containers/{container_id}/wait", method="POST", timeout=_NO_TIMEOUT
            )
        return int(data.get("StatusCode", -1))

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (Docker's stop); a stopped container is fine."""
        grace = max(0, round(grace_seconds))
        with contextlib.suppress(ContainerGone):
            await self._send(
                f"stop container {container_id[:12]}",
                f"containers/{container_id}/stop",
                method="POST",
                params={"t": grace},
                timeout=aiohttp.ClientTimeout(total=grace + 60),
            )

    async def remove(self, container_id: str) -> None:
        """Kill if needed and remove, with its anonymous volumes; absent is fine."""
        try:
            await self._send(
                f"remove container {container_id[:12]}",
                f"containers/{container_id}",
                method="DELETE",
                params={"force": "1", "v": "1"},
            )
        except ContainerGone:
            pass
        except EngineError as exc:
            # 409 "removal already in progress" is as good as done
            if exc.status != 409:
                raise

    async def inspect(self, container_id: str) -> ContainerStatus:
        with _docker_errors(f"inspect container {container_id[:12]}"):
            data = await self._docker()._query_json(f"containers/{container_id}/json", timeout=_QUICK)
        state = data.get("State") or {}
        return ContainerStatus(
            id=str(data["Id"]),
            running=bool(state.get("Running")) or bool(state.get("Restarting")),
            status=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            labels=dict((data.get("Config") or {}).get("Labels") or {}),
        )

    async def containers(self, labels: Mapping[str, str]) -> list[ContainerStatus]:
        """Every container (running or not) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        with _docker_errors("list containers"):
            listed = await self._docker()._query_json(
                "containers/json", params={"all": "1", "filters": filters}, timeout=_QUICK
            )
        found = []
        for item in listed:
            with contextlib.suppress(ContainerGone):
                found.append(await self.inspect(str(item["Id"])))
        return found

    async def logs(self, container_id: str, *, follow: bool) -> AsyncGenerator[LogChunk, None]:
        """The container's output as lines, stdout and stderr told apart, with Docker's timestamps."""
        with _docker_errors(f"logs of container {container_id[:12]}"):
            async with self._request(
                f"containers/{container_id}/logs",
                params={"stdout": "1", "stderr": "1", "follow": "1" if follow else "0", "timestamps": "1"},
                timeout=_NO_TIMEOUT,
            ) as response:
                async for chunk in demultiplex(response.content):
                    yield chunk


_STREAMS = {1: "stdout", 2: "stderr"}
_MAX_LINE = 64 * 1024


async def demultiplex(content: aiohttp.StreamReader) -> AsyncGenerator[LogChunk, None]:
    """Lines of Docker's multiplexed log stream (8-byte frame headers, no TTY).

    With ``timestamps`` each frame's payload is ``<RFC 3339 time> <text>``; Docker frames at most
    one line per frame for the json-file driver, and splits longer lines (16 KiB) across frames,
    so partial lines are joined here, bounded to ``_MAX_LINE``.
    """
    pending: dict[str, tuple[str, str]] = {}
    while True:
        try:
            header = await content.readexactly(8)
            kind, size = struct.unpack(">BxxxL", header)
            payload = (await content.readexactly(size)).decode("utf-8", errors="replace")
        except asyncio.IncompleteReadError:
            break  # the stream ended mid-frame (engine gone): what came whole still counts
        stream = _STREAMS.get(kind, "stdout")
        at, _, text = payload.partition(" ")
        started, before = pending.pop(stream, (at, ""))
        text = before + text
        if text.endswith("\n"):
            yield LogChunk(stream, started, text[:-1])
        elif len(text) >= _MAX_LINE:
            yield LogChunk(stream, started, text)
        else:
            pending[stream] = (started, text)
    for stream, (at, text) in pending.items():
        if text:
            yield LogChunk(stream, at, text)


ENGINE = web.AppKey("engine", Engine)


def docker_ctx(settings: ExecutorSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The Docker engine for the app's lifetime; readiness fails while it does not answer."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = Engine(settings.docker_host)
        app[ENGINE] = engine
        app[READINESS]["docker"] = engine.check
        try:
            yield
        finally:
            await engine.close()

    return ctx
