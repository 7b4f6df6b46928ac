"""The REST front end's errors: statuses, headers and the one body shape, ``{"detail": message}``.

Two kinds of errors reach a REST client. The HTTP layer's own (a malformed body, a missing
API key, too many bytes) are :class:`ServiceError` subclasses that carry their status. The
inference core's (``app.inference.errors``) know no protocol; :data:`REST_STATUS` maps them
here, in one place, and the handlers below render both.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.inference.errors import (
    DeadlineExceededError,
    ImageError,
    ImageTooLargeError,
    InferenceError,
    InvalidRequestError,
    ModelFailedError,
    ModelNotFoundError,
    RequestTooLargeError,
    UnavailableError,
    UndecodableImageError,
    UnsupportedFormatError,
)


class ServiceError(Exception):
    """An HTTP-layer error a client should see, with its status and extra headers."""

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
    """Too many bytes or too many images in one request."""

    status_code = 413


class BusyError(ServiceError):
    """The server cannot take this request now (a process-wide budget is spent); retry later."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class UnsupportedMediaTypeError(ServiceError):
    """A content type the route does not take."""

    status_code = 415


class UnprocessableError(ServiceError):
    """A malformed multipart body or a bad parameter."""

    status_code = 422


# The inference core's errors as REST statuses; the most specific class listed wins.
REST_STATUS: dict[type[InferenceError], int] = {
    InvalidRequestError: 422,
    ImageError: 422,
    UnsupportedFormatError: 415,
    UndecodableImageError: 422,
    ImageTooLargeError: 413,
    RequestTooLargeError: 413,
    ModelNotFoundError: 404,
    UnavailableError: 503,
    DeadlineExceededError: 504,
    ModelFailedError: 500,
}


def status_for(error: InferenceError, table: Mapping[type[InferenceError], int]) -> int:
    """The status ``table`` gives the error's most specific class (500 when none is listed)."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return 500


def rest_status(error: InferenceError) -> int:
    return status_for(error, REST_STATUS)


def rest_headers(error: InferenceError) -> dict[str, str]:
    if isinstance(error, UnavailableError):
        return {"Retry-After": str(error.retry_after_s)}
    return {}


def add_exception_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": message}`` with its status and headers."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ServiceError):  # registered for ServiceError only
            raise exc
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def inference_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, InferenceError):  # registered for InferenceError only
            raise exc
        return JSONResponse({"detail": exc.message}, status_code=rest_status(exc), headers=rest_headers(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # registered for RequestValidationError only
            raise exc
        return JSONResponse({"detail": describe_validation_errors(exc)}, status_code=422)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware re-raises after this, so the traceback is logged.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(InferenceError, inference_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def describe_validation_errors(exc: RequestValidationError) -> str:
    """FastAPI's error list as one sentence: 'query parameter top_k: Input should be ... (got 'x')'."""
    parts = []
    for error in exc.errors():
        location = [str(item) for item in error.get("loc", ())]
        where = (
            f"{location[0]} parameter {'.'.join(location[1:])}" if len(location) > 1 else ".".join(location)
        )
        got = f" (got {error['input']!r})" if "input" in error and error["input"] is not None else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}{got}")
    return "; ".join(parts)
