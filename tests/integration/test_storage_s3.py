"""The storage service on each blob backend (``BLOB_BACKEND=local`` and ``s3``, the latter on
moto's S3 server on loopback): the same provisioning, reading and output collection, the same
blobs, nothing on local disk with S3 but emptied temporary folders, and no orphan blob after a
value is replaced or cleared."""

from __future__ import annotations

import contextlib
import io
import pathlib
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.registry.app import build_app as build_registry
from services.registry.settings import RegistrySettings
from shared.blobstore import BlobStore, LocalBlobStore
from shared.contracts import Subjects
from shared.domain.events import RunStatus
from shared.runlog.runs import RunLog
from shared.s3blobstore import S3BlobStore
from shared.settings import load_settings
from tests.images import make_bundle
from tests.integration.conftest import delete_streams, service_env
from tests.integration.test_storage_fixtures import DESCRIPTOR, Env, form, output_tar, storage_with_task
from tests.integration.test_storage_images import LEVEL0, LEVEL1, png, zipped

POINT = '{"type":"Point","coordinates":[1.0,2.0]}'
LOCATION = b'{"type":"Point","coordinates":[1,2]}'
WSI = zipped({"slide/level-0.dcm": LEVEL0, "slide/level-1.dcm": LEVEL1})
OUTPUTS: dict[str, bytes | None] = {
    "out_int": b"42\n",
    "out_str": b"  hello world \n",
    "out_arr": None,
    "out_arr/array.yml": b"size: 2\n",
    "out_arr/0": b"7",
    "out_arr/1": b"-3\n",
    "out_geo": POINT.encode(),
}


@dataclass
class Stack:
    """The registry and storage services on one backend, and a handle on their blobs."""

    env: Env
    blobs: BlobStore
    data: pathlib.Path
    backend: str

    async def stored(self, run_id: uuid.UUID) -> dict[str, bytes]:
        """Every blob of the run, by key relative to ``runs/<id>``, as the backend holds it."""
        prefix = f"runs/{run_id}"
        return {
            key[len(prefix) + 1 :]: b"".join([chunk async for chunk in self.blobs.get(key)])
            for key in await self.blobs.list(prefix)
        }

    def assert_disk_clean(self) -> None:
        """Temporary folders emptied after each request; with S3 nothing else on disk at all."""
        files = [p.relative_to(self.data).as_posix() for p in self.data.rglob("*") if p.is_file()]
        assert [f for f in files if f.startswith("tmp/storage/")] == []
        outside = [f for f in files if not f.startswith("tmp/")]
        if self.backend == "s3":
            assert outside == []
        else:
            assert all(f.startswith("blobs/") for f in outside), outside


@pytest.fixture(name="stack", params=["local", "s3"])
async def stack_fixture(
    request: pytest.FixtureRequest,
    busybox_tar: pathlib.Path,
    runlog: RunLog,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
) -> AsyncIterator[Stack]:
    data = tmp_path / "data"
    values = service_env(schema, subjects, database_url, nats_url, data)
    config = None
    if request.param == "s3":
        config = request.getfixturevalue("s3_config")
        values |= {
            "BLOB_BACKEND": "s3",
            "S3_ENDPOINT_URL": config.endpoint_url or "",
            "S3_BUCKET": config.bucket,
            "S3_PREFIX": config.prefix,
            "S3_REGION": config.region,
            "S3_ACCESS_KEY_ID": config.access_key_id or "",
            "S3_SECRET_ACCESS_KEY": config.secret_access_key or "",
        }
    async with contextlib.AsyncExitStack() as resources:
        registry = await resources.enter_async_context(
            TestClient(TestServer(build_registry(load_settings(RegistrySettings, values))))
        )
        bundle = make_bundle(tmp_path / "types.zip", DESCRIPTOR, busybox_tar)
        storage, task_id = await resources.enter_async_context(storage_with_task(registry, bundle, values))
        blobs: BlobStore
        if config is None:
            blobs = LocalBlobStore(data / "blobs")
        else:
            blobs = await resources.enter_async_context(S3BlobStore.open(config))
        env = Env(storage=storage, runlog=runlog, task_id=task_id, blobs=data / "blobs")
        yield Stack(env=env, blobs=blobs, data=data, backend=request.param)
    await delete_streams(nats_url, subjects)


