"""The registry's HTTP API (reference §2.3 endpoints 1-9), wire-compatible with upstream.

Route order matters as in upstream (Spring picks the most specific pattern):
``/tasks/{id}/inputs|outputs|descriptor.yml`` are registered before ``/tasks/{namespace}/{version}``.
"""

from __future__ import annotations

import contextlib
import pathlib
import uuid

import structlog
from aiohttp import BodyPartReader, web

from services.registry.bundle import BundleError
from services.registry.catalogue import TaskExists, TaskRecord
from services.registry.handlers import Registry, TaskNotFound, descriptor_of
from services.registry.image import ImageArchiveError
from shared.blobstore import BlobStore
from shared.descriptor.model import DescriptorError
from shared.descriptor.wire import task_description, task_inputs, task_outputs
from shared.web import ApiError, json_response, query_int, render_errors

log = structlog.get_logger("registry.api")

REGISTRY = web.AppKey("registry", Registry)
BLOBS = web.AppKey("blobs", BlobStore)
UPLOADS = web.AppKey("uploads", pathlib.Path)
MAX_BUNDLE = web.AppKey("max_bundle", int)

# aiohttp looks for the multipart boundary in every chunk read: large reads cost far less per byte
CHUNK = 8 * 1024 * 1024


class UploadTooLarge(Exception):
    pass


class NotMultipart(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _task_not_found(_: Exception) -> ApiError:
    return ApiError(404, "APPE-internal-task-not-found", "Task not found.")


def install_error_renderers(app: web.Application) -> None:
    def descriptor_error(e: Exception) -> ApiError:
        assert isinstance(e, DescriptorError)
        body = e.body()
        return ApiError(400, body["errorCode"], body["message"], body.get("details"))

    def bundle_error(e: Exception) -> ApiError:
        assert isinstance(e, BundleError)
        return ApiError(400, e.error_code, e.message)

    def image_error(e: Exception) -> ApiError:
        return ApiError(400, "APPE-internal-bundle-image-validation-error", str(e))

    def not_multipart(e: Exception) -> ApiError:
        assert isinstance(e, NotMultipart)
        return ApiError(400, e.code, e.message)

    render_errors(
        app,
        {
            TaskNotFound: _task_not_found,
            TaskExists: lambda e: ApiError(409, "APPE-internal-task-exists", "Task already exists."),
            DescriptorError: descriptor_error,
            BundleError: bundle_error,
            ImageArchiveError: image_error,
            NotMultipart: not_multipart,
            UploadTooLarge: lambda e: ApiError(
                413, "APPE-internal-bundle-validation-error", "maximum upload size for bundle exceeded"
            ),
        },
    )


async def _receive_bundle(request: web.Request, target: pathlib.Path) -> None:
    """Stream the first multipart part to ``target``; never more than the size limit."""
    limit = request.app[MAX_BUNDLE]
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise UploadTooLarge()
    if not request.content_type.startswith("multipart/"):
        raise NotMultipart("APPE-internal-not-multipart", "payload is not multipart")
    try:
        reader = await request.multipart()
        part = await reader.next()
    except (ValueError, AssertionError) as exc:
        raise NotMultipart("APPE-internal-not-multipart", f"malformed multipart body: {exc}") from exc
    if part is None:
        raise NotMultipart("APPE-internal-no-file-parts", "payload does not contain file parts")
    if not isinstance(part, BodyPartReader) or part.filename is None:
        raise NotMultipart("APPE-internal-no-file-but-form-field", "payload does not contain file but form field")
    written = 0
    with target.open("wb") as f:
        while chunk := await part.read_chunk(CHUNK):
            written += len(chunk)
            if written > limit:
                raise UploadTooLarge()
            f.write(chunk)
    if written == 0:
        raise BundleError("unknown task bundle archive format")


async def upload(request: web.Request) -> web.Response:
    uploads = request.app[UPLOADS]
    target = uploads / f"bundle-{uuid.uuid4().hex}.zip"
    try:
        await _receive_bundle(request, target)
        record = await request.app[REGISTRY].register(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    return json_response(task_description(descriptor_of(record), record.id))


async def list_tasks(request: web.Request) -> web.Response:
    """All tasks as upstream; with ``offset``/``limit`` a page, the total in ``X-Total-Count``."""
    offset, limit = _page(request)
    records, total = await request.app[REGISTRY].catalogue.listing(offset, limit)
    body = [task_description(descriptor_of(r), r.id) for r in records]
    return json_response(body, headers={"X-Total-Count": str(total)})


def _page(request: web.Request) -> tuple[int, int | None]:
    offset = query_int(request, "offset", 0, 0, 10**9)
    limit = query_int(request, "limit", 0, 1, 1000) if "limit" in request.query else None
    return offset, limit


async def _task(request: web.Request) -> TaskRecord:
    registry = request.app[REGISTRY]
    info = request.match_info
    if "id" in info:
        return await registry.by_id(info["id"])
    return await registry.by_name(info["namespace"], info["version"])


async def get_task(request: web.Request) -> web.Response:
    record = await _task(request)
    return json_response(task_description(descriptor_of(record), record.id))


async def get_inputs(request: web.Request) -> web.Response:
    record = await _task(request)
    return json_response(task_inputs(descriptor_of(record), record.id))


async def get_outputs(request: web.Request) -> web.Response:
    record = await _task(request)
    return json_response(task_outputs(descriptor_of(record), record.id))


async def _blob_response(request: web.Request, key: str, sha256: str, filename: str) -> web.StreamResponse:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Content-Disposition": f'attachment; filename="{filename}"'}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    blobs = request.app[BLOBS]
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = await blobs.size(key)
    await response.prepare(request)
    async for chunk in blobs.get(key):
        await response.write(chunk)
    await response.write_eof()
    return response


async def get_descriptor(request: web.Request) -> web.StreamResponse:
    record = await _task(request)
    return await _blob_response(request, record.descriptor_key, record.descriptor_sha256, "descriptor.yml")


async def get_logo(request: web.Request) -> web.StreamResponse:
    record = await _task(request)
    if record.logo_key is None or record.logo_sha256 is None:
        raise ApiError(404, "APPE-internal-logo-not-found", "no logo found in storage")
    return await _blob_response(request, record.logo_key, record.logo_sha256, "logo.png")


async def delete_task(request: web.Request) -> web.Response:
    await request.app[REGISTRY].delete(request.match_info["namespace"], request.match_info["version"])
    return web.Response(status=200)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_post(f"{prefix}/tasks", upload)
    r.add_get(f"{prefix}/tasks", list_tasks)
    r.add_get(f"{prefix}/tasks/{{id}}/inputs", get_inputs)
    r.add_get(f"{prefix}/tasks/{{id}}/outputs", get_outputs)
    r.add_get(f"{prefix}/tasks/{{id}}/descriptor.yml", get_descriptor)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}", get_task)
    r.add_delete(f"{prefix}/tasks/{{namespace}}/{{version}}", delete_task)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}/inputs", get_inputs)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}/outputs", get_outputs)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}/descriptor.yml", get_descriptor)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}/logo", get_logo)
    r.add_get(f"{prefix}/tasks/{{id}}", get_task)
