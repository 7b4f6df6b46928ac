"""The protocol-free errors (``app.inference.errors``) as the v2 protocol's gRPC codes; the most
specific class listed wins. Over REST the v2 protocol answers ``{"error": message}`` with the
statuses of every such protocol (``app.http.errors.ERROR_BODY_STATUS``), which follow these
codes: an image or a request over its limits is 413 there (INVALID_ARGUMENT here).
"""

from __future__ import annotations

import grpc

from app.inference.errors import (
    ClientGoneError,
    DeadlineExceededError,
    ImageError,
    InferenceError,
    InvalidRequestError,
    ModelFailedError,
    ModelNotFoundError,
    RequestTooLargeError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

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
