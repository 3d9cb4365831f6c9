"""The registry over HTTP with real PostgreSQL, NATS, blobs and `docker save` images."""

from __future__ import annotations

import pathlib
import uuid

import msgspec
import nats
import pytest

from shared.contracts import Subjects
from tests.images import make_bundle, tiny_png
from tests.integration.conftest import ADD, Client, P, upload


def blob_files(data: pathlib.Path) -> list[str]:
    blobs = data / "blobs"
    return sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


async def test_upload_then_read_the_catalogue(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    bundle = make_bundle(tmp_path / "b.zip", ADD, busybox_tar, extra={"logo.png": tiny_png()})
    status, body = await upload(registry, bundle)
    assert status == 200, body
    assert isinstance(body, dict)
    task_id = body["id"]
    assert body == {
        "id": task_id,
        "name": "Integers addition",
        "namespace": "com.cytomine.dummy.arithmetic.integer.addition",
        "version": "0.1.0",
        "description": None,
        "authors": [
            {
                "firstName": "Romain",
                "lastName": "Mormont",
                "organization": "Cytomine Corporation",
                "email": "romain.mormont@cytomine.com",
                "isContact": True,
            }
        ],
    }
    by_name = f"{P}/tasks/com.cytomine.dummy.arithmetic.integer.addition/0.1.0"
    assert await (await registry.get(f"{P}/tasks/{task_id}")).json() == body
    assert await (await registry.get(by_name)).json() == body
    assert await (await registry.get(f"{P}/tasks")).json() == [body]

    inputs = await (await registry.get(f"{by_name}/inputs")).json()
    assert {i["name"]: (i["display_name"], i["default"], i["type"]) for i in inputs} == {
        "a": ("A", "null", {"id": "integer"}),
        "b": ("B", "5", {"id": "integer", "geq": 0}),
    }
    assert await (await registry.get(f"{P}/tasks/{task_id}/inputs")).json() == inputs
    outputs = await (await registry.get(f"{by_name}/outputs")).json()
    assert [(o["name"], o["displayName"], o["derivedFrom"]) for o in outputs] == [("out", "Sum", None)]

    resp = await registry.get(f"{by_name}/descriptor.yml")
    assert resp.status == 200 and await resp.read() == ADD
    assert resp.headers["Content-Disposition"] == 'attachment; filename="descriptor.yml"'
    etag = resp.headers["ETag"]
    assert (await registry.get(f"{by_name}/descriptor.yml", headers={"If-None-Match": etag})).status == 304
    assert await (await registry.get(f"{P}/tasks/{task_id}/descriptor.yml")).read() == ADD
    logo = await registry.get(f"{by_name}/logo")
    assert logo.status == 200 and await logo.read() == tiny_png()


async def test_registration_is_an_event_on_the_log_and_on_nats(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path, nats_url: str, subjects: Subjects
) -> None:
    status, body = await upload(registry, make_bundle(tmp_path / "b.zip", ADD, busybox_tar))
    assert status == 200 and isinstance(body, dict)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"{subjects.prefix}.task.>", ordered_consumer=True)
        msg = await sub.next_msg(timeout=10)
        envelope = msgspec.json.decode(msg.data)
        assert msg.subject == f"{subjects.prefix}.task.{body['id']}.registered"
        data = envelope["data"]
        assert data["namespace"] == "com.cytomine.dummy.arithmetic.integer.addition"
        assert data["image_name"] == "com/cytomine/dummy/arithmetic/integer/addition:0.1.0"
        assert data["image_id"].startswith("sha256:")
        assert [p["name"] for p in data["inputs"]] == ["a", "b"]
    finally:
        await nc.close()


async def test_duplicate_is_409_and_stores_nothing_more(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    bundle = make_bundle(tmp_path / "b.zip", ADD, busybox_tar)
    assert (await upload(registry, bundle))[0] == 200
    before = blob_files(tmp_path / "data")
    status, body = await upload(registry, bundle)
    assert status == 409
    assert body == {
        "errorCode": "APPE-internal-task-exists",
        "message": "Task already exists.",
        "details": {"type": "empty"},
    }
    assert blob_files(tmp_path / "data") == before


async def test_delete_removes_files_keeps_history_and_frees_the_name(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    bundle = make_bundle(tmp_path / "b.zip", ADD, busybox_tar)
    status, body = await upload(registry, bundle)
    assert status == 200 and isinstance(body, dict)
    by_name = f"{P}/tasks/com.cytomine.dummy.arithmetic.integer.addition/0.1.0"
    assert (await registry.delete(by_name)).status == 200
    assert (await registry.get(by_name)).status == 404
    assert (await registry.get(f"{P}/tasks/{body['id']}")).status == 404
    assert blob_files(tmp_path / "data") == []
    assert (await registry.delete(by_name)).status == 404
    assert (await upload(registry, bundle))[0] == 200  # the name is free again


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/not-a-uuid",
        "/tasks/00000000-0000-0000-0000-000000000000",
        "/tasks/no.such/1.0.0",
        "/tasks/no.such/1.0.0/inputs",
        "/tasks/no.such/1.0.0/descriptor.yml",
        "/tasks/not-a-uuid/outputs",
        "/tasks/no.such/1.0.0/logo",
    ],
)
async def test_unknown_or_malformed_ids_are_404(registry: Client, path: str) -> None:
    resp = await registry.get(P + path)
    assert resp.status == 404
    assert await resp.json() == {
        "errorCode": "APPE-internal-task-not-found",
        "message": "Task not found.",
        "details": {"type": "empty"},
    }


async def test_missing_logo_is_404(registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert (await upload(registry, make_bundle(tmp_path / "b.zip", ADD, busybox_tar)))[0] == 200
    resp = await registry.get(f"{P}/tasks/com.cytomine.dummy.arithmetic.integer.addition/0.1.0/logo")
    assert resp.status == 404
    assert (await resp.json())["errorCode"] == "APPE-internal-logo-not-found"


async def test_pagination(registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path) -> None:
    for minor in range(3):
        descriptor = ADD.replace(b"version: 0.1.0", f"version: 0.{minor}.0".encode())
        assert (await upload(registry, make_bundle(tmp_path / f"{minor}.zip", descriptor, busybox_tar)))[0] == 200
    resp = await registry.get(f"{P}/tasks", params={"offset": "1", "limit": "1"})
    page = await resp.json()
    assert resp.headers["X-Total-Count"] == "3"
    assert [t["version"] for t in page] == ["0.1.0"]
    assert (await registry.get(f"{P}/tasks", params={"limit": "zero"})).status == 400


async def test_image_found_by_namespace_version_name_and_by_single_tar(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    unconfigured = ADD.replace(b"  image:\n    file: /image.tar\n", b"")
    named = make_bundle(
        tmp_path / "n.zip",
        unconfigured,
        busybox_tar,
        image_name="com.cytomine.dummy.arithmetic.integer.addition-0.1.0.tar",
    )
    assert (await upload(registry, named))[0] == 200
    only = make_bundle(
        tmp_path / "o.zip", unconfigured.replace(b"0.1.0", b"0.2.0"), busybox_tar, image_name="whatever.tar"
    )
    assert (await upload(registry, only))[0] == 200


async def test_task_ids_are_uuids(registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path) -> None:
    status, body = await upload(registry, make_bundle(tmp_path / "b.zip", ADD, busybox_tar))
    assert status == 200 and isinstance(body, dict)
    uuid.UUID(body["id"])
