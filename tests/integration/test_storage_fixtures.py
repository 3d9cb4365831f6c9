"""Fixtures of the storage tests: the registry and the storage service on one schema, data dir
and subject prefix; a real task uploaded; runs created in the run log.

Imported by the other ``test_storage_*`` modules (it holds no tests itself).
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from services.storage.app import build_app
from services.storage.settings import StorageSettings
from shared.contracts import Subjects
from shared.domain.decide import CreateRun, MarkQueued, ProvisionInput, RequestRun, StartRun, TakeRun
from shared.domain.state import RunState
from shared.runlog.runs import RunLog
from shared.settings import load_settings
from tests.images import make_bundle
from tests.integration.conftest import Client, P, service_env, upload

DESCRIPTOR = (pathlib.Path(__file__).parents[1] / "fixtures" / "storage" / "descriptor.yml").read_bytes()
REQUIRED = ("ig",)
OPTIONAL = ("ie", "num", "special", "s", "flag", "choice", "when", "geo", "doc", "img", "arr", "nested", "images")


@dataclass
class Env:
    storage: Client
    runlog: RunLog
    task_id: uuid.UUID
    blobs: pathlib.Path

    async def new_run(self) -> uuid.UUID:
        run_id = uuid.uuid4()
        await self.runlog.execute(
            run_id,
            CreateRun(
                task_id=self.task_id,
                task_namespace="com.cytomine.test.storage.types",
                task_version="1.0.0",
                required_inputs=REQUIRED,
                optional_inputs=OPTIONAL,
            ),
        )
        return run_id

    async def state(self, run_id: uuid.UUID) -> RunState:
        return await self.runlog.load(run_id)

    async def to_running(self, run_id: uuid.UUID) -> None:
        state = await self.runlog.load(run_id)
        if not state.fully_provisioned:
            await self.runlog.execute(run_id, ProvisionInput(parameter="ig", size=1))
        for command in (RequestRun(), MarkQueued(), TakeRun(executor_id="test"), StartRun(container_id="c")):
            await self.runlog.execute(run_id, command)

    def blob(self, run_id: uuid.UUID, *parts: str) -> pathlib.Path:
        return self.blobs.joinpath("runs", str(run_id), *parts)

    def url(self, run_id: uuid.UUID | str, rest: str) -> str:
        return f"{P}/task-runs/{run_id}/{rest}"


@pytest.fixture(name="env")
async def env_fixture(
    registry: Client,
    busybox_tar: pathlib.Path,
    runlog: RunLog,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
) -> AsyncIterator[Env]:
    """The storage service beside the registry, with the types task uploaded."""
    bundle = make_bundle(tmp_path / "types.zip", DESCRIPTOR, busybox_tar)
    data = tmp_path / "data"
    values = service_env(schema, subjects, database_url, nats_url, data)
    async with storage_with_task(registry, bundle, values) as (client, task_id):
        yield Env(storage=client, runlog=runlog, task_id=task_id, blobs=data / "blobs")


@contextlib.asynccontextmanager
async def storage_with_task(
    registry: Client, bundle: pathlib.Path, values: dict[str, str]
) -> AsyncIterator[tuple[Client, uuid.UUID]]:
    """``bundle`` uploaded to ``registry``, and the storage service with settings ``values``
    (no relay: the registry's is enough; outputs up to 1 MiB): the client and the task's id."""
    status, body = await upload(registry, bundle)
    assert status == 200, body
    assert isinstance(body, dict)
    values = values | {"RELAY_ENABLED": "false", "MAX_OUTPUT_SIZE": str(1024 * 1024)}
    async with TestClient(TestServer(build_app(load_settings(StorageSettings, values)))) as client:
        yield client, uuid.UUID(body["id"])


def form(data: bytes, sidecar: bytes | None = None) -> FormData:
    """A binary provision's multipart body: the file, and the optional ``.geojson`` location."""
    f = FormData()
    f.add_field("file", data, filename="upload.bin", content_type="application/octet-stream")
    if sidecar is not None:
        f.add_field("location", sidecar, filename="location.geojson", content_type="application/geo+json")
    return f


def output_tar(entries: dict[str, bytes | None], top: str = "outputs") -> bytes:
    """A tar as Docker's get_archive gives it: everything under ``top/``; None = a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(top)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
