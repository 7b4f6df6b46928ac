"""The protocol-free errors as HTTP statuses and headers, and the routes of a front end whose
errors have their own body, ``{"error": message}``.

The v2 protocol and TF Serving's REST API both answer errors as ``{"error": "..."}``, not the
``{"detail": ...}`` of our own REST API. A route class catches every error of its endpoint
(the HTTP layer's, the inference core's, a missing API key from a dependency) and renders it
with the front end's own status table, so those errors never reach the app's handlers. It also
names the front end's ``protocol`` for the request metrics and the access log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.inference.errors import (
    ClientGoneError,
    DeadlineExceededError,
    ImageError,
    ImageTooLargeError,
    InferenceError,
    InvalidRequestError,
    ModelFailedError,
    ModelNotFoundError,
    RequestTooLargeError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedMediaTypeError,
    most_specific,
)

logger = logging.getLogger(__name__)

StatusTable = Mapping[type[InferenceError], int]

# The protocols with the {"error"} body (TF Serving's REST API, the v2 protocol's, as Triton
# serves it) map gRPC codes to HTTP: the client's fault is 400 (a bad, undecodable or disallowed
# image included), an unknown model 404, not ready or overloaded 503. An image or a request over
# its limits is 413. The most specific class listed wins.
ERROR_BODY_STATUS: StatusTable = {
    InvalidRequestError: 400,
    ImageError: 400,
    ImageTooLargeError: 413,
    RequestTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    UnauthenticatedError: 401,
    ClientGoneError: 499,
    ModelNotFoundError: 404,
    UnavailableError: 503,
    DeadlineExceededError: 504,
    ModelFailedError: 500,
}


def http_status(error: InferenceError, table: StatusTable) -> int:
    """The status ``table`` gives the error's most specific class (500 when none is listed)."""
    return most_specific(error, table, 500)


def http_headers(error: InferenceError) -> dict[str, str]:
    """``Retry-After`` (whole seconds) on what may succeed later, the scheme on a missing key."""
    if isinstance(error, UnavailableError):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, UnauthenticatedError):
        return {"WWW-Authenticate": "Bearer"}
    return {}


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


class ErrorBodyRoute(APIRoute):
    """Set ``protocol`` in a subclass; pass it as a router's ``route_class``."""

    protocol: ClassVar[str]
    status_table: ClassVar[StatusTable] = ERROR_BODY_STATUS

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_error_body(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:  # every error of this endpoint gets this front end's body
                return self.error_response(exc)

        return handle_with_error_body

    def error_response(self, exc: Exception) -> JSONResponse:
        if isinstance(exc, InferenceError):
            status, message, headers = http_status(exc, self.status_table), exc.message, http_headers(exc)
        elif isinstance(exc, RequestValidationError):
            status, message, headers = 400, describe_validation_errors(exc), {}
        else:
            logger.error("unexpected error", exc_info=exc)
            status, message, headers = 500, "internal server error", {}
        return JSONResponse({"error": message}, status_code=status, headers=headers)


def error_body_schema(description: str, retry_after: bool = False) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry with the ``{"error": message}`` body."""
    entry: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
    if retry_after:
        entry["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return entry


def drop_validation_responses(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Take FastAPI's 422 ``HTTPValidationError`` out of the schema of the :class:`ErrorBodyRoute`
    routes of ``routers``: they answer a bad parameter with 400 and ``{"error"}``, which they declare."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = generate()
        if first:
            for route in (r for router in routers for r in router.routes):
                if isinstance(route, ErrorBodyRoute) and route.include_in_schema:
                    for method in route.methods or ():
                        responses = schema["paths"][route.path_format][method.lower()]["responses"]
                        if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                            del responses["422"]
            if "#/components/schemas/HTTPValidationError" not in json.dumps(schema["paths"]):
                for name in ("HTTPValidationError", "ValidationError"):
                    schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
