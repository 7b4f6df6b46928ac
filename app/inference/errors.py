"""The errors a client can be given: what went wrong, in words, with no protocol in them.

The inference core raises most of them; the request layer (the dataplane, body reading, the
budgets, the API keys) raises the rest. Each front end maps them to its own terms in one
table: REST to a status and ``{"detail"}`` (``app/api/errors.py``), TF Serving and v2 REST to
a status and ``{"error"}``, gRPC to a status code (``app/v2/errors.py``), all through
:func:`most_specific`. The message is written for the client: it names the image and what is
accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class InferenceError(Exception):
    """Base class: an error a client should see, as a message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the request or one of its images is wrong: the client must change it ----------------------


class InvalidRequestError(InferenceError):
    """A parameter is out of range (``top_k`` larger than the number of classes)."""


class MalformedRequestError(InvalidRequestError):
    """The request cannot be read as its protocol says: not JSON, a multipart body without a
    boundary, a corrupt compressed body, malformed protobuf."""


class UnprocessableRequestError(InvalidRequestError):
    """The request reads, but is not what the route takes (a multipart part under another
    name, an empty image part)."""


class ExplainUnsupportedError(InvalidRequestError):
    """An explanation was asked of a model that cannot give one."""


class UnsupportedMediaTypeError(InferenceError):
    """A ``Content-Type`` or ``Content-Encoding`` the route does not take."""


class UnauthenticatedError(InferenceError):
    """No API key, or not a valid one."""


class ClientGoneError(InferenceError):
    """The client left before its answer was ready (nobody reads this one; the log does)."""


class ImageError(InferenceError):
    """One image of the request cannot be classified; the message names it."""


class UnsupportedFormatError(ImageError):
    """An image format Pillow knows but the allowlist excludes (never decoded)."""


class UndecodableImageError(ImageError):
    """Not an image, empty, truncated or corrupt."""


class ImageTooLargeError(ImageError):
    """More pixels than the limit, found from the header before decoding."""


class RequestTooLargeError(InferenceError):
    """The request's images together decode to more pixels than one request may bring."""


class BodyTooLargeError(RequestTooLargeError):
    """More body bytes (as sent or decompressed), or more images, than one request may bring."""


class ModelNotFoundError(InferenceError):
    """No model (or no version of it) by the name the request gave."""


# -- the server cannot take it now: the same request may succeed later ------------------------


class UnavailableError(InferenceError):
    """Not ready, shutting down or overloaded; ``retry_after_s`` is a whole number of seconds."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(UnavailableError):
    """The model is loading, or the server is shutting down."""


class QueueFullError(UnavailableError):
    """The batcher's queue has no room for the request's images."""


class DecodeBusyError(UnavailableError):
    """The process's budget of pixels admitted for decoding is spent; the request may fit later."""


class BodyBudgetBusyError(UnavailableError):
    """The process's budget of request body bytes held at once is spent."""


class DeadlineExceededError(InferenceError):
    """The request did not finish within its deadline."""


# -- the server failed --------------------------------------------------------------------------


class ModelFailedError(InferenceError):
    """The model failed on a batch; every request with an image in that batch gets this."""


def most_specific(error: InferenceError, table: Mapping[type[InferenceError], T], default: T) -> T:
    """What ``table`` gives the error's most specific class listed (``default`` when none is)."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return default
