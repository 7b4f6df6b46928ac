"""The REST front end's one mapping of the inference core's errors."""

from __future__ import annotations

import pytest

from app.api.errors import REST_STATUS, rest_status
from app.http.errors import http_headers as rest_headers
from app.inference import errors


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidRequestError("top_k"), 422),
        (errors.UnsupportedFormatError("tiff"), 415),
        (errors.UndecodableImageError("text"), 422),
        (errors.ImageTooLargeError("pixels"), 413),
        (errors.ModelNotFoundError("resnet"), 404),
        (errors.NotReadyError("loading"), 503),
        (errors.QueueFullError("full", retry_after_s=7), 503),
        (errors.DeadlineExceededError("late"), 504),
        (errors.ModelFailedError("batch"), 500),
    ],
)
def test_each_core_error_has_its_status(error: errors.InferenceError, status: int) -> None:
    assert rest_status(error) == status


def test_every_core_error_class_is_mapped() -> None:
    """A new core error must be given a status here, not fall through to 500."""
    leaves = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.InferenceError)
        and cls is not errors.InferenceError
    ]
    for cls in leaves:
        assert any(base in REST_STATUS for base in cls.__mro__), cls


def test_unavailable_errors_carry_retry_after_in_whole_seconds() -> None:
    assert rest_headers(errors.QueueFullError("full", retry_after_s=7)) == {"Retry-After": "7"}
    assert rest_headers(errors.NotReadyError("loading")) == {"Retry-After": "1"}
    assert rest_headers(errors.ImageTooLargeError("pixels")) == {}