async def post(stack: Stack, run_id: uuid.UUID, rest: str, data: bytes, sidecar: bytes | None = None) -> None:
    resp = await stack.env.storage.post(stack.env.url(run_id, f"input-provisions/{rest}"), data=form(data, sidecar))
    assert resp.status == 200, await resp.text()


async def put(stack: Stack, run_id: uuid.UUID, rest: str, body: object) -> tuple[int, Any]:
    resp = await stack.env.storage.put(stack.env.url(run_id, rest), json=body)
    return resp.status, await resp.json()


async def get(stack: Stack, run_id: uuid.UUID, rest: str) -> tuple[int, bytes]:
    resp = await stack.env.storage.get(stack.env.url(run_id, rest))
    return resp.status, await resp.read()


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        return {name: z.read(name) for name in z.namelist()}


def inputs(stored: dict[str, bytes]) -> dict[str, bytes]:
    return {k.removeprefix("inputs/"): v for k, v in stored.items() if k.startswith("inputs/")}


async def test_inputs_are_stored_and_read_back(stack: Stack) -> None:
    env = stack.env
    run_id = await env.new_run()
    nested = [{"index": 0, "value": [{"index": 0, "value": 1.5}]}]
    items = [
        {"parameterName": "ig", "value": 3},
        {"parameterName": "s", "value": "abc"},
        {"parameterName": "arr", "value": [{"index": 0, "value": 4}, {"index": 1, "value": 5}]},
        {"parameterName": "nested", "value": nested},
    ]
    assert (await put(stack, run_id, "input-provisions", items))[0] == 200
    await post(stack, run_id, "doc", b"\x00\x01raw")
    await post(stack, run_id, "img", png(3, 3), LOCATION)
    await post(stack, run_id, "images/indexes?value=0", WSI)
    await post(stack, run_id, "images/indexes?value=1", png(2, 2), LOCATION)

    expected = {
        "inputs/arr/0": b"4",
        "inputs/arr/1": b"5",
        "inputs/arr/array.yml": b"size: 2",
        "inputs/doc": b"\x00\x01raw",
        "inputs/ig": b"3",
        "inputs/images/0/level-0.dcm": LEVEL0,
        "inputs/images/0/level-1.dcm": LEVEL1,
        "inputs/images/1": png(2, 2),
        "inputs/images/1.geojson": LOCATION,
        "inputs/images/array.yml": b"size: 2",
        "inputs/img": png(3, 3),
        "inputs/img.geojson": LOCATION,
        "inputs/nested/0/0": b"1.5",
        "inputs/nested/0/array.yml": b"size: 1",
        "inputs/nested/array.yml": b"size: 1",
        "inputs/s": b"abc",
    }
    assert await stack.stored(run_id) == expected

    resp = await env.storage.get(env.url(run_id, "inputs"))
    r = str(run_id)
    assert (resp.status, await resp.json()) == (
        200,
        [
            {"taskRunId": r, "parameterName": "ig", "type": "INTEGER", "value": 3},
            {"taskRunId": r, "parameterName": "s", "type": "STRING", "value": "abc"},
            {"taskRunId": r, "parameterName": "doc", "type": "FILE", "value": None},
            {"taskRunId": r, "parameterName": "img", "type": "IMAGE", "value": None},
            {
                "taskRunId": r,
                "parameterName": "arr",
                "type": "ARRAY",
                "value": [{"index": 0, "value": 4}, {"index": 1, "value": 5}],
                "subType": "INTEGER",
            },
            {
                "taskRunId": r,
                "parameterName": "nested",
                "type": "ARRAY",
                "value": [{"index": 0, "value": {"value": [{"index": 0, "value": 1.5}], "subType": "NUMBER"}}],
                "subType": "ARRAY",
            },
            {
                "taskRunId": r,
                "parameterName": "images",
                "type": "ARRAY",
                "value": [{"index": 0, "value": None}, {"index": 1, "value": None}],
                "subType": "IMAGE",
            },
        ],
    )
    status, content = await get(stack, run_id, "inputs.zip")
    assert (status, unzip(content)) == (200, inputs(expected))
    singles = {
        "input/ig": b"3",
        "input/doc": b"\x00\x01raw",
        "input/img": png(3, 3),
        "input/img.geojson": LOCATION,
        "input/arr/indexes?value=1": b"5",
        "input/images/indexes?value=1": png(2, 2),
        "input/nested/indexes?value=0/0": b"1.5",
    }
    for rest, data in singles.items():
        assert await get(stack, run_id, rest) == (200, data), rest
    zipped_dirs = {
        "input/arr": {"arr/0": b"4", "arr/1": b"5", "arr/array.yml": b"size: 2"},
        "input/images/indexes?value=0": {"0/level-0.dcm": LEVEL0, "0/level-1.dcm": LEVEL1},
    }
    for rest, entries in zipped_dirs.items():
        status, content = await get(stack, run_id, rest)
        assert (status, unzip(content)) == (200, entries), rest

    await env.to_running(run_id)
    resp = await env.storage.get(f"/internal/runs/{run_id}/inputs.tar")
    assert resp.status == 200
    with tarfile.open(fileobj=io.BytesIO(await resp.read())) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == inputs(expected)
    stack.assert_disk_clean()


