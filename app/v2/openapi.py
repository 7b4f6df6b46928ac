"""The OpenAPI document's request bodies and responses of the v2 REST routes."""

from __future__ import annotations

from typing import Any

from app.http.errors import error_body_schema
from app.v2 import codec

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

_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "example": codec.INPUT_NAME},
        "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 1]},
        "datatype": {"type": "string", "example": codec.BYTES},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}, "description": "One base64 string per image"},
    },
    "required": ["name", "shape", "datatype"],
}
INFER_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "A v2 inference request: one BYTES input named `image`, shape `[N, 1]`, one encoded "
        "image per element, as base64 strings in `data`; or the binary tensor extension (send "
        "`Inference-Header-Content-Length`: the JSON, then each image as a 4-byte little-endian "
        "length and its bytes); or one raw image with `Inference-Header-Content-Length: 0`. "
        "Ask for labels with `outputs: [{name: probs, parameters: {classification: k}}]`."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": _TENSOR_SCHEMA, "minItems": 1, "maxItems": 1},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            "required": ["name"],
                        },
                    },
                },
                "required": ["inputs"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
