"""Errors that know their HTTP status.

Inference code raises these without importing FastAPI; one handler in ``app.main`` renders
every one of them as ``{"detail": message}`` with its status and headers.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error a client should see, with its status and extra headers."""

    status_code: int = 500

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequestError(ServiceError):
    """The request is malformed (e.g. a multipart body without a boundary)."""

    status_code = 400


class UnauthorizedError(ServiceError):
    """No API key, or not a valid one."""

    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class PayloadTooLargeError(ServiceError):
    """Too many bytes, too many pixels or too many images."""

    status_code = 413


class UnsupportedMediaTypeError(ServiceError):
    """A content type or an image format outside the allowlist."""

    status_code = 415


class UnprocessableError(ServiceError):
    """An undecodable image or a bad parameter."""

    status_code = 422


class UnavailableError(ServiceError):
    """Overloaded, not ready or shutting down: try again later (``Retry-After``)."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class QueueFullError(UnavailableError):
    """The batcher's queue has no room for the request's images."""


class DeadlineExceededError(ServiceError):
    """The request did not finish within its deadline."""

    status_code = 504


class InferenceError(ServiceError):
    """The model failed on a batch; every request in that batch gets this."""

    status_code = 500
