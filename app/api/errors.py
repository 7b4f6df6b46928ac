"""REST's errors: its status table, its ``{"detail": message}`` handlers and OpenAPI fragments.

Every error a client can be given is protocol-free (``app.inference.errors``); :data:`REST_STATUS`
maps it for ``/predict`` and the model routes. TF Serving's API answers ``{"error": message}``
with the table of every such protocol (``app.http.errors.ERROR_BODY_STATUS``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.http.errors import StatusTable, describe_validation_errors, http_headers, http_status
from app.inference.errors import (
    ClientGoneError,
    DeadlineExceededError,
    ExplainUnsupportedError,
    ImageError,
    ImageTooLargeError,
    InferenceError,
    InvalidRequestError,
    MalformedRequestError,
    ModelFailedError,
    ModelNotFoundError,
    RequestTooLargeError,
    UnauthenticatedError,
    UnavailableError,
    UndecodableImageError,
    UnsupportedFormatError,
    UnsupportedMediaTypeError,
)
from app.schemas import ErrorResponse

# The most specific class listed wins.
REST_STATUS: StatusTable = {
    InvalidRequestError: 422,
    MalformedRequestError: 400,
    ExplainUnsupportedError: 400,  # the request is fine; this model cannot do what it asks
    ImageError: 422,
    UnsupportedFormatError: 415,
    UndecodableImageError: 422,
    ImageTooLargeError: 413,
    RequestTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    UnauthenticatedError: 401,
    ClientGoneError: 499,  # nginx's "client closed request": nobody reads it, the log does
    ModelNotFoundError: 404,
    UnavailableError: 503,
    DeadlineExceededError: 504,
    ModelFailedError: 500,
}


def rest_status(error: InferenceError) -> int:
    return http_status(error, REST_STATUS)


def add_exception_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": message}`` with its status and headers."""

    async def inference_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, InferenceError):  # registered for InferenceError only
            raise exc
        return JSONResponse({"detail": exc.message}, status_code=rest_status(exc), headers=http_headers(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # registered for RequestValidationError only
            raise exc
        return JSONResponse({"detail": describe_validation_errors(exc)}, status_code=422)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware re-raises after this, so the traceback is logged.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(InferenceError, inference_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def error_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry with the one error body."""
    entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        entry["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return entry


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: error_response("Missing or invalid API key (only when API keys are configured).")
}
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: error_response("Not ready: loading, overloaded or draining.", retry_after=True)
}
