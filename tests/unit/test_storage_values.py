"""Pure parts of the storage service: value parsing, GeoJSON, streamed zips, output unpacking."""

from __future__ import annotations

import functools
import io
import math
import pathlib
import tarfile
import zipfile
from collections.abc import AsyncIterator

import pytest

from services.storage.archives import (
    Source,
    UnsafeArchive,
    tar_end,
    tar_header,
    tar_padding,
    unpack_outputs,
    zip_stream,
)
from services.storage.errors import ValueRejected
from services.storage.geojson import check_geojson
from services.storage.values import encode, java_double, parse_instant, parse_output
from shared.descriptor.types import ArrayType, BooleanType, IntegerType, NumberType, StringType


@pytest.mark.parametrize(
    ("text", "expected"),
    [("nan", math.nan), ("-INF", -math.inf), ("1e5", 1e5), ("+2.5d", 2.5), (".5", 0.5), ("Infinity", math.inf)],
)
def test_java_double_reads_what_parse_double_reads(text: str, expected: float) -> None:
    value = java_double(text)
    assert value is not None
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


@pytest.mark.parametrize("text", ["1_000", "0x10", "", "1e", "inf inf", "nanx"])
def test_java_double_refuses_the_rest(text: str) -> None:
    assert java_double(text) is None


def test_outputs_are_trimmed_and_parsed_like_java() -> None:
    assert parse_output(IntegerType(), b" 42\n") == 42
    assert parse_output(BooleanType(), b"TRUE") is True
    assert parse_output(BooleanType(), b"yes") is False
    assert parse_output(NumberType(nan_allowed=True), b"NaN\n") == "NaN"
    assert parse_output(StringType(), b"  a b  ") == "a b"
    for bad in (b"0x10", b"1_000", b"2147483648", b"4.0"):
        with pytest.raises(ValueRejected, match="invalid parameter type"):
            parse_output(IntegerType(), bad)
    with pytest.raises(ValueRejected) as blank:
        parse_output(StringType(), b" \n")
    assert blank.value.code == "APPE-internal-is-blank"


def test_instants() -> None:
    assert parse_instant("2024-02-23T18:00:00Z") is not None
    assert parse_instant("2024-02-23T18:00:00.123456789+01:00") is not None
    assert parse_instant("2024-02-23T18:00:00") is None
    assert parse_instant("2024-13-23T18:00:00Z") is None


def test_array_encoding_layout() -> None:
    nested = ArrayType(subtype=ArrayType(subtype=IntegerType()))
    encoded = encode(nested, [{"index": 0, "value": [{"index": 0, "value": 4}]}], max_array=10)
    assert dict(encoded.files) == {"array.yml": b"size: 1", "0/array.yml": b"size: 1", "0/0": b"4"}


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]]]}',
        '{"type":"LineString","coordinates":[[0,0],[1,1]],"crs":{"type":"name","properties":{"name":"EPSG:0"}}}',
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]},'
        '"properties":{"subType":"Rectangle"}}',
    ],
)
def test_geometries_accepted(text: str) -> None:
    check_geojson(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type":"LineString","coordinates":[[0,0]]}', "failed to parse the given GeoJSON object"),
        ('{"type":"Point","coordinates":["a",1]}', "failed to parse the given GeoJSON object"),
        ('{"type":"Point","coordinates":[1,2]', "failed to parse the given GeoJSON object"),
        ('{"type":"Circle","coordinates":[1,2]}', "failed to parse the given GeoJSON object"),
        ("[" * 5000 + "]" * 5000, "failed to parse the given GeoJSON object"),
    ],
)
def test_geometries_refused(text: str, message: str) -> None:
    with pytest.raises(ValueRejected, match=message):
        check_geojson(text)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


async def test_streamed_zip_reads_back() -> None:
    files = {"a": b"1", "arr/array.yml": b"size: 1", "arr/0": b"x" * 1000}
    entries: list[tuple[str, int, Source]] = [
        (name, len(data), functools.partial(_chunks, data)) for name, data in files.items()
    ]
    data = b"".join([chunk async for chunk in zip_stream(entries)])
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert {i.filename: z.read(i) for i in z.infolist()} == files
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}


def test_tar_writer_is_a_valid_tar() -> None:
    data = tar_header("arr", 0, directory=True) + tar_header("arr/0", 3) + b"abc" + tar_padding(3) + tar_end()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, m.isdir()) for m in tar.getmembers()] == [("arr", True), ("arr/0", False)]


def _tar(path: pathlib.Path, names: dict[str, bytes]) -> pathlib.Path:
    with tarfile.open(path, "w") as tar:
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_strips_the_top_folder_and_bounds(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    unpack_outputs(_tar(tmp_path / "a.tar", {"sum/x": b"1", "sum/d/y": b"2"}), out, 10, 10)
    assert (out / "x").read_bytes() == b"1" and (out / "d" / "y").read_bytes() == b"2"
    with pytest.raises(UnsafeArchive):
        unpack_outputs(_tar(tmp_path / "b.tar", {"o/big": b"x" * 11}), tmp_path / "b", 10, 10)
    with pytest.raises(UnsafeArchive):
        unpack_outputs(_tar(tmp_path / "c.tar", {f"o/{i}": b"" for i in range(11)}), tmp_path / "c", 10, 10)
    with pytest.raises(UnsafeArchive):
        unpack_outputs(_tar(tmp_path / "d.tar", {"o/../../x": b"1"}), tmp_path / "d", 10, 10)
