"""The protocol-free errors (``app.inference.errors``) in the v2 protocol's terms: one table for
REST statuses (with the ``{"error": message}`` body) and one for gRPC codes; the most specific
class listed wins.

Triton's v2 HTTP server maps gRPC codes to HTTP the same way TF Serving's REST API does: the
client's fault is 400 (a bad, undecodable or disallowed image included), an unknown model 404,
not ready or overloaded 503. An image or a request over its limits is 413 (INVALID_ARGUMENT).
"""

from __future__ import annotations

import grpc

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
)

V2_HTTP_STATUS: dict[type[InferenceError], int] = {
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

GRPC_CODE: dict[type[InferenceError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ImageError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedMediaTypeError: grpc.StatusCode.INVALID_ARGUMENT,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    ClientGoneError: grpc.StatusCode.CANCELLED,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelFailedError: grpc.StatusCode.INTERNAL,
}
