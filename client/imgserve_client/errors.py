"""The client's errors. Every one a caller can catch is an :class:`ImgserveError`.

An answer from the server that is not a success is an :class:`APIError` carrying the status,
the server's ``detail`` message, its ``Retry-After`` (in seconds) and the attempts made:

- :class:`RejectedError` (4xx but 429): the request or an image is wrong; never retried.
- :class:`ServerBusyError` (503, 429): the server kept refusing until the retries ran out.
- :class:`ServerError` (5xx but 503): the server failed (a model failure, a deadline).
"""

from __future__ import annotations

import json
from typing import Any

# Statuses that say "this image (or this pack of images) cannot be classified": the same
# image alone gets the same answer, other images are not concerned.
IMAGE_REJECTION_STATUSES = frozenset({413, 415, 422})


class ImgserveError(Exception):
    """Base class of the client's errors."""


class ProtocolError(ImgserveError):
    """The server answered something that is not the imgserve API (a proxy's page, a bug)."""


class ImageReadError(ImgserveError):
    """An image given by path could not be read (missing, a folder, no permission); not sent."""


class ConnectionFailedError(ImgserveError):
    """No answer: the connection failed or timed out on every attempt."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.message} ({_attempts(self.attempts)})"


class APIError(ImgserveError):
    """The server answered with an error status."""

    def __init__(
        self, status: int, detail: str, *, retry_after: float | None = None, attempts: int = 1
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        extra = [] if self.retry_after is None else [f"Retry-After {self.retry_after:g} s"]
        if self.attempts != 1:
            extra.append(_attempts(self.attempts))
        return f"{self.status} {self.detail}" + (f" ({'; '.join(extra)})" if extra else "")

    @property
    def rejects_images(self) -> bool:
        """The answer is about the images sent (too large, wrong format, undecodable)."""
        return self.status in IMAGE_REJECTION_STATUSES


class RejectedError(APIError):
    """4xx (but 429): the request or one of its images is wrong; retrying cannot help."""


class ServerBusyError(APIError):
    """503 or 429 on every attempt: the server stayed busy (or not ready) past the retries."""


class ServerError(APIError):
    """5xx (but 503): the server failed on this request."""


def error_for_status(
    status: int, body: bytes, content_type: str, *, retry_after: float | None, attempts: int
) -> APIError:
    """The error class for ``status``, with the server's message read from ``body``."""
    detail = read_detail(body, content_type)
    if status in (429, 503):
        cls: type[APIError] = ServerBusyError
    elif 400 <= status < 500:
        cls = RejectedError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(status, detail, retry_after=retry_after, attempts=attempts)


def read_detail(body: bytes, content_type: str) -> str:
    """The server's message: ``{"detail": ...}`` (REST), ``{"error": ...}`` (v2), else the text."""
    if "json" in content_type:
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("detail", "error"):
                if key in data:
                    value = data[key]
                    return value if isinstance(value, str) else json.dumps(value)
    text = " ".join(body.decode("utf-8", "replace").split())
    return text[:500] if text else "(no message)"


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"
