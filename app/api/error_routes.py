"""Routes of a front end whose errors have their own body, ``{"error": message}``.

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

from app.errors import ServiceError, describe_validation_errors, rest_headers, status_for
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
)

logger = logging.getLogger(__name__)

# The core's errors as statuses of the {"error"} front ends. Triton's v2 HTTP server and TF
# Serving's REST API both map gRPC codes to HTTP the same way: the client's fault is 400 (a
# bad, undecodable or disallowed image included), an unknown model 404, not ready or overloaded
# 503. An image or a request over its pixel limit is 413, like the byte and image-count limits.
ERROR_BODY_STATUS: dict[type[InferenceError], int] = {
    InvalidRequestError: 400,
    ImageError: 400,
    ImageTooLargeError: 413,
    RequestTooLargeError: 413,
    ModelNotFoundError: 404,
    UnavailableError: 503,
    DeadlineExceededError: 504,
    ModelFailedError: 500,
}


class ErrorBodyRoute(APIRoute):
    """Set ``protocol`` and ``status_table`` in a subclass; pass it as a router's ``route_class``."""

    protocol: ClassVar[str]
    status_table: ClassVar[Mapping[type[InferenceError], int]]

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
            status, message, headers = status_for(exc, self.status_table), exc.message, rest_headers(exc)
        elif isinstance(exc, ServiceError):
            status, message, headers = exc.status_code, exc.detail, exc.headers
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