async def test_replaced_and_cleared_inputs_leave_no_orphan_blobs(stack: Stack) -> None:
    env = stack.env
    run_id = await env.new_run()
    items = [
        {"parameterName": "ig", "value": 3},
        {"parameterName": "s", "value": "abc"},
        {"parameterName": "arr", "value": [{"index": i, "value": i} for i in range(3)]},
    ]
    assert (await put(stack, run_id, "input-provisions", items))[0] == 200
    await post(stack, run_id, "img", png(3, 3), LOCATION)
    await post(stack, run_id, "images/indexes?value=0", WSI)
    await post(stack, run_id, "images/indexes?value=1", png(3, 3), LOCATION)
    await post(stack, run_id, "doc", b"first")
    assert sorted(await stack.stored(run_id)) == [
        "inputs/arr/0",
        "inputs/arr/1",
        "inputs/arr/2",
        "inputs/arr/array.yml",
        "inputs/doc",
        "inputs/ig",
        "inputs/images/0/level-0.dcm",
        "inputs/images/0/level-1.dcm",
        "inputs/images/1",
        "inputs/images/1.geojson",
        "inputs/images/array.yml",
        "inputs/img",
        "inputs/img.geojson",
        "inputs/s",
    ]

    # replaced: a shorter array, an image without its location, a WSI item by a file and back
    arr = [{"index": 0, "value": 7}]
    assert (await put(stack, run_id, "input-provisions/arr", {"parameterName": "arr", "value": arr}))[0] == 200
    await post(stack, run_id, "img", png(4, 4))
    await post(stack, run_id, "images/indexes?value=0", png(2, 2))
    await post(stack, run_id, "images/indexes?value=1", WSI)
    await post(stack, run_id, "doc", WSI)  # a file: stored as it came, never unpacked
    # cleared
    assert (await put(stack, run_id, "input-provisions/s", {"parameterName": "s", "value": None}))[0] == 200
    expected = {
        "inputs/arr/0": b"7",
        "inputs/arr/array.yml": b"size: 1",
        "inputs/doc": WSI,
        "inputs/ig": b"3",
        "inputs/images/0": png(2, 2),
        "inputs/images/1/level-0.dcm": LEVEL0,
        "inputs/images/1/level-1.dcm": LEVEL1,
        "inputs/images/array.yml": b"size: 2",
        "inputs/img": png(4, 4),
    }
    assert await stack.stored(run_id) == expected

    # refused requests change nothing
    status, _ = await put(stack, run_id, "input-provisions", [{"parameterName": "arr", "value": []}, *items[:1]])
    assert status == 400
    resp = await env.storage.post(env.url(run_id, "input-provisions/img"), data=form(png(11, 5)))
    assert resp.status == 400
    resp = await env.storage.post(env.url(run_id, "input-provisions/images/indexes?value=1"), data=form(b"PK\x03\x04"))
    assert resp.status == 400
    assert await stack.stored(run_id) == expected

    # clearing a file, an array of images and an array removes every blob of each
    for name in ("img", "images", "arr"):
        assert (await put(stack, run_id, f"input-provisions/{name}", {"parameterName": name, "value": None}))[0] == 200
    assert await stack.stored(run_id) == {"inputs/doc": WSI, "inputs/ig": b"3"}
    assert (await env.state(run_id)).provisioned == {"doc", "ig"}
    status, content = await get(stack, run_id, "inputs.zip")
    assert (status, unzip(content)) == (200, {"doc": WSI, "ig": b"3"})
    stack.assert_disk_clean()


