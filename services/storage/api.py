"""The storage service's HTTP API, wire-compatible with upstream (reference §2.3 endpoints 15-28),
plus the internal exchange with executors.

Public routes, under the API prefix (default ``/app-engine/v1``)::

    PUT  /task-runs/{run}/input-provisions                      batch (JSON array)
    PUT  /task-runs/{run}/input-provisions/{param}              one value (JSON)
    POST /task-runs/{run}/input-provisions/{param}              one file (multipart: file [, .geojson])
    PUT  /task-runs/{run}/input-provisions/{param}/indexes      one array item (JSON), ?value=i[/j...]
    POST /task-runs/{run}/input-provisions/{param}/indexes      one array item (multipart)
    GET  /task-runs/{run}/inputs | inputs.zip | input/{param}[/indexes]
    GET  /task-runs/{run}/outputs | outputs.zip | output/{param}[/indexes]

Internal routes (service to service, not upstream; outside the prefix, so the public gateway
never forwards them)::

    GET /internal/runs/{run}/inputs.tar[?folder=/inputs[&mkdir=/outputs...]]
        The run's inputs as a tar whose entry names are relative to the task's input folder
        (``a``, ``arr/array.yml``, ``arr/0``, ``img.geojson``), directories 0777 and files 0666 as
        upstream's ``chmod -R 777``: pass it to Docker's ``put_archive(input_folder)``. With
        ``folder``, the names are under that folder, and the folder and each ``mkdir`` lead the
        tar: one ``put_archive("/")`` then makes the input and output folders too.
        403 unless the run is QUEUING, QUEUED, PENDING or RUNNING.
    PUT /internal/runs/{run}/outputs.tar?exit_code=N
        Body: the tar of Docker's ``get_archive(output_folder)``. Ends the run: see
        :mod:`services.storage.collection`. 200 ``{"state", "errors"}``.

Request bodies: JSON bodies are bounded by ``MAX_JSON_BODY`` (413 past it) and must be JSON of
the expected shape (400 "unable to process json", where upstream answers 403); multipart parts
are streamed to ``DATA_DIR/tmp/storage`` and bounded by ``MAX_INPUT_FILE_SIZE`` (413).
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import shutil
import uuid
from collections.abc import AsyncIterator

import msgspec
import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from services.storage import errors as e
from services.storage.collection import Collection
from services.storage.multipart import MultipartStream, boundary_of
from services.storage.provisioning import Provisioning
from services.storage.reading import Download, Reading
from shared.web import ApiError, ErrorRenderer, Handler, json_response, render_errors

log = structlog.get_logger("storage.api")

PROVISIONING = web.AppKey("provisioning", Provisioning)
READING = web.AppKey("reading", Reading)
COLLECTION = web.AppKey("collection", Collection)
WORKDIR = web.AppKey("workdir", pathlib.Path)
MAX_FILE = web.AppKey("max_file", int)
MAX_SIDECAR = 16 * 1024 * 1024
CHUNK = 1024 * 1024
_BODY_ERRORS = (ValueError, AssertionError, HttpProcessingError, ConnectionError)


def install_error_renderers(app: web.Application) -> None:
    def render(status: int, *, details: bool = True) -> ErrorRenderer:
        def to_api(err: Exception) -> ApiError:
            assert isinstance(err, e.StorageError)
            return ApiError(status, err.code, err.message, err.details, with_details=details)

        return to_api

    render_errors(
        app,
        {
            e.Invalid: render(400),
            e.Refused: render(403, details=False),
            e.Missing: render(404),
            e.TooLarge: render(413),
        },
    )


async def _json(request: web.Request, parameter: str | None) -> object:
    if request.content_type != "application/json":
        raise e.unprocessable(parameter, "expected Content-Type: application/json")
    try:
        body = await request.read()
    except _BODY_ERRORS as exc:
        raise e.unprocessable(parameter, f"unreadable body: {type(exc).__name__}") from None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise e.unprocessable(parameter, "malformed or too deeply nested JSON") from None


async def provision_json(request: web.Request) -> web.Response:
    info = request.match_info
    body = await _json(request, info["param"])
    echo = await request.app[PROVISIONING].json_single(info["run_id"], info["param"], body)
    return json_response(echo)


async def provision_batch(request: web.Request) -> web.Response:
    body = await _json(request, None)
    return json_response(await request.app[PROVISIONING].batch(request.match_info["run_id"], body))


async def provision_item_json(request: web.Request) -> web.Response:
    info = request.match_info
    body = await _json(request, info["param"])
    echo = await request.app[PROVISIONING].json_item(info["run_id"], info["param"], request.query.get("value"), body)
    return json_response(echo)


async def _stream_part(pieces: AsyncIterator[bytes | memoryview], target: pathlib.Path, limit: int) -> str:
    """Write a part to ``target``; its sha256, computed as it arrives so that storing the file
    needs no second pass over it."""
    written = 0
    digest = hashlib.sha256()
    with target.open("wb") as f:
        async for piece in pieces:
            written += len(piece)
            if written > limit:
                raise e.TooLarge("APPE-internal-request-too-large", f"a file part is larger than {limit} bytes")
            digest.update(piece)
            f.write(piece)
    return digest.hexdigest()


async def _receive(request: web.Request, file: pathlib.Path, sidecar: pathlib.Path) -> tuple[str, bool]:
    """Stream part 1 to ``file`` and an optional part 2 to ``sidecar``: the sha256 of part 1, and
    whether there was a part 2."""
    if not request.content_type.startswith("multipart/"):
        raise e.Invalid("APPE-internal-not-multipart", "payload is not multipart")
    try:
        parts = MultipartStream(request.content, boundary_of(request.headers.get(hdrs.CONTENT_TYPE, "")))
        part = await parts.next_part()
        if part is None:
            raise e.Invalid("APPE-internal-no-file-parts", "payload does not contain file parts")
        if part.filename is None:
            raise e.Invalid("APPE-internal-no-file-but-form-field", "payload does not contain file but form field")
        digest = await _stream_part(parts.body(), file, request.app[MAX_FILE])
        if await parts.next_part() is not None:
            await _stream_part(parts.body(), sidecar, MAX_SIDECAR)
            return digest, True
        return digest, False
    except _BODY_ERRORS as exc:
        raise e.Invalid("APPE-internal-not-multipart", f"malformed multipart body: {type(exc).__name__}") from None


async def provision_binary(request: web.Request) -> web.Response:
    info = request.match_info
    workdir = request.app[WORKDIR]
    token = uuid.uuid4().hex
    file, sidecar = workdir / f"in-{token}", workdir / f"in-{token}.geojson"
    try:
        digest, has_sidecar = await _receive(request, file, sidecar)
        indexes = request.query.get("value", "") if info.get("indexes") else None
        echo = await request.app[PROVISIONING].binary(
            info["run_id"], info["param"], indexes, file, sidecar if has_sidecar else None, received_sha256=digest
        )
    finally:
        _remove(file, sidecar, workdir / f"in-{token}.d")
    return json_response(echo)


def _remove(*paths: pathlib.Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _send(request: web.Request, download: Download) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Disposition": f'attachment; filename="{download.filename}"'})
    response.content_type = download.content_type
    if download.size is not None:
        response.content_length = download.size
    await response.prepare(request)
    async for chunk in download.chunks:
        if chunk:
            await response.write(chunk)
    await response.write_eof()
    return response


async def get_inputs(request: web.Request) -> web.Response:
    return json_response(await request.app[READING].inputs(request.match_info["run_id"]))


async def get_outputs(request: web.Request) -> web.Response:
    return json_response(await request.app[READING].outputs(request.match_info["run_id"]))


async def get_inputs_zip(request: web.Request) -> web.StreamResponse:
    return await _send(request, await request.app[READING].inputs_zip(request.match_info["run_id"]))


async def get_outputs_zip(request: web.Request) -> web.StreamResponse:
    return await _send(request, await request.app[READING].outputs_zip(request.match_info["run_id"]))


def _single(which: str, with_indexes: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        indexes = request.query.get("value", "") if with_indexes else None
        download = await request.app[READING].single(info["run_id"], which, info["param"], indexes)
        return await _send(request, download)

    return handler


def _folder(value: str) -> str:
    """An absolute container folder as a tar entry name (``/data//in/`` -> ``data/in``)."""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not value.startswith("/") or not parts or len(value) > 4096 or any(p == ".." or "\0" in p for p in parts):
        raise e.unprocessable(None, f"not an absolute folder below /: {value[:200]!r}")
    return "/".join(parts)


async def get_inputs_tar(request: web.Request) -> web.StreamResponse:
    folder = request.query.get("folder")
    chunks = await request.app[READING].inputs_tar(
        request.match_info["run_id"],
        "" if folder is None else _folder(folder),
        [_folder(f) for f in request.query.getall("mkdir", [])],
    )
    return await _send(request, Download("inputs.tar", "application/x-tar", chunks))


async def put_outputs_tar(request: web.Request) -> web.Response:
    collection = request.app[COLLECTION]
    try:
        exit_code = int(request.query["exit_code"])
    except (KeyError, ValueError):
        raise e.Invalid("APPE-internal-request-validation-error", "exit_code must be an integer") from None
    begun = await collection.begin(request.match_info["run_id"])
    if isinstance(begun, dict):
        return json_response(begun)
    target = collection.temp_file()
    try:
        too_large = await _receive_tar(request, target, collection.s.limits.max_output)
        if too_large:
            result = await collection.reject(begun, f"outputs larger than {too_large} bytes", exit_code)
        else:
            result = await collection.collect(begun, target, exit_code)
    finally:
        _remove(target)
    return json_response(result)


async def _receive_tar(request: web.Request, target: pathlib.Path, limit: int) -> int:
    """Stream the body to ``target``; the limit if it was exceeded, else 0."""
    written = 0
    try:
        with target.open("wb") as f:
            async for chunk in _body(request):
                written += len(chunk)
                if written > limit:
                    return limit
                f.write(chunk)
    except _BODY_ERRORS as exc:
        raise e.Invalid("APPE-internal-request-validation-error", f"body cut short: {type(exc).__name__}") from None
    return 0


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    while chunk := await request.content.read(CHUNK):
        yield chunk


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    runs = f"{prefix}/task-runs/{{run_id}}"
    r.add_put(f"{runs}/input-provisions", provision_batch)
    r.add_put(f"{runs}/input-provisions/{{param}}", provision_json)
    r.add_post(f"{runs}/input-provisions/{{param}}", provision_binary)
    r.add_put(f"{runs}/input-provisions/{{param}}/indexes", provision_item_json)
    r.add_post(f"{runs}/input-provisions/{{param}}/{{indexes:indexes}}", provision_binary)
    r.add_get(f"{runs}/inputs", get_inputs)
    r.add_get(f"{runs}/inputs.zip", get_inputs_zip)
    r.add_get(f"{runs}/input/{{param}}", _single("input", False))
    r.add_get(f"{runs}/input/{{param}}/indexes", _single("input", True))
    r.add_get(f"{runs}/outputs", get_outputs)
    r.add_get(f"{runs}/outputs.zip", get_outputs_zip)
    r.add_get(f"{runs}/output/{{param}}", _single("output", False))
    r.add_get(f"{runs}/output/{{param}}/indexes", _single("output", True))
    r.add_get("/internal/runs/{run_id}/inputs.tar", get_inputs_tar)
    r.add_put("/internal/runs/{run_id}/outputs.tar", put_outputs_tar)
