"""Every parameter type through a real container and back, through the HTTP API of all four
services: a busybox task (``FROM scratch``) copies each input ``/inputs/i_<kind>`` to the output
``/outputs/o_<kind>`` unchanged; storage must give back exactly what was provisioned, values and
bytes, for every type, nested arrays and images (single, in arrays, a WSI-DICOM directory)
included.
"""

from __future__ import annotations

import io
import json
import pathlib
import zipfile
from typing import Any

import pytest

from tests.descriptors import descriptor, params, resources
from tests.images import build_image, make_bundle, require_docker, save_image, tiny_png
from tests.integration.conftest import Client, P, upload
from tests.integration.test_end_to_end import no_container_left, stack, wait_for_state  # noqa: F401  (fixture)
from tests.integration.test_storage_fixtures import form

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# kind -> descriptor type (YAML flow style); the same type for the input and the output
KINDS: dict[str, str] = {
    "int": "{id: integer, geq: -5}",
    "num": "number",
    "str": "{id: string, max_length: 40}",
    "bool": "boolean",
    "enum": "{id: enumeration, values: [red, green]}",
    "when": "datetime",
    "geo": "geometry",
    "file": "file",
    "img": "{id: image, formats: [png, tiff]}",
    "wsi": "{id: image, formats: [wsidicom]}",
    "arr": "{id: array, subtype: integer}",
    "nested": "{id: array, subtype: {id: array, subtype: number}}",
    "imgs": "{id: array, subtype: {id: image, formats: [png]}}",
    "geos": "{id: array, subtype: geometry}",
}

COPY = 'for p in /inputs/i_*; do k=${p#/inputs/i_}; cp -r "$p" "/outputs/o_$k"; done; echo copied $(ls /outputs)'


def echo_descriptor() -> bytes:
    types = list(KINDS.items())
    return descriptor(
        "com.cytomine.e2e.echo",
        "echo",
        inputs=params((f"i_{kind}", t) for kind, t in types),
        outputs=params((f"o_{kind}", t) for kind, t in types),
        configuration=resources(),
        name="Echo every type",
    )


def dicom(tag: bytes) -> bytes:
    """A minimal DICOM Part 10 file: preamble, ``DICM``, one explicit-VR group-2 element."""
    value = b"1.2.840.10008.1.2.1\x00"
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + len(value).to_bytes(2, "little") + value + tag


def picture(kind: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=kind)
    return buf.getvalue()


GEOMETRY = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 3], [0, 0]]]})
POINT = json.dumps({"type": "Point", "coordinates": [1.5, 2.5]})
DOCUMENT = b"any bytes\x00\xff\nat all, even a trailing newline\n"
WSI = {"level-0.dcm": dicom(b"A" * 16), "level-1.dcm": dicom(b"B" * 8)}
JSON_INPUTS: dict[str, Any] = {
    "int": -3,
    "num": 2.75,
    "str": "héllo wörld",
    "bool": True,
    "enum": "green",
    "when": "2026-12-02T10:15:30Z",
    "geo": GEOMETRY,
    "arr": [{"index": 0, "value": 7}, {"index": 1, "value": 0}, {"index": 2, "value": -1}],
    "nested": [
        {"index": 0, "value": [{"index": 0, "value": 1.5}, {"index": 1, "value": -2.0}]},
        {"index": 1, "value": []},
        {"index": 2, "value": [{"index": 0, "value": 1e-3}]},
    ],
    "geos": [{"index": 0, "value": POINT}, {"index": 1, "value": GEOMETRY}],
}


async def provision_file(storage: Client, url: str, data: bytes) -> dict[str, Any]:
    resp = await storage.post(url, data=form(data))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def download(storage: Client, url: str) -> bytes:
    resp = await storage.get(url)
    assert resp.status == 200, (url, await resp.text())
    return await resp.read()


def by_kind(values: list[dict[str, Any]], prefix: str) -> dict[str, tuple[str, Any]]:
    return {v["parameterName"].removeprefix(prefix): (v["type"], v["value"]) for v in values}


