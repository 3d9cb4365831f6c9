"""Image and file inputs in every accepted format (reference §5 "image" and "file"): what is
stored, how it reads back, and the exact upstream error of every fault, in upstream's order
(format, then width/height, then size, then the TIFF check)."""

from __future__ import annotations

import io
import pathlib
import struct
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from shared.contracts import Subjects
from shared.domain.decide import CreateRun, MarkQueued, RequestRun, StartRun, TakeRun
from shared.domain.events import RunStatus
from shared.runlog.runs import RunLog
from tests.images import make_bundle
from tests.integration.conftest import Client, P, service_env
from tests.integration.test_storage_fixtures import form, output_tar, storage_with_task

DESCRIPTOR = (pathlib.Path(__file__).parents[1] / "fixtures" / "storage" / "images.yml").read_bytes()
INPUTS = ("png", "jpeg", "tiff", "dicom", "wsi", "any", "capped", "doc", "raw")
V = "APPE-internal-request-validation-error"
FORMAT = "invalid image format"
DIMENSION = "invalid image dimension"
WIDTH = "invalid image width"
HEIGHT = "invalid image height"
SIZE = "invalid image size"
INVALID = "invalid image"
TYPE = "invalid parameter type"


# --- images built for the tests ----------------------------------------------------------------


def png(width: int, height: int, pad: int = 0) -> bytes:
    """An RGB PNG; ``pad`` bytes of uncompressed text make it bigger without changing its size."""
    info = PngImagePlugin.PngInfo()
    if pad:
        info.add_text("pad", "x" * pad)
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_of_size(width: int, height: int, total: int) -> bytes:
    """A PNG of exactly ``total`` bytes (the text chunk grows byte for byte)."""
    base = len(png(width, height, pad=1))
    data = png(width, height, pad=1 + total - base)
    assert len(data) == total
    return data


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 240)).save(buf, format="JPEG")
    return buf.getvalue()


def tiff(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="TIFF")
    return buf.getvalue()


def tiled_tiff(size: int = 16) -> bytes:
    """An RGB TIFF stored as one tile (Pillow cannot write tiles): upstream refuses tiled TIFFs."""
    pixels = bytes([200, 100, 50]) * (size * size)
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 3, 1, size),
        (257, 3, 1, size),
        (258, 3, 3, 0),  # BitsPerSample: offset filled in below
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 3, 1, size),  # TileWidth
        (323, 3, 1, size),  # TileLength
        (324, 4, 1, 0),  # TileOffsets: filled in below
        (325, 4, 1, len(pixels)),
    ]
    ifd = 8
    bits = ifd + 2 + 12 * len(entries) + 4
    data = bits + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = {258: bits, 324: data}.get(tag, value)
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + pixels
    return bytes(out)


