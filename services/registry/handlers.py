"""The registry's use cases: register a bundle, look tasks up, delete them.

Registration validates the whole bundle before storing anything; once blobs are stored, any
later failure removes them again, so a refused or failed upload leaves no row, no blob and no
event behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
import structlog

from services.registry.bundle import BundleContents, BundleLimits, extract_entry, inspect_bundle, stored_range
from services.registry.catalogue import Catalogue, TaskExists, TaskRecord
from services.registry.image import inspect_image_archive
from shared import layout
from shared.blobstore import BlobStore
from shared.descriptor.model import Descriptor, Input, Output, image_name
from shared.domain.task_events import TaskDeleted, TaskParameter, TaskRegistered, TaskResources

log = structlog.get_logger("registry")

_descriptor_decoder = msgspec.json.Decoder(Descriptor)


class TaskNotFound(Exception):
    """No live task has this id, or this namespace and version."""


def descriptor_of(record: TaskRecord) -> Descriptor:
    return _descriptor_decoder.decode(record.descriptor)


def _parameters(params: Sequence[Input | Output]) -> tuple[TaskParameter, ...]:
    return tuple(
        TaskParameter(name=p.name, type=str(p.type.__struct_config__.tag), optional=p.optional) for p in params
    )


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Registry:
    def __init__(
        self,
        catalogue: Catalogue,
        blobs: BlobStore,
        limits: BundleLimits,
        workdir: pathlib.Path,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.catalogue = catalogue
        self.blobs = blobs
        self.limits = limits
        self.workdir = workdir
        self.clock = clock

    async def register(self, bundle: pathlib.Path) -> TaskRecord:
        """Validate and store an uploaded bundle; raises BundleError, DescriptorError, ImageError,
        TaskExists."""
        contents = await asyncio.to_thread(inspect_bundle, bundle, self.limits)
        d = contents.descriptor
        if await self.catalogue.by_name(d.namespace, d.version) is not None:
            raise TaskExists(f"{d.namespace} {d.version}")
        stored = await asyncio.to_thread(stored_range, bundle, contents.image_entry)
        if stored is not None:
            # the image is a plain byte range of the upload: validate it in place and keep the
            # bundle itself as the image blob, so a large image is written to disk only once
            offset, length = stored
            image = await asyncio.to_thread(inspect_image_archive, bundle, offset=offset, length=length)
            return await self._store(contents, bundle, image.image_id, image.size, offset, length)
        image_tar = self.workdir / f"image-{uuid.uuid4().hex}.tar"
        try:
            await asyncio.to_thread(extract_entry, bundle, contents.image_entry, image_tar, contents.image_size)
            image = await asyncio.to_thread(inspect_image_archive, image_tar)
            return await self._store(contents, image_tar, image.image_id, image.size, 0, None)
        finally:
            with contextlib.suppress(FileNotFoundError):
                image_tar.unlink()

    async def _store(
        self,
        contents: BundleContents,
        image_file: pathlib.Path,
        image_id: str,
        image_size: int,
        image_offset: int,
        image_length: int | None,
    ) -> TaskRecord:
        """Store the descriptor, logo and image (``image_file`` is consumed), then record the task."""
        d = contents.descriptor
        task_id = uuid.uuid4()
        prefix = layout.task_prefix(task_id)
        try:
            descriptor_blob = await self.blobs.put_stream(
                layout.task_descriptor(task_id), _bytes(contents.descriptor_bytes)
            )
            logo_blob = None
            if contents.logo is not None:
                logo_blob = await self.blobs.put_stream(layout.task_logo(task_id), _bytes(contents.logo))
            image_key = layout.task_image(task_id)
            await self.blobs.adopt(image_key, image_file)
            now = self.clock()
            record = TaskRecord(
                id=task_id,
                namespace=d.namespace,
                version=d.version,
                descriptor=msgspec.Raw(msgspec.json.encode(d)),
                descriptor_key=descriptor_blob.key,
                descriptor_sha256=descriptor_blob.sha256,
                logo_key=None if logo_blob is None else logo_blob.key,
                logo_sha256=None if logo_blob is None else logo_blob.sha256,
                image_name=image_name(d),
                image_id=image_id,
                image_size=image_size,
                image_key=image_key,
                created_at=now,
            )
            resources = d.configuration.resources
            await self.catalogue.register(
                record,
                TaskRegistered(
                    task_id=task_id,
                    namespace=d.namespace,
                    version=d.version,
                    name=d.name,
                    image_name=record.image_name,
                    image_id=image_id,
                    image_size=image_size,
                    image_key=image_key,
                    resources=TaskResources(
                        cpus=resources.cpus,
                        ram_bytes=resources.ram_bytes,
                        gpus=resources.gpus,
                        internet=resources.internet,
                    ),
                    input_folder=d.configuration.input_folder,
                    output_folder=d.configuration.output_folder,
                    inputs=_parameters(d.inputs),
                    outputs=_parameters(d.outputs),
                    time_limit_seconds=resources.time_limit_seconds,
                    at=now,
                    image_offset=image_offset,
                    image_length=image_length,
                ),
            )
        except BaseException:
            # nothing of a refused or failed upload stays behind
            await asyncio.shield(self.blobs.delete_prefix(prefix))
            raise
        log.info("task.registered", task_id=str(task_id), namespace=d.namespace, version=d.version)
        return record

    async def by_id(self, task_id: str) -> TaskRecord:
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            raise TaskNotFound(task_id) from None
        record = await self.catalogue.by_id(parsed)
        if record is None:
            raise TaskNotFound(task_id)
        return record

    async def by_name(self, namespace: str, version: str) -> TaskRecord:
        record = await self.catalogue.by_name(namespace, version)
        if record is None:
            raise TaskNotFound(f"{namespace}/{version}")
        return record

    async def delete(self, namespace: str, version: str) -> None:
        """Delete a task: catalogue row marked, ``task.deleted`` appended, blobs removed.

        The scheduler cancels the task's active runs when it sees ``task.deleted``.
        """
        record = await self.by_name(namespace, version)
        event = TaskDeleted(task_id=record.id, namespace=namespace, version=version, at=self.clock())
        if not await self.catalogue.delete(record, event):
            raise TaskNotFound(f"{namespace}/{version}")
        await self.blobs.delete_prefix(layout.task_prefix(record.id))
        log.info("task.deleted", task_id=str(record.id), namespace=namespace, version=version)
