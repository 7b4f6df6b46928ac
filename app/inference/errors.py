"""The inference core's own errors: what went wrong, in words, with no protocol in them.

Each front end maps these to its own terms in one place: REST to a status and ``{"detail"}``
(``app/errors.py``), the v2 protocols to their statuses and ``{"error"}`` or gRPC codes. The
message is written for the client: it names the image and what is accepted.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: an error a client should see, as a message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the request or one of its images is wrong: the client must change it ----------------------


class InvalidRequestError(InferenceError):
    """A parameter is out of range (``top_k`` larger than the number of classes)."""


class ExplainUnsupportedError(InvalidRequestError):
    """An explanation was asked of a model that cannot give one."""


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


class DeadlineExceededError(InferenceError):
    """The request did not finish within its deadline."""


# -- the server failed --------------------------------------------------------------------------


class ModelFailedError(InferenceError):
    """The model failed on a batch; every request with an image in that batch gets this."""
