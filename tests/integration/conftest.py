"""Fixtures of the integration tier: services built with real PostgreSQL, NATS and images."""

from __future__ import annotations

import contextlib
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from services.registry.app import build_app
from services.registry.settings import RegistrySettings
from services.scheduler.app import build_app as build_scheduler
from services.scheduler.settings import SchedulerSettings
from shared.contracts import Subjects
from shared.s3blobstore import S3Config
from shared.settings import load_settings
from tests.images import build_image, require_docker, save_image
from tests.s3server import moto_server

P = "/app-engine/v1"
Client = TestClient[web.Request, web.Application]

ADD = b"""name: Integers addition
name_short: add_int
version: 0.1.0
namespace: com.cytomine.dummy.arithmetic.integer.addition
$schema: https://cytomine.com/schema-store/tasks/task.v0.json
authors:
  - first_name: Romain
    last_name: Mormont
    organization: Cytomine Corporation
    email: romain.mormont@cytomine.com
    is_contact: true
configuration:
  input_folder: /inputs
  output_folder: /outputs
  image:
    file: /image.tar
inputs:
  a:
    display_name: A
    type: integer
    description: First operand
  b:
    display_name: B
    type:
      id: integer
      geq: 0
    default: 5
    description: Second operand
outputs:
  out:
    display_name: Sum
    type: integer
    description: Sum of A and B
"""


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A busybox image built FROM scratch and saved with `docker save` (once per session)."""
    require_docker()
    work = tmp_path_factory.mktemp("images")
    build_image("appengine-test/busybox:registry", work)
    return save_image("appengine-test/busybox:registry", work / "busybox.tar")


def service_env(
    schema: str, subjects: Subjects, database_url: str, nats_url: str, data: pathlib.Path
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "DATABASE_SCHEMA": schema,
        "NATS_SUBJECT_PREFIX": subjects.prefix,
        "DATA_DIR": str(data),
        "MAX_BUNDLE_SIZE": str(64 * 1024 * 1024),
    }


async def delete_streams(nats_url: str, subjects: Subjects) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name in (subjects.events_stream, subjects.jobs_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await nc.close()


@pytest.fixture
async def registry(
    schema: str, subjects: Subjects, database_url: str, nats_url: str, tmp_path: pathlib.Path
) -> AsyncIterator[Client]:
    """The registry service over HTTP, its data under ``tmp_path/data``."""
    env = service_env(schema, subjects, database_url, nats_url, tmp_path / "data")
    async with TestClient(TestServer(build_app(load_settings(RegistrySettings, env)))) as c:
        yield c
    await delete_streams(nats_url, subjects)


@pytest.fixture
def scheduler_env() -> dict[str, str]:
    """Extra settings for the scheduler of a test (tests override watchdog timings here)."""
    return {"WATCHDOG_INTERVAL": "0.2"}


@pytest.fixture
async def scheduler(
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
    scheduler_env: dict[str, str],
) -> AsyncIterator[Client]:
    """The scheduler service over HTTP, sharing the registry's schema, prefix and data."""
    env = service_env(schema, subjects, database_url, nats_url, tmp_path / "data") | scheduler_env
    async with TestClient(TestServer(build_scheduler(load_settings(SchedulerSettings, env)))) as c:
        yield c
    await delete_streams(nats_url, subjects)


async def upload(client: Client, bundle: pathlib.Path) -> tuple[int, object]:
    form = FormData()
    form.add_field("task", bundle.read_bytes(), filename=bundle.name, content_type="application/zip")
    resp = await client.post(f"{P}/tasks", data=form)
    return resp.status, await resp.json()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto S3 server for the session, started only if a test asks for S3."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def s3_config(request: pytest.FixtureRequest) -> S3Config:
    """A fresh bucket for this test (created by the store fixture), keys under a prefix."""
    return S3Config(
        endpoint_url=request.getfixturevalue("s3_endpoint"),
        bucket=f"t-{uuid.uuid4().hex[:16]}",
        prefix="app-engine/blobs",
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
