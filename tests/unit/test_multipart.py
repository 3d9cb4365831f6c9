"""The streaming multipart reader (services/storage/multipart.py) over a real aiohttp
StreamReader fed the body in pieces: every way a delimiter or a header can be cut between two
reads must give back the same parts, byte for byte."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Sequence

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from services.storage.multipart import MalformedMultipart, MultipartStream, boundary_of

BOUNDARY = "----b0undary"
# content that looks like the delimiter without being it, at the edges of the part
TRICKY = b"\r\n--" + BOUNDARY.encode()[:-1] + b"X\r\n----b0und" + bytes(range(256)) * 3 + b"\r\n--"


def body(parts: Sequence[tuple[str, str | None, bytes]], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
        out += head.encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode() + epilogue


async def parse(pieces: list[bytes]) -> list[tuple[str | None, str | None, bytes]]:
    # a limit above the largest body: everything is fed before reading, with no flow control
    reader = StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**22, loop=asyncio.get_running_loop())
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    stream = MultipartStream(reader, BOUNDARY)
    found = []
    while (part := await stream.next_part()) is not None:
        data = b"".join([bytes(p) async for p in stream.body()])
        found.append((part.name, part.filename, data))
    return found


def cut(data: bytes, *at: int) -> list[bytes]:
    points = [0, *sorted(at), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


PARTS = [("file", "image.tif", TRICKY + b"payload" + TRICKY), ("location", "where.geojson", b'{"type":"Point"}')]
EXPECTED = [(n, f, d) for n, f, d in PARTS]


async def test_every_single_cut_gives_the_same_parts() -> None:
    raw = body(PARTS, preamble=b"ignored preamble\r\n")
    for at in range(1, len(raw)):
        assert await parse(cut(raw, at)) == EXPECTED, f"cut at {at}: {raw[max(0, at - 8) : at + 8]!r}"


async def test_random_cuts_into_many_pieces_give_the_same_parts() -> None:
    rng = random.Random(7)
    big = [("file", "big.bin", rng.randbytes(300_000) + TRICKY), ("location", "l.geojson", TRICKY)]
    raw = body(big)
    for _ in range(200):
        points = rng.sample(range(1, len(raw)), rng.randint(1, 40))
        assert await parse(cut(raw, *points)) == big


async def test_a_chunked_body_whose_chunk_ends_arrive_apart_from_their_data() -> None:
    """With Transfer-Encoding: chunked, readchunk() gives (b"", True) when the reader caught up
    with a chunk before its end came: the body goes on."""
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    # a reader waits for data only on a connected protocol: give it a real (silent) connection
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
    reader = StreamReader(protocol, 2**22, loop=loop)
    raw = body(PARTS)

    async def feed() -> None:
        for piece in cut(raw, *range(50, len(raw), 50)):
            reader.begin_http_chunk_receiving()
            reader.feed_data(piece)
            await asyncio.sleep(0.001)  # the reader takes the data before the chunk's end
            reader.end_http_chunk_receiving()
            await asyncio.sleep(0.001)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    stream = MultipartStream(reader, BOUNDARY)
    found = []
    while (part := await stream.next_part()) is not None:
        found.append((part.name, part.filename, b"".join([bytes(p) async for p in stream.body()])))
    await feeder
    transport.close()
    theirs.close()
    assert found == EXPECTED


async def test_byte_by_byte() -> None:
    raw = body(PARTS)
    assert await parse([raw[i : i + 1] for i in range(len(raw))]) == EXPECTED


async def test_a_form_field_and_an_empty_part() -> None:
    raw = body([("field", None, b"text"), ("file", "empty.bin", b"")])
    assert await parse([raw]) == [("field", None, b"text"), ("file", "empty.bin", b"")]


async def test_a_body_starting_with_the_closing_boundary_has_no_parts() -> None:
    assert await parse([f"--{BOUNDARY}--".encode()]) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"no boundary anywhere",
        body(PARTS)[:-20],  # cut short
        body(PARTS)[: -(len(BOUNDARY) + 6)],  # the last part's delimiter never comes
        f"--{BOUNDARY}\r\nno colon here\r\n\r\ndata\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}junk\r\n\r\ndata\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nX: {'y' * 20000}\r\n\r\n".encode(),
        b"x" * 100_000 + f"\r\n--{BOUNDARY}--".encode(),  # a preamble too long
    ],
)
async def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedMultipart):
        await parse(cut(raw, len(raw) // 3))


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == "a b"
    for bad in ("multipart/form-data", "multipart/form-data; boundary=", f"multipart/form-data; boundary={'x' * 71}"):
        with pytest.raises(MalformedMultipart):
            boundary_of(bad)
