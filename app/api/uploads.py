"""Read images out of a request body as it streams in, with every limit enforced while reading.

Two shapes: ``multipart/form-data`` with one or more parts named ``file``, or a raw body with
an image content type. Multipart is parsed with python-multipart's streaming parser directly
(Starlette's ``request.form()`` would spool files to temporary files first); each part's bytes
are gathered in one buffer.

The parser is pure Python, and crafted framing (a one-character boundary, the body full of
``CRLF--a`` and one more byte) cost it ~100x a normal body's time. Two things bound that: a
body may hold no more boundary delimiters than its parts allow (counted in C, see
:class:`_Framing`), and the parser never runs on the event loop: the chunks are gathered as
they arrive and handed, ``PARSE_BATCH_BYTES`` at a time, to the parse thread (one per process:
parsing holds the GIL, so more threads would only take it from the event loop more often).
Limits still apply while the body streams in: bytes at once, parts, names and delimiters at
each batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.dataplane import RequestLimits
from app.http.body import body_chunks, check_content_length
from app.inference.errors import (
    BodyTooLargeError,
    MalformedRequestError,
    UnprocessableRequestError,
    UnsupportedMediaTypeError,
)
from app.inference.model import NamedImage

FILE_FIELD = "file"
RAW_BODY_NAME = "request body"

# Content types of raw bodies, by the format they announce (the bytes decide in the end).
FORMAT_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "PNG": ("image/png",),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-ms-bmp"),
    "GIF": ("image/gif",),
}
OCTET_STREAM = "application/octet-stream"
# Bytes of multipart body parsed in one step on the parse thread: a crafted batch costs it
# ~25 ms, the most a normal upload's parse waits per crafted request ahead of it.
PARSE_BATCH_BYTES = 256 * 1024


def raw_media_types(limits: RequestLimits) -> tuple[str, ...]:
    types = [t for fmt in sorted(limits.allowed_formats) for t in FORMAT_MEDIA_TYPES[fmt]]
    return (*types, OCTET_STREAM)


@dataclass(frozen=True)
class Upload(NamedImage):
    filename: str | None = None


async def read_uploads(request: Request, limits: RequestLimits, parse_pool: Executor | None) -> list[Upload]:
    """All images of the request, in order; raises a typed error naming what is wrong.

    ``parse_pool`` parses multipart bodies off the event loop (None: on it, for tests)."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    media_type = content_type.decode("latin-1").lower()
    check_content_length(request, limits.max_upload_bytes)
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedRequestError("multipart/form-data without a boundary parameter")
        chunks = body_chunks(request, limits.max_upload_bytes)
        uploads = await _read_multipart(chunks, boundary, limits, parse_pool)
    elif media_type in raw_media_types(limits):
        data = b"".join([chunk async for chunk in body_chunks(request, limits.max_upload_bytes)])
        uploads = [Upload(name=RAW_BODY_NAME, data=data, filename=None)]
    else:
        shown = media_type or "none"
        raise UnsupportedMediaTypeError(
            f"Content-Type {shown!r} is not accepted; send multipart/form-data with parts named "
            f"{FILE_FIELD!r}, or a raw body with one of: {', '.join(raw_media_types(limits))}"
        )
    for upload in uploads:
        if not upload.data:
            raise UnprocessableRequestError(f"{upload.name}: is empty")
    return uploads


