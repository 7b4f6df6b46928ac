"""Images in every form a caller has them (a path, bytes, a file object, a PIL image) as the
bytes and file name of one multipart part; and packs of them for ``predict_many``.

Nothing here does I/O on the network, so both clients share it.
"""

from __future__ import annotations

import io
import math
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from imgserve_client.errors import (
    APIError,
    ConnectionFailedError,
    ImageReadError,
    ImgserveError,
    RejectedError,
)
from imgserve_client.types import ModelInfo, Prediction, Result

# An image: a path (str or os.PathLike), bytes-like, a binary file object, or a PIL image.
ImageInput = Any

UNNAMED = "image"
# Past a few images a request, what packing saves per image (one request's parsing and JSON
# among more images) is small, and a pack that fails must be split and sent again.
MAX_IMAGES_PER_REQUEST = 8
# What multipart adds to each part (boundary, Content-Disposition, Content-Type), rounded up.
PART_OVERHEAD_BYTES = 256
# A file name in a Content-Disposition header, as browsers (and httpx) write it (HTML5 forms).
_FORM_ESCAPE = {'"': "%22", "\\": "\\\\", **{chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B}}
_FORM_ESCAPES = re.compile("|".join(re.escape(c) for c in _FORM_ESCAPE))
# PIL modes a PNG can hold as they are; anything else (CMYK, YCbCr, LAB, HSV, F) goes as RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def is_pil_image(image: object) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "save")


def image_name(image: ImageInput) -> str:
    """The file name sent with the image (the server quotes it in its messages)."""
    if isinstance(image, str | os.PathLike):
        return os.path.basename(os.fspath(image)) or UNNAMED
    if is_pil_image(image):
        stem = os.path.splitext(os.path.basename(getattr(image, "filename", "") or ""))[0]
        return f"{stem or UNNAMED}.png"
    name = getattr(image, "name", None)
    if isinstance(name, str) and name:
        return os.path.basename(name)
    return UNNAMED


def size_hint(image: ImageInput) -> int | None:
    """The image's size in bytes when it is known without reading it (paths, bytes)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return len(image)
    if isinstance(image, str | os.PathLike):
        try:
            return os.stat(image).st_size
        except OSError:
            return None  # reading it will say why
    return None


def read_image(image: ImageInput) -> bytes:
    """The bytes to send; raises ``ImageReadError`` for a path that cannot be read."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            with open(image, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ImageReadError(f"cannot read {os.fspath(image)!r}: {exc.strerror or exc}") from exc
    if is_pil_image(image):
        if image.mode not in _PNG_MODES:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the server sees exactly these pixels
        return buffer.getvalue()
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, bytes):
            return data
        raise TypeError(
            f"the file object {image!r} gave {type(data).__name__}; open it in binary mode ('rb')"
        )
    raise TypeError(
        f"cannot send {type(image).__name__} as an image; "
        "give a path, bytes, a binary file object or a PIL image"
    )


def upload_too_large(size: int, limit: int) -> RejectedError:
    """The error for an image the client does not send: alone it is already over the byte limit."""
    return RejectedError(
        413,
        f"not sent: the file is {size} bytes; the server accepts at most {limit} bytes per request "
        "(max_upload_bytes)",
        attempts=0,
    )


