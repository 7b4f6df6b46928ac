"""Request bodies read with the byte limit enforced while they stream in, shared by every route
that takes one (``/predict``'s uploads, the v2 and TF Serving front ends).

``Content-Encoding: gzip`` or ``deflate`` bodies are decompressed as they arrive, with the
same limit on the decompressed bytes: a small compressed body that inflates to gigabytes (a
"zip bomb") is refused with 413 once it passes the limit, never held in memory; and the
decompressed bytes count against the process's body budget (``app/body_budget.py``).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable

from starlette.requests import ClientDisconnect, Request

from app.body_budget import hold_body_bytes
from app.inference.errors import BodyTooLargeError, MalformedRequestError, UnsupportedMediaTypeError

# zlib's window bits for each Content-Encoding: gzip has a gzip header; HTTP's "deflate" is
# the zlib format (RFC 9110), which is what tritonclient and curl send.
# Decompressed in pieces of at most this many bytes: each is counted before the next is made.
_PIECE_BYTES = 1024 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def check_content_length(request: Request, max_bytes: int) -> None:
    """413 before reading anything when ``Content-Length`` already says the body is too large."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise MalformedRequestError(f"invalid Content-Length {declared!r}") from None
    if length > max_bytes:
        raise BodyTooLargeError(f"request body is {length} bytes; the limit is {max_bytes}")


async def body_chunks(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body as it arrives (chunked or not), stopping with 413 once it passes the limit."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise BodyTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise MalformedRequestError("the client disconnected while uploading") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, decompressed when it has a ``Content-Encoding``; at most ``max_bytes``
    both as sent and decompressed."""
    check_content_length(request, max_bytes)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    chunks = body_chunks(request, max_bytes)
    if encoding in ("", "identity"):
        return b"".join([chunk async for chunk in chunks])
    if encoding not in _WBITS:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or an uncompressed body"
        )
    return await _inflate(chunks, encoding, max_bytes, lambda count: hold_body_bytes(request.scope, count))


async def _inflate(
    chunks: AsyncIterator[bytes], encoding: str, max_bytes: int, hold: Callable[[int], None]
) -> bytes:
    """The decompressed body, each piece counted by ``hold`` (the body budget) as it is made;
    kept as pieces, joined once at the end (no over-allocation while it grows)."""
    inflater = zlib.decompressobj(_WBITS[encoding])
    pieces: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            pending = chunk
            while pending and not inflater.eof:
                # Never more than one byte past the limit per call, however dense the input.
                piece = inflater.decompress(pending, min(max_bytes + 1 - size, _PIECE_BYTES))
                hold(len(piece))
                pieces.append(piece)
                size += len(piece)
                if size > max_bytes:
                    raise BodyTooLargeError(
                        f"the {encoding} request body decompresses to more than the limit of "
                        f"{max_bytes} bytes"
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof and (pending or inflater.unused_data):
                raise MalformedRequestError(f"data after the end of the {encoding} stream")
    except zlib.error as exc:
        raise MalformedRequestError(f"the body is not valid {encoding} data: {exc}") from exc
    if not inflater.eof:
        raise MalformedRequestError(f"the {encoding} body ends before its compressed stream does")
    return b"".join(pieces)
