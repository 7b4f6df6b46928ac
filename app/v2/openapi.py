"""The OpenAPI document's request bodies and responses of the v2 REST routes."""

from __future__ import annotations

from typing import Any

from app.http.errors import error_body_schema
from app.http.json_body import BASE64_PATTERN, EXAMPLE_PNG_BASE64
from app.v2 import codec
from app.v2.pixels import PIXELS_INPUT, UINT8

_NOT_READY = error_body_schema("Not ready: loading or draining.", retry_after=True)
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: error_body_schema("No model of that name, or no such version of it."),
    503: _NOT_READY,
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The requested outputs. JSON, or with binary outputs (`binary_data`, "
            "`binary_data_output`) the JSON header of `Inference-Header-Content-Length` bytes "
            "followed by the outputs' bytes."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["model_name", "model_version", "outputs"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: error_body_schema(
        "Malformed request: not the protocol, wrong input name, datatype or shape, bad base64, "
        "or an image that cannot be decoded or is not an allowed format."
    ),
    404: MODEL_RESPONSES[404],
    413: error_body_schema("Too large: body bytes, decompressed bytes, image pixels or number of images."),
    415: error_body_schema("A Content-Encoding other than gzip or deflate."),
    500: error_body_schema("The model failed on the batch that held this request's images."),
    503: error_body_schema("Overloaded (the queue is full) or not ready.", retry_after=True),
    504: error_body_schema("Not finished within the request deadline."),
}

_BASE64 = {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}


def _size() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1}


_IMAGE_INPUT: dict[str, Any] = {
    "type": "object",
    "description": "Encoded images (JPEG, PNG, WebP, BMP, GIF), one per element.",
    "properties": {
        "name": {"const": codec.INPUT_NAME},
        "datatype": {"const": codec.BYTES},
        "shape": {
            "type": "array",
            "description": "[N, 1] or [N]: N images",
            "prefixItems": [_size(), {"const": 1}],
            "items": False,
            "minItems": 1,
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {
            "type": "array",
            "minItems": 1,
            "description": "One base64 string per image (or one row of one per image), N in all",
            "items": {"oneOf": [_BASE64, {"type": "array", "items": _BASE64}]},
        },
    },
    # The binary tensor extension's bytes follow the JSON only with Inference-Header-Content-Length
    # (the application/octet-stream body); a JSON body carries its images in data.
    "required": ["name", "shape", "datatype", "data"],
    "example": {
        "name": codec.INPUT_NAME,
        "datatype": codec.BYTES,
        "shape": [1, 1],
        "data": [EXAMPLE_PNG_BASE64],
    },
}
_PIXEL = {"type": "integer", "minimum": 0, "maximum": 255}


def _nested(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_PIXELS_INPUT: dict[str, Any] = {
    "type": "object",
    "description": (
        "Images already decoded and resized to the model's input size: UINT8 [N, H, W, 3], RGB, "
        "channels last; as numbers in `data` (small tensors) or binary (`binary_data_size`)."
    ),
    "properties": {
        "name": {"const": PIXELS_INPUT},
        "datatype": {"const": UINT8},
        "shape": {
            "type": "array",
            "prefixItems": [_size(), _size(), _size(), {"const": 3}],
            "items": False,
            "minItems": 4,
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {
            "description": "The values, flat (row-major) or nested as the shape says",
            "oneOf": [
                {"type": "array", "items": _PIXEL},
                _nested(_nested(_nested(_nested(_PIXEL)))),
            ],
        },
    },
    "required": ["name", "shape", "datatype", "data"],
}
_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"const": codec.OUTPUT_NAME},
        "parameters": {
            "type": "object",
            "properties": {
                "classification": {"type": "integer", "minimum": 1, "description": "Top k as labels"},
                "binary_data": {"type": "boolean"},
            },
        },
    },
    "required": ["name"],
}
INFER_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "A v2 inference request: one BYTES input named `image`, shape `[N, 1]`, one encoded "
        "image per element, as base64 strings in `data` (or `pixels`, UINT8 `[N, H, W, 3]`, "
        "images already decoded and resized); or the binary tensor extension (send "
        "`Inference-Header-Content-Length`: the JSON, then each image as a 4-byte little-endian "
        "length and its bytes); or one raw image with `Inference-Header-Content-Length: 0`. "
        "Ask for labels with `outputs: [{name: probs, parameters: {classification: k}}]`."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": ["string", "null"]},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_output": {"type": "boolean"}},
                    },
                    "inputs": {
                        "type": "array",
                        "items": {"oneOf": [_IMAGE_INPUT, _PIXELS_INPUT]},
                        "minItems": 1,
                        "maxItems": 1,
                    },
                    "outputs": {"type": "array", "items": _OUTPUT, "maxItems": 1},
                },
                "required": ["inputs"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