@pytest.fixture(scope="session")
def echo_image(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    require_docker()
    work = tmp_path_factory.mktemp("echo-image")
    build_image("appengine-test/e2e-echo:1", work, cmd=COPY)
    return save_image("appengine-test/e2e-echo:1", work / "echo.tar")


async def test_every_type_comes_back_exactly_as_provisioned(
    stack: dict[str, Client],  # noqa: F811  (the fixture imported above)
    echo_image: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    status, body = await upload(stack["registry"], make_bundle(tmp_path / "echo.zip", echo_descriptor(), echo_image))
    assert status == 200, body
    resp = await stack["scheduler"].post(f"{P}/tasks/com.cytomine.e2e.echo/1.0.0/runs")
    assert resp.status == 200, await resp.text()
    run = (await resp.json())["id"]
    runs = f"{P}/task-runs/{run}"
    storage = stack["storage"]

    batch = [{"parameterName": f"i_{kind}", "value": value} for kind, value in JSON_INPUTS.items()]
    resp = await storage.put(f"{runs}/input-provisions", json=batch)
    assert resp.status == 200, await resp.text()
    wsi_zip = io.BytesIO()
    with zipfile.ZipFile(wsi_zip, "w") as z:
        for name, data in WSI.items():
            z.writestr(name, data)
    files = {"file": DOCUMENT, "img": picture("TIFF", (3, 2)), "wsi": wsi_zip.getvalue()}
    for kind, raw in files.items():
        await provision_file(storage, f"{runs}/input-provisions/i_{kind}", raw)
    # an array of images, item by item (the JSON part gives the size, the binary parts the items)
    images = [tiny_png(), picture("PNG", (2, 5))]
    await provision_file(storage, f"{runs}/input-provisions/i_imgs/indexes?value=0", images[0])
    await provision_file(storage, f"{runs}/input-provisions/i_imgs/indexes?value=1", images[1])

    resp = await stack["scheduler"].post(f"{runs}/state-actions", json={"desired": "RUNNING"})
    assert resp.status == 200, await resp.text()
    final = await wait_for_state(stack, run, "FINISHED", "FAILED")
    assert final["state"] == "FINISHED", final

    inputs = by_kind(await (await storage.get(f"{runs}/inputs")).json(), "i_")
    outputs = by_kind(await (await storage.get(f"{runs}/outputs")).json(), "o_")
    assert set(inputs) == set(KINDS)
    assert outputs == inputs
    for kind, value in JSON_INPUTS.items():
        if kind == "nested":  # upstream's CollectionValue: nested items carry their subtype
            value = [{"index": i["index"], "value": {"value": i["value"], "subType": "NUMBER"}} for i in value]
        assert inputs[kind][1] == value, kind

    assert await download(storage, f"{runs}/output/o_file") == DOCUMENT
    assert await download(storage, f"{runs}/output/o_img") == files["img"]
    for index, data in enumerate(images):
        assert await download(storage, f"{runs}/output/o_imgs/indexes?value={index}") == data
    with zipfile.ZipFile(io.BytesIO(await download(storage, f"{runs}/output/o_wsi"))) as z:
        assert {name: z.read(name) for name in z.namelist()} == {f"o_wsi/{n}": data for n, data in WSI.items()}
    for kind in ("int", "num", "str", "bool", "enum", "when", "geo"):
        stored_in = await download(storage, f"{runs}/input/i_{kind}")
        assert await download(storage, f"{runs}/output/o_{kind}") == stored_in, kind

    # the archives hold the same tree under the two names
    def tree(archive: bytes, prefix: str) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return {n.removeprefix(prefix): z.read(n) for n in z.namelist() if not n.endswith("/")}

    inputs_zip = tree(await download(storage, f"{runs}/inputs.zip"), "i_")
    outputs_zip = tree(await download(storage, f"{runs}/outputs.zip"), "o_")
    assert outputs_zip == inputs_zip
    assert inputs_zip["nested/0/array.yml"] == b"size: 2" and inputs_zip["nested/1/array.yml"] == b"size: 0"
    await no_container_left(run)
