"""The task directory the scheduler, storage and executor share, against the real event store:
what it caches (registrations, descriptors: they never change) and what it asks the log each
time (whether a task is still live)."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared import layout
from shared.blobstore import LocalBlobStore
from shared.domain.task_events import TaskDeleted, TaskRegistered, TaskResources
from shared.runlog.store import EventStore, NewEvent
from shared.tasks import TaskDirectory
from tests.descriptors import ADD_INPUTS, SUM_OUTPUT, descriptor


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _register(store: EventStore, blobs: LocalBlobStore, namespace: str, version: str = "1.0.0") -> uuid.UUID:
    task_id = uuid.uuid4()
    short = namespace.rsplit(".", 1)[-1]
    await blobs.put_stream(
        layout.task_descriptor(task_id),
        _chunks(descriptor(namespace, short, inputs=ADD_INPUTS, outputs=SUM_OUTPUT, version=version)),
    )
    now = dt.datetime.now(dt.UTC)
    event = TaskRegistered(
        task_id=task_id,
        namespace=namespace,
        version=version,
        name=short,
        image_name=f"{short}:latest",
        image_id="sha256:" + "1" * 64,
        image_size=1,
        image_key=layout.task_image(task_id),
        resources=TaskResources(),
        input_folder="/inputs",
        output_folder="/outputs",
        inputs=(),
        outputs=(),
        at=now,
    )
    record = NewEvent(
        id=uuid.uuid4(), type="registered", occurred_at=now, state="REGISTERED", payload=msgspec.json.encode(event)
    )
    await store.append("task", task_id, 0, [record])
    return task_id


async def _delete(store: EventStore, blobs: LocalBlobStore, task_id: uuid.UUID, namespace: str) -> None:
    now = dt.datetime.now(dt.UTC)
    event = TaskDeleted(task_id=task_id, namespace=namespace, version="1.0.0", at=now)
    record = NewEvent(
        id=uuid.uuid4(), type="deleted", occurred_at=now, state="DELETED", payload=msgspec.json.encode(event)
    )
    await store.append("task", task_id, 1, [record])
    await blobs.delete(layout.task_descriptor(task_id))


@pytest.fixture
def blobs(tmp_path: pathlib.Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def tasks(store: EventStore, blobs: LocalBlobStore) -> TaskDirectory:
    return TaskDirectory(store, blobs)


async def test_live_lookups_ask_the_log_and_registrations_outlive_deletion(
    store: EventStore, blobs: LocalBlobStore, tasks: TaskDirectory
) -> None:
    task_id = await _register(store, blobs, "org.test.live")

    by_name = await tasks.by_name("org.test.live", "1.0.0")
    by_id = await tasks.by_id(task_id)
    assert by_name is not None and by_id is not None
    assert by_name.id == by_id.id == task_id
    assert by_name.descriptor is not None and by_name.descriptor.namespace == "org.test.live"
    assert await tasks.by_name("org.test.live", "2.0.0") is None
    assert await tasks.by_id(uuid.uuid4()) is None

    await _delete(store, blobs, task_id, "org.test.live")
    # the same directory, its caches warm: a deleted task is no longer live by id or by name
    assert await tasks.by_id(task_id) is None
    assert await tasks.by_name("org.test.live", "1.0.0") is None
    # but a run's view of its task still has the registration, and the descriptor read before
    registration = await tasks.registration(task_id)
    assert registration is not None and registration.registered.namespace == "org.test.live"
    assert registration.descriptor is not None

    # a process that never read it: the registration from the log, no descriptor (files gone)
    cold = TaskDirectory(store, blobs)
    registration = await cold.registration(task_id)
    assert registration is not None and registration.id == task_id and registration.descriptor is None
    assert await cold.descriptor(task_id) is None


async def test_a_newer_registration_of_a_name_wins_and_a_run_is_not_a_task(
    store: EventStore, blobs: LocalBlobStore, tasks: TaskDirectory
) -> None:
    first = await _register(store, blobs, "org.test.again")
    await _delete(store, blobs, first, "org.test.again")
    second = await _register(store, blobs, "org.test.again")
    found = await tasks.by_name("org.test.again", "1.0.0")
    assert found is not None and found.id == second

    run_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    created = NewEvent(id=uuid.uuid4(), type="created", occurred_at=now, state="CREATED", payload=b"{}")
    await store.append("run", run_id, 0, [created])
    assert await tasks.by_id(run_id) is None
    assert await tasks.registration(run_id) is None