LONG_VRS = {b"OB", b"OW", b"SQ", b"UN", b"UT"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def _even(value: bytes, pad: bytes = b"\0") -> bytes:
    return value + pad if len(value) % 2 else value


def _element(group: int, element: int, vr: bytes, value: bytes, *, explicit: bool = True) -> bytes:
    tag = struct.pack("<HH", group, element)
    if not explicit:
        return tag + struct.pack("<I", len(value)) + value
    if vr in LONG_VRS:
        return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _undefined_sequence(group: int, element: int, items: bytes, *, explicit: bool) -> bytes:
    """A sequence of undefined length holding one item of undefined length."""
    head = struct.pack("<HH", group, element) + (b"SQ\0\0" if explicit else b"")
    return (
        head
        + struct.pack("<I", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + items
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def dicom(rows: int | None, columns: int | None, *, syntax: str = EXPLICIT_LE, uid: str = "1.2.3.4") -> bytes:
    """A minimal DICOM file (preamble, ``DICM``, file meta, a small data set with a nested
    sequence of undefined length and 8-bit pixels), hand-built: pydicom is not installed."""
    explicit = syntax != IMPLICIT_LE

    def ui(text: str) -> bytes:
        return _even(text.encode())

    def us(value: int) -> bytes:
        return struct.pack("<H", value)

    meta = (
        _element(0x0002, 0x0001, b"OB", b"\x00\x01")
        + _element(0x0002, 0x0002, b"UI", ui("1.2.840.10008.5.1.4.1.1.7"))
        + _element(0x0002, 0x0003, b"UI", ui(uid))
        + _element(0x0002, 0x0010, b"UI", ui(syntax))
    )
    meta = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta

    def el(group: int, element: int, vr: bytes, value: bytes) -> bytes:
        return _element(group, element, vr, value, explicit=explicit)

    data = el(0x0008, 0x0016, b"UI", ui("1.2.840.10008.5.1.4.1.1.7")) + el(0x0008, 0x0018, b"UI", ui(uid))
    data += _undefined_sequence(0x0008, 0x1115, el(0x0008, 0x1150, b"UI", ui("1.2.3")), explicit=explicit)
    data += el(0x0028, 0x0002, b"US", us(1)) + el(0x0028, 0x0004, b"CS", b"MONOCHROME2 ")
    if rows is not None:
        data += el(0x0028, 0x0010, b"US", us(rows))
    if columns is not None:
        data += el(0x0028, 0x0011, b"US", us(columns))
    data += el(0x0028, 0x0100, b"US", us(8)) + el(0x0028, 0x0101, b"US", us(8))
    data += el(0x0028, 0x0102, b"US", us(7)) + el(0x0028, 0x0103, b"US", us(0))
    data += el(0x7FE0, 0x0010, b"OB", _even(bytes((rows or 1) * (columns or 1))))
    return b"\0" * 128 + b"DICM" + meta + data


LEVEL0 = dicom(6, 8, uid="1.2.3.4.0")
LEVEL1 = dicom(3, 4, uid="1.2.3.4.1")


def zipped(entries: dict[str, bytes | None], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``entries`` (None: a directory entry)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries.items():
            if data is None:
                z.writestr(zipfile.ZipInfo(name), b"")
            else:
                z.writestr(name, data)
    return buf.getvalue()


def corrupted_wsi(level: bytes) -> bytes:
    """A WSI zip whose DICOM header is fine but whose data fails its CRC near its end: read
    with the header when the entry is small, only when unpacked when it is large."""
    data = bytearray(zipped({"a.dcm": level}, zipfile.ZIP_STORED))
    data[data.find(b"DICM") + len(level) - 140] ^= 0xFF
    return bytes(data)


WSI = zipped({"slide/": None, "slide/level-0.dcm": LEVEL0, "slide/level-1.dcm": LEVEL1})


# --- the service ---------------------------------------------------------------------------------


@dataclass
class Images:
    storage: Client
    runlog: RunLog
    task_id: uuid.UUID
    data: pathlib.Path

    async def new_run(self) -> uuid.UUID:
        run_id = uuid.uuid4()
        await self.runlog.execute(
            run_id,
            CreateRun(
                task_id=self.task_id,
                task_namespace="com.cytomine.test.storage.images",
                task_version="1.0.0",
                required_inputs=(),
                optional_inputs=INPUTS,
            ),
        )
        return run_id

    def url(self, run_id: uuid.UUID, rest: str) -> str:
        return f"{P}/task-runs/{run_id}/{rest}"

    def inputs(self, run_id: uuid.UUID) -> pathlib.Path:
        return self.data / "blobs" / "runs" / str(run_id) / "inputs"

    def stored(self, run_id: uuid.UUID) -> dict[str, bytes]:
        """Every file under the run's blob folder, by path relative to it."""
        root = self.data / "blobs" / "runs" / str(run_id)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def temp_files(self) -> list[pathlib.Path]:
        return [p for p in (self.data / "tmp" / "storage").rglob("*")]

    async def post(self, run_id: uuid.UUID, name: str, data: bytes) -> tuple[int, Any]:
        resp = await self.storage.post(self.url(run_id, f"input-provisions/{name}"), data=form(data))
        return resp.status, await resp.json()

    async def get(self, run_id: uuid.UUID, rest: str) -> tuple[int, bytes, dict[str, str]]:
        resp = await self.storage.get(self.url(run_id, rest))
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.fixture(name="images")
async def images_fixture(
    registry: Client,
    busybox_tar: pathlib.Path,
    runlog: RunLog,
    schema: str,
    subjects: Subjects,
    database_url: str,
    nats_url: str,
    tmp_path: pathlib.Path,
) -> AsyncIterator[Images]:
    """The storage service beside the registry, with the image types task uploaded."""
    bundle = make_bundle(tmp_path / "images.zip", DESCRIPTOR, busybox_tar)
    data = tmp_path / "data"
    values = service_env(schema, subjects, database_url, nats_url, data)
    async with storage_with_task(registry, bundle, values) as (client, task_id):
        yield Images(storage=client, runlog=runlog, task_id=task_id, data=data)


def rejected(name: str, message: str) -> dict[str, Any]:
    return {"errorCode": V, "message": message, "details": {"type": "parameter", "parameterName": name}}


def zip_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        return {name: z.read(name) for name in z.namelist()}


Case = tuple[str, bytes, str]


async def assert_refused(images: Images, cases: list[Case]) -> None:
    """Each case on a fresh run: 400 with the exact upstream body, nothing stored, no event."""
    for i, (name, data, message) in enumerate(cases):
        run_id = await images.new_run()
        before = await images.runlog.load(run_id)
        status, body = await images.post(run_id, name, data)
        assert (status, body) == (400, rejected(name, message)), f"case {i}: {name} {message}"
        assert images.stored(run_id) == {}, f"case {i}"
        assert (await images.runlog.load(run_id)).version == before.version, f"case {i}"
        assert images.temp_files() == [], f"case {i}"


# --- accepted images -----------------------------------------------------------------------------

ACCEPTED = [
    ("png", png(8, 6)),
    ("png", png(1, 1)),
    ("jpeg", jpeg(8, 6)),
    ("tiff", tiff(16, 16)),
    ("dicom", dicom(6, 8)),
    ("dicom", dicom(6, 8, syntax=IMPLICIT_LE)),
    ("any", png(30, 30)),
    ("any", jpeg(30, 30)),
    ("any", tiff(30, 30)),
    ("any", dicom(30, 30)),
]


async def test_an_image_in_each_format_is_stored_as_is_and_reads_back(images: Images) -> None:
    for name, data in ACCEPTED:
        run_id = await images.new_run()
        status, body = await images.post(run_id, name, data)
        assert (status, body) == (200, {"parameterName": name, "taskRunId": str(run_id)}), name
        assert images.stored(run_id) == {f"inputs/{name}": data}  # raw bytes, named as the parameter
        assert name in (await images.runlog.load(run_id)).provisioned

        status, content, headers = await images.get(run_id, f"input/{name}")
        assert (status, content) == (200, data)
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == f'attachment; filename="{name}"'
        status, content, headers = await images.get(run_id, "inputs.zip")
        assert status == 200
        assert headers["Content-Disposition"] == f'attachment; filename="inputs-{run_id}.zip"'
        assert zip_entries(content) == {name: data}
        resp = await images.storage.get(images.url(run_id, "inputs"))
        assert await resp.json() == [{"taskRunId": str(run_id), "parameterName": name, "type": "IMAGE", "value": None}]
    assert images.temp_files() == []


async def test_a_wsi_dicom_zip_is_unpacked_into_a_directory(images: Images) -> None:
    for name in ("wsi", "any"):
        run_id = await images.new_run()
        status, body = await images.post(run_id, name, WSI)
        assert (status, body) == (200, {"parameterName": name, "taskRunId": str(run_id)})
        # one file per DICOM entry, flat in the parameter's directory; the zip itself is not kept
        assert images.stored(run_id) == {f"inputs/{name}/level-0.dcm": LEVEL0, f"inputs/{name}/level-1.dcm": LEVEL1}

        expected = {f"{name}/level-0.dcm": LEVEL0, f"{name}/level-1.dcm": LEVEL1}  # relative to the run storage
        status, content, headers = await images.get(run_id, f"input/{name}")
        assert status == 200
        assert headers["Content-Type"] == "application/octet-stream"
        assert zip_entries(content) == expected
        status, content, _ = await images.get(run_id, "inputs.zip")
        assert (status, zip_entries(content)) == (200, expected)
        resp = await images.storage.get(images.url(run_id, "inputs"))
        assert await resp.json() == [{"taskRunId": str(run_id), "parameterName": name, "type": "IMAGE", "value": None}]
    assert images.temp_files() == []


async def test_reprovisioning_an_image_replaces_files_and_directories_whole(images: Images) -> None:
    run_id = await images.new_run()
    assert (await images.post(run_id, "any", WSI))[0] == 200
    assert (await images.post(run_id, "any", zipped({"other.dcm": LEVEL1})))[0] == 200
    assert images.stored(run_id) == {"inputs/any/other.dcm": LEVEL1}
    assert (await images.post(run_id, "any", png(2, 2)))[0] == 200
    assert images.stored(run_id) == {"inputs/any": png(2, 2)}
    assert (await images.post(run_id, "any", WSI))[0] == 200
    assert images.stored(run_id) == {"inputs/any/level-0.dcm": LEVEL0, "inputs/any/level-1.dcm": LEVEL1}
    # a refused image leaves the previous one as it was
    status, body = await images.post(run_id, "any", zipped({"x.dcm": LEVEL0, "x.txt": b"no"}))
    assert (status, body) == (400, rejected("any", FORMAT))
    assert images.stored(run_id) == {"inputs/any/level-0.dcm": LEVEL0, "inputs/any/level-1.dcm": LEVEL1}


# --- refused images, in upstream's order of checks ----------------------------------------------


async def test_the_format_is_checked_first(images: Images) -> None:
    """The first declared format whose signature matches, else "invalid image format"."""
    await assert_refused(
        images,
        [
            ("png", jpeg(4, 4), FORMAT),
            ("jpeg", png(4, 4), FORMAT),
            ("tiff", png(4, 4), FORMAT),
            ("dicom", png(4, 4), FORMAT),
            ("png", b"plain text, not an image", FORMAT),
            ("any", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", FORMAT),
            ("any", b"", FORMAT),
            ("wsi", png(4, 4), FORMAT),  # wsidicom accepts only a zip of DICOM files
            ("png", WSI, FORMAT),  # a zip where wsidicom is not declared
        ],
    )


async def test_then_width_and_height(images: Images) -> None:
    await assert_refused(
        images,
        [
            ("png", png(9, 7, pad=3000), WIDTH),  # width before height, both before size
            ("png", png(9, 6), WIDTH),
            ("png", png(8, 7), HEIGHT),
            ("jpeg", jpeg(9, 6), WIDTH),
            ("jpeg", jpeg(8, 7), HEIGHT),
            ("tiff", tiff(17, 16), WIDTH),
            ("tiff", tiff(16, 17), HEIGHT),
            ("dicom", dicom(6, 9), WIDTH),  # Columns
            ("dicom", dicom(7, 8), HEIGHT),  # Rows
            ("dicom", dicom(7, 8, syntax=IMPLICIT_LE), HEIGHT),
        ],
    )


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
async def test_a_header_without_readable_dimensions(images: Images) -> None:
    await assert_refused(
        images,
        [
            ("png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10, DIMENSION),
            ("jpeg", b"\xff\xd8\xff" + b"\x00garbage" * 10, DIMENSION),
            ("tiff", b"II*\x00" + b"\xff" * 60, DIMENSION),
            ("dicom", b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 10, DIMENSION),
            ("dicom", dicom(None, 8), DIMENSION),  # no Rows
            ("dicom", dicom(6, 8)[:150], DIMENSION),  # cut inside the file meta
        ],
    )


async def test_then_the_file_size(images: Images) -> None:
    await assert_refused(
        images,
        [
            ("png", png(8, 6, pad=3000), SIZE),
            ("png", png_of_size(8, 6, 2049), SIZE),  # max_file_size: 2KiB
            ("capped", b"\x00" * 1025, SIZE),  # max_file_size: 1KiB, no formats
        ],
    )


async def test_then_a_tiff_must_be_plain_rgb(images: Images) -> None:
    await assert_refused(
        images,
        [
            ("tiff", tiff(4, 4, mode="L"), INVALID),
            ("tiff", tiff(4, 4, mode="RGBA"), INVALID),
            ("tiff", tiled_tiff(), INVALID),
        ],
    )


async def test_a_wsi_zip_of_anything_but_plain_dicom_files(images: Images) -> None:
    await assert_refused(
        images,
        [
            ("wsi", zipped({"slide/level-0.dcm": LEVEL0, "slide/label.png": png(2, 2)}), FORMAT),
            ("wsi", zipped({"level-0.dcm": LEVEL0, "notes.txt": b"x" * 200}), FORMAT),
            ("wsi", zipped({"../escape.dcm": LEVEL0}), FORMAT),
            ("wsi", zipped({"level-0.dcm": LEVEL0, "slide/../../escape.dcm": LEVEL1}), FORMAT),
            ("wsi", zipped({"/etc/absolute.dcm": LEVEL0}), FORMAT),
            ("wsi", zipped({"a/level.dcm": LEVEL0, "b/level.dcm": LEVEL1}), FORMAT),  # would overwrite
            ("wsi", zipped({"empty/": None}), FORMAT),
        ],
    )


async def test_a_zip_that_cannot_be_read(images: Images) -> None:
    """Upstream's IOException while reading or unpacking the zip → "invalid parameter type"."""
    await assert_refused(
        images,
        [
            ("wsi", WSI[:60], TYPE),
            ("wsi", corrupted_wsi(LEVEL0), TYPE),
            ("wsi", corrupted_wsi(dicom(100, 100)), TYPE),
        ],
    )


# --- sizes at and past the limit; files ----------------------------------------------------------


async def test_max_file_size_is_inclusive(images: Images) -> None:
    run_id = await images.new_run()
    at_limit = png_of_size(8, 6, 2048)  # 2KiB
    assert await images.post(run_id, "png", at_limit) == (200, {"parameterName": "png", "taskRunId": str(run_id)})
    assert await images.post(run_id, "capped", b"\x01" * 1024) == (
        200,
        {"parameterName": "capped", "taskRunId": str(run_id)},
    )
    assert images.stored(run_id) == {"inputs/png": at_limit, "inputs/capped": b"\x01" * 1024}


async def test_a_file_with_max_file_size(images: Images) -> None:
    run_id = await images.new_run()
    text = b"a" * 1024
    assert await images.post(run_id, "doc", text) == (200, {"parameterName": "doc", "taskRunId": str(run_id)})
    status, body = await images.post(run_id, "doc", text + b"b")
    # upstream never enforces a file's max_file_size; we do, with a message of the same shape
    assert (status, body) == (400, rejected("doc", "invalid file size"))
    assert images.stored(run_id) == {"inputs/doc": text}
    status, content, _ = await images.get(run_id, "input/doc")
    assert (status, content) == (200, text)


async def test_file_formats_are_not_enforced_and_a_zip_stays_a_file(images: Images) -> None:
    run_id = await images.new_run()
    binary = bytes(range(256)) * 3
    # formats: [text] is declared but, as upstream, never checked
    assert (await images.post(run_id, "doc", binary))[0] == 200
    # a zip given to a file parameter is a file like any other: never unpacked
    assert (await images.post(run_id, "raw", WSI))[0] == 200
    assert images.stored(run_id) == {"inputs/doc": binary, "inputs/raw": WSI}
    status, content, _ = await images.get(run_id, "inputs.zip")
    assert (status, zip_entries(content)) == (200, {"doc": binary, "raw": WSI})
    resp = await images.storage.get(images.url(run_id, "inputs"))
    r = str(run_id)
    assert await resp.json() == [
        {"taskRunId": r, "parameterName": "doc", "type": "FILE", "value": None},
        {"taskRunId": r, "parameterName": "raw", "type": "FILE", "value": None},
    ]


async def test_an_empty_file_is_a_file(images: Images) -> None:
    run_id = await images.new_run()
    assert await images.post(run_id, "raw", b"") == (200, {"parameterName": "raw", "taskRunId": str(run_id)})
    assert images.stored(run_id) == {"inputs/raw": b""}
    status, content, _ = await images.get(run_id, "input/raw")
    assert (status, content) == (200, b"")


# --- image outputs -------------------------------------------------------------------------------


async def _running(images: Images) -> uuid.UUID:
    run_id = await images.new_run()
    assert (await images.post(run_id, "raw", b"x"))[0] == 200
    for command in (RequestRun(), MarkQueued(), TakeRun(executor_id="test"), StartRun(container_id="c")):
        await images.runlog.execute(run_id, command)
    return run_id


async def _collect(images: Images, run_id: uuid.UUID, entries: dict[str, bytes | None]) -> tuple[int, Any]:
    resp = await images.storage.put(
        f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": "0"}, data=output_tar(entries)
    )
    return resp.status, await resp.json()


async def test_image_outputs_a_file_and_a_dicom_directory(images: Images) -> None:
    run_id = await _running(images)
    entries = {"out_img": png(8, 6), "out_wsi": None, "out_wsi/0.dcm": LEVEL0, "out_wsi/1.dcm": LEVEL1}
    assert await _collect(images, run_id, entries) == (200, {"state": "FINISHED", "errors": []})
    outputs = {k: v for k, v in images.stored(run_id).items() if k.startswith("outputs/")}
    assert outputs == {"outputs/out_img": png(8, 6), "outputs/out_wsi/0.dcm": LEVEL0, "outputs/out_wsi/1.dcm": LEVEL1}
    resp = await images.storage.get(images.url(run_id, "outputs"))
    r = str(run_id)
    assert await resp.json() == [
        {"taskRunId": r, "parameterName": "out_img", "type": "IMAGE", "value": None},
        {"taskRunId": r, "parameterName": "out_wsi", "type": "IMAGE", "value": None},
    ]
    status, content, _ = await images.get(run_id, "output/out_img")
    assert (status, content) == (200, png(8, 6))
    status, content, _ = await images.get(run_id, "outputs.zip")
    assert (status, zip_entries(content)) == (
        200,
        {"out_img": png(8, 6), "out_wsi/0.dcm": LEVEL0, "out_wsi/1.dcm": LEVEL1},
    )


async def test_invalid_image_outputs_fail_the_run(images: Images) -> None:
    cases: list[tuple[dict[str, bytes | None], list[dict[str, Any]]]] = [
        ({"out_img": jpeg(4, 4)}, [rejected("out_img", FORMAT)]),
        ({"out_img": png(9, 6)}, [rejected("out_img", WIDTH)]),
        ({"out_img": dicom(6, 8)}, [rejected("out_img", FORMAT)]),
        ({"out_img": png(8, 6), "out_wsi": None, "out_wsi/a.png": png(2, 2)}, [rejected("out_wsi", FORMAT)]),
    ]
    for entries, errors in cases:
        run_id = await _running(images)
        assert await _collect(images, run_id, entries) == (200, {"state": "FAILED", "errors": errors})
        assert (await images.runlog.load(run_id)).status is RunStatus.FAILED
    assert images.temp_files() == []
