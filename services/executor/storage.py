"""The storage service adapter: a run's inputs in, its outputs out, both as tar streams.

``GET  {STORAGE_URL}/internal/runs/{id}/inputs.tar?folder=/inputs&mkdir=/outputs`` is the input
folder with its content and the empty output folder, to extract at ``/``;
``PUT {STORAGE_URL}/internal/runs/{id}/outputs.tar?exit_code=N`` takes the tar the engine gives
for the output folder (top-level entry: its basename). Storage validates the
outputs and itself appends FINISHED or FAILED(OUTPUTS_INVALID), answering ``{"state": ...}``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from services.executor.errors import StorageUnavailable

_CHUNK = 256 * 1024


class OutputsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    state: str


class StorageClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url.rstrip("/")
        self._session = session

    def _url(self, run_id: uuid.UUID, name: str) -> str:
        return f"{self._base}/internal/runs/{run_id}/{name}"

    @contextlib.asynccontextmanager
    async def inputs(self, run_id: uuid.UUID, folder: str, mkdir: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The run's inputs tar as a stream of chunks, to extract at ``/``: the input folder
        ``folder`` with the inputs in it, and the empty folder ``mkdir`` (the output folder)."""
        url = self._url(run_id, "inputs.tar")
        params = {"folder": folder, "mkdir": mkdir}
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=300)
        try:
            async with self._session.get(url, params=params, timeout=timeout) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise StorageUnavailable(f"storage answered {resp.status} for the inputs of run {run_id}: {text}")
                yield resp.content.iter_chunked(_CHUNK)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"storage unreachable for the inputs of run {run_id}: {exc!r}") from exc

    async def put_outputs(self, run_id: uuid.UUID, exit_code: int, tar: AsyncIterator[bytes]) -> str:
        """Send the outputs tar; the run state storage decided (FINISHED or FAILED)."""
        url = self._url(run_id, "outputs.tar")
        try:
            async with self._session.put(
                url,
                params={"exit_code": str(exit_code)},
                data=tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=600),
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise StorageUnavailable(
                        f"storage answered {resp.status} for the outputs of run {run_id}: {body[:300]!r}"
                    )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"storage unreachable for the outputs of run {run_id}: {exc!r}") from exc
        try:
            return msgspec.json.decode(body, type=OutputsAnswer).state
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ""
