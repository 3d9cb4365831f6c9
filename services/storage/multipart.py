"""A streaming reader of ``multipart/form-data`` bodies, for binary provisions.

Binary provisions are the one place where storage receives gigabytes, and aiohttp's part reader
costs about a second of CPU per GiB: it joins its buffered pieces into each chunk, then copies
every chunk again into a window with the one before to look for the boundary. This reader hands
out the pieces the connection delivered as they are (memoryviews of them), looking for the
delimiter in each piece and, across two pieces, in the few bytes around the junction only.

It reads RFC 7578 bodies as browsers, curl, Python's clients and Spring send them: a preamble
(skipped), parts with ``Name: value`` header lines, ``CRLF--boundary`` between them and
``--boundary--`` at the end (the epilogue is not read). It does not decode
``Content-Transfer-Encoding`` (RFC 7578 deprecates it). Anything else is
:class:`MalformedMultipart`, a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import StreamReader
from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

MAX_PREAMBLE = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 32


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart body; the message says where it broke."""


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/*`` Content-Type header."""
    boundary = parse_mimetype(content_type).parameters.get("boundary", "")
    # RFC 2046: 1 to 70 characters
    if not 0 < len(boundary) <= 70:
        raise MalformedMultipart("no usable boundary in the content type")
    return boundary


class Part:
    """One part's headers (names in lower case) and what its Content-Disposition says."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        _, params = parse_content_disposition(headers.get("content-disposition"))
        self.name = params.get("name")
        self.filename = content_disposition_filename(params, "filename")


class MultipartStream:
    """Parts one after another: :meth:`next_part`, then :meth:`body` for its content."""

    def __init__(self, content: StreamReader, boundary: str) -> None:
        self._content = content
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # a body may begin with the first boundary line, with no line break before it
        self._buf = b"\r\n"
        self._started = False
        self._in_part = False
        self._done = False

    async def next_part(self) -> Part | None:
        """The next part's headers, or None after the closing boundary."""
        if self._done:
            return None
        if not self._started or self._in_part:
            # the preamble, or what the caller left of the part before
            skipped = 0
            async for piece in self.body():
                skipped += len(piece)
                if not self._started and skipped > MAX_PREAMBLE:
                    raise MalformedMultipart("no boundary where the body begins")
            self._started = True
        while len(self._buf) < 2:
            self._buf += await self._more()
        if self._buf.startswith(b"--"):
            self._done = True
            return None
        if (await self._line()).strip(b" \t"):
            raise MalformedMultipart("unexpected data after a boundary")
        headers: dict[str, str] = {}
        size = 0
        while line := await self._line():
            size += len(line) + 2
            name, colon, value = line.partition(b":")
            if not colon or not name.strip() or size > MAX_HEADER_BYTES or len(headers) >= MAX_HEADERS:
                raise MalformedMultipart("malformed part headers")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
        self._in_part = True
        return Part(headers)

    async def body(self) -> AsyncIterator[bytes | memoryview]:
        """The current part's content, piece by piece, up to the next delimiter."""
        delimiter = self._delimiter
        size = len(delimiter)
        keep = size - 1  # the longest tail of a piece that may begin a delimiter
        data, self._buf = self._buf, b""
        carry = b""  # the tail of the previous piece, kept back
        while True:
            if carry:
                if len(data) < keep:
                    data, carry = carry + data, b""
                else:
                    junction = carry + data[:keep]
                    at = junction.find(delimiter)
                    if at >= 0:
                        if at:
                            yield junction[:at]
                        self._end(data[at + size - len(carry) :])
                        return
                    # no delimiter begins in the carry: it all belongs to the part
                    yield carry
                    carry = b""
            at = data.find(delimiter)
            if at >= 0:
                if at:
                    yield memoryview(data)[:at]
                self._end(data[at + size :])
                return
            if len(data) > keep:
                yield memoryview(data)[: len(data) - keep]
                carry = data[len(data) - keep :]
            else:
                carry = data
            data = await self._more()

    def _end(self, rest: bytes) -> None:
        self._buf = rest
        self._in_part = False

    async def _more(self) -> bytes:
        while True:
            data, end_of_http_chunk = await self._content.readchunk()
            if data:
                return data
            # (b"", True): the end of one chunk of a chunked body, not of the body
            if not end_of_http_chunk:
                raise MalformedMultipart("the body ends before its closing boundary")

    async def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise MalformedMultipart("a header line is too long")
            self._buf += await self._more()
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line
