"""The ``pixels`` input (UINT8 [N, H, W, 3]) as the v2 REST codec parses it: numbers in JSON,
raw bytes after the JSON header, and every malformed variant refused with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.v2 import codec

PIXELS = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)


def tensor(**fields: object) -> dict[str, object]:
    return {"name": "pixels", "datatype": "UINT8", "shape": [2, 2, 2, 3], **fields}


def parse(header: dict[str, object], binary: bytes = b"", max_images: int = 4) -> codec.InferRequest:
    body = json.dumps(header).encode()
    return codec.parse_rest_request(body + binary, len(body) if binary else None, max_images)


@pytest.mark.parametrize("data", [PIXELS.reshape(-1).tolist(), PIXELS.tolist()], ids=["flat", "nested"])
def test_numbers_in_json(data: list[object]) -> None:
    request = parse({"inputs": [tensor(data=data)]})
    assert request.images == [] and request.image_count == 2
    assert request.pixels is not None and request.pixels.dtype == np.uint8
    np.testing.assert_array_equal(request.pixels, PIXELS)


def test_raw_bytes_after_the_json_header() -> None:
    raw = PIXELS.tobytes()
    request = parse({"inputs": [tensor(parameters={"binary_data_size": len(raw)})]}, raw)
    assert request.pixels is not None
    np.testing.assert_array_equal(request.pixels, PIXELS)


@pytest.mark.parametrize(
    ("input_tensor", "binary", "message"),
    [
        (
            tensor(datatype="FP32", data=[0] * 24),
            b"",
            "input 'pixels' has datatype 'FP32'; send 'UINT8' (0-255 per channel)",
        ),
        (
            tensor(shape=[2, 2, 2], data=[0] * 8),
            b"",
            "input 'pixels': shape [2, 2, 2] is not accepted; send [N, H, W, 3]: N RGB images of the "
            "model's input size, channels last",
        ),
        (tensor(data=[0] * 23), b"", "input 'pixels': shape [2, 2, 2, 3] needs 24 values, data holds 23"),
        (tensor(data=[256] + [0] * 23), b"", "input 'pixels': values must be 0-255 (UINT8)"),
        (tensor(data=[0.5] * 24), b"", "input 'pixels': data must hold only whole numbers 0-255"),
        (tensor(data=[[0, 1], [2]]), b"", "input 'pixels': data must hold only whole numbers 0-255"),
        (
            tensor(parameters={"binary_data_size": 23}),
            bytes(23),
            "input 'pixels': shape [2, 2, 2, 3] needs 24 bytes of UINT8 data, got 23",
        ),
        (
            tensor(parameters={"binary_data_size": 24}),
            bytes(25),
            "input 'pixels': binary_data_size is 24 but 25 bytes follow the JSON",
        ),
    ],
    ids=["datatype", "rank", "count", "range", "fraction", "ragged", "short-bytes", "size-mismatch"],
)
def test_malformed_pixels_are_refused_with_the_reason(
    input_tensor: dict[str, object], binary: bytes, message: str
) -> None:
    with pytest.raises(codec.CodecError) as raised:
        parse({"inputs": [input_tensor]}, binary)
    assert raised.value.message == message


def test_more_images_than_a_request_may_carry() -> None:
    with pytest.raises(codec.TooManyImagesError):
        parse({"inputs": [tensor(data=PIXELS.reshape(-1).tolist())]}, max_images=1)


def test_whole_numbers_written_as_floats_are_whole_numbers() -> None:
    """JSON's 7.0 is the integer 7 to JSON Schema, so the server takes it as one."""
    data = [float(v) for v in PIXELS.reshape(-1)]
    request = parse({"inputs": [tensor(shape=[2.0, 2, 2, 3], data=data)]})
    assert request.pixels is not None
    np.testing.assert_array_equal(request.pixels, PIXELS)