async def collect(stack: Stack, run_id: uuid.UUID, entries: dict[str, bytes | None]) -> tuple[int, Any]:
    resp = await stack.env.storage.put(
        f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": "0"}, data=output_tar(entries)
    )
    return resp.status, await resp.json()


async def test_outputs_are_collected_and_read_back(stack: Stack) -> None:
    env = stack.env
    run_id = await env.new_run()
    await env.to_running(run_id)
    assert await collect(stack, run_id, OUTPUTS | {"notes.txt": b"ignored"}) == (
        200,
        {"state": "FINISHED", "errors": []},
    )
    expected = {f"outputs/{k}": v for k, v in OUTPUTS.items() if v is not None}
    assert await stack.stored(run_id) == expected

    resp = await env.storage.get(env.url(run_id, "outputs"))
    r = str(run_id)
    assert (resp.status, await resp.json()) == (
        200,
        [
            {"taskRunId": r, "parameterName": "out_int", "type": "INTEGER", "value": 42},
            {"taskRunId": r, "parameterName": "out_str", "type": "STRING", "value": "hello world"},
            {
                "taskRunId": r,
                "parameterName": "out_arr",
                "type": "ARRAY",
                "value": [{"index": 0, "value": 7}, {"index": 1, "value": -3}],
                "subType": "INTEGER",
            },
            {"taskRunId": r, "parameterName": "out_geo", "type": "GEOMETRY", "value": POINT},
        ],
    )
    status, content = await get(stack, run_id, "outputs.zip")
    assert (status, unzip(content)) == (200, {k.removeprefix("outputs/"): v for k, v in expected.items()})
    assert await get(stack, run_id, "output/out_int") == (200, b"42\n")
    assert await get(stack, run_id, "output/out_arr/indexes?value=1") == (200, b"-3\n")
    status, content = await get(stack, run_id, "output/out_arr")
    assert (status, unzip(content)) == (
        200,
        {"out_arr/0": b"7", "out_arr/1": b"-3\n", "out_arr/array.yml": b"size: 2\n"},
    )

    # the executor may retry: same answer, same blobs
    assert await collect(stack, run_id, {"out_int": b"1"}) == (200, {"state": "FINISHED", "errors": []})
    assert await stack.stored(run_id) == expected
    stack.assert_disk_clean()


async def test_a_failed_collection_keeps_only_the_valid_outputs(stack: Stack) -> None:
    env = stack.env
    run_id = await env.new_run()
    await env.to_running(run_id)
    status, body = await collect(stack, run_id, OUTPUTS | {"out_int": b"x"})
    assert (status, body) == (
        200,
        {
            "state": "FAILED",
            "errors": [
                {
                    "errorCode": "APPE-internal-request-validation-error",
                    "message": "invalid parameter type",
                    "details": {"type": "parameter", "parameterName": "out_int"},
                }
            ],
        },
    )
    assert (await env.state(run_id)).status is RunStatus.FAILED
    expected = {f"outputs/{k}": v for k, v in OUTPUTS.items() if v is not None and k != "out_int"}
    assert await stack.stored(run_id) == expected
    assert await get(stack, run_id, "output/out_str") == (200, b"  hello world \n")
    status, _ = await get(stack, run_id, "output/out_int")
    assert status == 400
    status, _ = await get(stack, run_id, "outputs.zip")
    assert status == 403
    stack.assert_disk_clean()
