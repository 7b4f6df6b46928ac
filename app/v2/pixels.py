"""The v2 protocol's second input: images already decoded and resized, as a UINT8 tensor.

A model takes one input per request, either ``image`` (BYTES, each element an encoded image:
:mod:`app.v2.codec`) or ``pixels``: UINT8 ``[N, crop, crop, 3]`` (RGB, channels last), the
images as the batcher takes them once the server has decoded, resized and cropped them. The
card's mean and std are still applied by the graph, so a client sends plain 0-255 pixels.
That is the tensor Triton's own clients (the example image client, perf_analyzer) send when
model metadata declares it (``IMGSERVE_V2_INPUT=pixels``); it is accepted either way.

Its data arrives as raw bytes (the binary tensor extension over HTTP, ``raw_input_contents``
over gRPC) or as numbers (JSON ``data``, nested or flat; gRPC ``contents.uint_contents``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PIXELS_INPUT = "pixels"
UINT8 = "UINT8"


class PixelsError(Exception):
    """The ``pixels`` input does not follow the protocol (a front end's 400 / INVALID_ARGUMENT)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def pixels_shape(shape: Sequence[object]) -> list[int]:
    """The declared shape, checked: ``[N, H, W, 3]``, each at least 1. Whether H and W are the
    model's is the model's to say (``ServedModel.classify_pixels``)."""
    dims = list(shape)
    if (
        len(dims) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)
        or dims[3] != 3
    ):
        raise PixelsError(
            f"input {PIXELS_INPUT!r}: shape {dims} is not accepted; send [N, H, W, 3]: N RGB images "
            f"of the model's input size, channels last"
        )
    return [int(d) for d in dims]  # type: ignore[call-overload]


def check_pixels_datatype(datatype: str) -> None:
    if datatype != UINT8:
        raise PixelsError(
            f"input {PIXELS_INPUT!r} has datatype {datatype!r}; send {UINT8!r} (0-255 per channel)"
        )


def pixels_from_bytes(data: bytes | memoryview, shape: list[int]) -> np.ndarray:
    """Raw bytes, one per channel value, row-major."""
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise PixelsError(
            f"input {PIXELS_INPUT!r}: shape {shape} needs {expected} bytes of UINT8 data, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def pixels_from_values(values: object, shape: list[int]) -> np.ndarray:
    """Numbers 0-255, as a flat or nested list (JSON ``data``) or protobuf's repeated field."""
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise PixelsError(
            f"input {PIXELS_INPUT!r} needs its data: numbers 0-255, {int(np.prod(shape))} of them"
        )
    try:
        array = np.asarray(values).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        array = np.asarray([], dtype=np.float64)  # ragged nesting: refused below
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)  # JSON's 7.0 is the whole number 7
    if array.dtype.kind not in "iu" or (array.size == 0 and len(values) > 0):
        raise PixelsError(f"input {PIXELS_INPUT!r}: data must hold only whole numbers 0-255")
    needed = int(np.prod(shape))
    if array.size != needed:
        raise PixelsError(
            f"input {PIXELS_INPUT!r}: shape {shape} needs {needed} values, data holds {array.size}"
        )
    if array.size and (array.min() < 0 or array.max() > 255):
        raise PixelsError(f"input {PIXELS_INPUT!r}: values must be 0-255 (UINT8)")
    return array.astype(np.uint8).reshape(shape)