def images_per_request(model: ModelInfo | None, concurrency: int, total: int | None) -> int:
    """How many images each request of ``predict_many`` carries.

    One, unless the requests in flight already fill the server's batches (``concurrency`` at
    least its ``max_batch_size``): then packing changes nothing the model sees and only saves
    per-request work on both ends. Below that, packing would make the server's batches bigger,
    which on a CPU costs more per image than it saves (docs/BENCHMARKS.md, "The Python client").
    A pack never holds more than the server's ``max_images_per_request``, than the queue can
    take from every request in flight (``max_queue_images / concurrency``), than keeps every
    worker busy (``total / concurrency``), or than 8.
    """
    if model is None or concurrency < model.max_batch_size:
        return 1
    limits = model.limits
    count = min(MAX_IMAGES_PER_REQUEST, limits.max_images_per_request, limits.max_queue_images // concurrency)
    if total is not None:
        count = min(count, math.ceil(total / concurrency))
    return max(1, count)


@dataclass(frozen=True)
class Pending:
    """An image waiting to be sent; ``size`` when known beforehand."""

    image: ImageInput
    name: str
    size: int | None


@dataclass(frozen=True)
class Loaded:
    """An image read and ready to send."""

    image: ImageInput
    name: str
    data: bytes


def multipart_body(pack: list[Loaded]) -> tuple[bytes, str]:
    """One ``multipart/form-data`` body with a part named ``file`` per image; (body, content type).

    Built as one bytes object: httpx's own multipart stream sends each part in several writes,
    which costs more client CPU per image than anything else the client does.
    """
    boundary = secrets.token_hex(16)
    chunks = []
    for item in pack:
        filename = _FORM_ESCAPES.sub(lambda m: _FORM_ESCAPE[m.group(0)], item.name)
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        chunks += [item.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class PackSource:
    """Hands out packs of images to the workers, lazily, from any iterable (thread-safe).

    A pack holds at most ``images_per_request`` images and, as far as sizes are known before
    reading, at most ``max_upload_bytes`` in all; an image over the limit goes alone (and is
    refused before sending).
    """

    def __init__(self, images: Iterable[ImageInput], images_per_request: int, max_upload_bytes: int | None):
        self._images: Iterator[ImageInput] = iter(images)
        self._per_request = images_per_request
        self._max_bytes = max_upload_bytes
        self._held: Pending | None = None
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """No more packs (the caller stopped reading results)."""
        with self._lock:
            self._closed = True

    def next_pack(self) -> list[Pending] | None:
        with self._lock:
            pack: list[Pending] = []
            budget = self._max_bytes
            while not self._closed and len(pack) < self._per_request:
                item = self._next()
                if item is None:
                    break
                cost = (item.size or 0) + PART_OVERHEAD_BYTES
                if pack and budget is not None and cost > budget:
                    self._held = item
                    break
                pack.append(item)
                if budget is not None:
                    budget -= cost
            return pack or None

    def _next(self) -> Pending | None:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            image = next(self._images)
        except StopIteration:
            return None
        return Pending(image, image_name(image), size_hint(image))


def load_pack(pack: list[Pending], max_upload_bytes: int | None) -> tuple[list[Loaded], list[Result]]:
    """Read a pack's images: what can be sent, and results for those that cannot (unreadable,
    over the byte limit on their own)."""
    loaded: list[Loaded] = []
    failed: list[Result] = []
    for item in pack:
        try:
            data = read_image(item.image)
        except ImageReadError as exc:
            failed.append(Result(item.image, item.name, error=exc))
            continue
        if max_upload_bytes is not None and len(data) + PART_OVERHEAD_BYTES > max_upload_bytes:
            failed.append(Result(item.image, item.name, error=upload_too_large(len(data), max_upload_bytes)))
            continue
        loaded.append(Loaded(item.image, item.name, data))
    return loaded, failed


def succeeded(pack: list[Loaded], predictions: list[Prediction]) -> list[Result]:
    return [Result(item.image, item.name, prediction=p) for item, p in zip(pack, predictions, strict=True)]


def failed(pack: list[Loaded], error: ImgserveError) -> list[Result]:
    return [Result(item.image, item.name, error=error) for item in pack]


def after_pack_error(error: ImgserveError, pack_size: int) -> Literal["split", "fail"]:
    """What a worker does when a pack's request fails.

    ``split``: the server refused an image of the pack (all or nothing), so each image is sent
    alone to find which. ``fail``: each image of the pack gets the error (a busy or failed
    server, a rejected single image). An error about the request itself (a wrong API key, a
    wrong URL) is re-raised: no image can get through.
    """
    if isinstance(error, APIError) and error.rejects_images:
        return "split" if pack_size > 1 else "fail"
    if isinstance(error, RejectedError) or not isinstance(error, APIError | ConnectionFailedError):
        raise error
    return "fail"