@dataclass
class _MultipartCollector:
    """Callbacks for python-multipart's streaming parser."""

    limits: RequestLimits
    uploads: list[Upload] = field(default_factory=list)
    finished: bool = False
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""
    _data: bytearray = field(default_factory=bytearray)
    _filename: str | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._data = bytearray()
        self._filename = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        number = len(self.uploads) + 1
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != FILE_FIELD:
            raise UnprocessableRequestError(
                f"multipart part {number} is named {name!r}; send each image as a part named {FILE_FIELD!r}"
            )
        if number > self.limits.max_images_per_request:
            raise BodyTooLargeError(
                f"more than {self.limits.max_images_per_request} images in one request "
                f"(max_images_per_request)"
            )
        raw_filename = params.get(b"filename")
        self._filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        # Copied into one buffer, not kept as views of the chunks: crafted framing makes the
        # parser report a part in millions of 6-byte pieces, and a view each would cost ~200
        # bytes of memory per piece (500 MB for a 19 MB body) and a long join.
        self._data += memoryview(data)[start:end]

    def on_part_end(self) -> None:
        number = len(self.uploads) + 1
        label = f"file #{number}" + (f" {self._filename!r}" if self._filename else "")
        self.uploads.append(Upload(name=label, data=bytes(self._data), filename=self._filename))
        self._data = bytearray()

    def on_end(self) -> None:
        self.finished = True


async def _read_multipart(
    chunks: AsyncIterator[bytes], boundary: bytes, limits: RequestLimits, parse_pool: Executor | None
) -> list[Upload]:
    collector = _MultipartCollector(limits)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    framing = _Framing(parser, b"\r\n--" + boundary, max_delimiters=limits.max_images_per_request + 1)
    batch: list[bytes] = []
    batch_bytes = 0
    async for chunk in chunks:
        batch.append(chunk)
        batch_bytes += len(chunk)
        if batch_bytes >= PARSE_BATCH_BYTES:
            await _parse(framing, batch, parse_pool, finish=False)
            batch, batch_bytes = [], 0
    await _parse(framing, batch, parse_pool, finish=True)
    if not collector.finished:
        raise UnprocessableRequestError("malformed multipart body: it ends before the closing boundary")
    if not collector.uploads:
        raise UnprocessableRequestError(f"no images: send one or more multipart parts named {FILE_FIELD!r}")
    return collector.uploads


@dataclass
class _Framing:
    """The parser, and a count of the boundary delimiters in the body, taken before parsing.

    RFC 2046 forbids the delimiter (CRLF, "--", the boundary) inside a part, so a body of at
    most N parts holds at most N + 1 of them (the closing one included). Counting is one C scan
    (``bytes.count``); the parser, pure Python, steps byte by byte after each delimiter it
    finds. A body with more delimiters than allowed is refused before the parser sees them:
    without that, 19 MB of "CRLF--a" under the boundary "a" would be ~2.7 million Python steps.
    """

    parser: MultipartParser
    delimiter: bytes
    max_delimiters: int
    seen: int = 0
    tail: bytes = b""  # the last len(delimiter) - 1 bytes fed, for a delimiter across chunks

    def feed(self, chunks: list[bytes], finish: bool) -> None:
        try:
            for chunk in chunks:
                self._count(chunk)
                self.parser.write(chunk)
            if finish:
                self.parser.finalize()
        except FormParserError as exc:
            raise UnprocessableRequestError(f"malformed multipart body: {exc}") from exc

    def _count(self, chunk: bytes) -> None:
        keep = len(self.delimiter) - 1
        across = (self.tail + chunk[:keep]).count(self.delimiter)
        self.seen += across + chunk.count(self.delimiter)
        self.tail = (self.tail + chunk[-keep:])[-keep:]
        if self.seen > self.max_delimiters:
            raise UnprocessableRequestError(
                f"malformed multipart body: the boundary delimiter occurs more than {self.max_delimiters} "
                f"times, but a request holds at most {self.max_delimiters - 1} parts and the delimiter "
                f"must not occur inside a part (RFC 2046); choose a boundary that is not in the data"
            )


async def _parse(framing: _Framing, chunks: list[bytes], pool: Executor | None, finish: bool) -> None:
    """Feed ``chunks`` to the parser on ``pool``'s thread (one batch at a time, in order)."""
    if pool is None:
        framing.feed(chunks, finish)
    else:
        await asyncio.get_running_loop().run_in_executor(pool, framing.feed, chunks, finish)
