"""The OpenAPI document's request bodies and responses of this package's inference routes."""

from __future__ import annotations

from typing import Any

from app.api.errors import NOT_READY, error_response
from app.api.uploads import FILE_FIELD, FORMAT_MEDIA_TYPES, OCTET_STREAM
from app.config import SUPPORTED_FORMATS
from app.http.errors import error_body_schema

# -- POST /predict ---------------------------------------------------------------------------------
_BINARY = {"type": "string", "format": "binary"}
_IMAGE_TYPES = [t for fmt in SUPPORTED_FORMATS for t in FORMAT_MEDIA_TYPES[fmt][:1]]
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "Either multipart/form-data with one or more parts named `file` (one image each), "
        "or the bytes of one image as the raw body with its image content type."
    ),
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    FILE_FIELD: {
                        "type": "array",
                        "minItems": 1,
                        "items": {**_BINARY, "contentMediaType": "application/octet-stream"},
                        "description": "Images (JPEG, PNG, WebP, BMP or GIF), one per part.",
                    }
                },
                "required": [FILE_FIELD],
            }
        },
        **{
            media_type: {"schema": {**_BINARY, "contentMediaType": media_type}} for media_type in _IMAGE_TYPES
        },
        OCTET_STREAM: {"schema": {**_BINARY, "contentMediaType": OCTET_STREAM}},
    },
}

PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("Malformed request (a multipart body without boundary, a client that left)."),
    413: error_response("Too large: body bytes, image pixels or number of images."),
    415: error_response("Unsupported content type or image format."),
    422: error_response("Undecodable image, malformed multipart body or bad parameter."),
    **NOT_READY,
    500: error_response("The model failed on the batch that held this request's images."),
    504: error_response("Not finished within the request deadline."),
}


# -- TF Serving's :predict -------------------------------------------------------------------------
TF_SERVING_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_body_schema(
        "Malformed request: not JSON, no instances/inputs, bad base64, an image that cannot be "
        "decoded or is not an allowed format, or a bad parameter."
    ),
    404: error_body_schema("No model of that name, or no such version of it."),
    413: error_body_schema("Too large: body bytes, image pixels or number of images."),
    415: error_body_schema("A Content-Encoding other than gzip or deflate."),
    500: error_body_schema("The model failed on the batch that held this request's images."),
    503: error_body_schema("Overloaded (the queue is full), loading or draining.", retry_after=True),
    504: error_body_schema("Not finished within the request deadline."),
}
_IMAGE = {
    "type": "object",
    "properties": {"b64": {"type": "string", "description": "The encoded image, base64"}},
    "required": ["b64"],
}
TF_SERVING_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string"},
                    "instances": {"type": "array", "items": _IMAGE, "minItems": 1},
                    "inputs": {"type": "array", "items": _IMAGE, "minItems": 1},
                },
            },
            "example": {"instances": [{"b64": "/9j/4AAQSkZJRg..."}]},
        }
    },
}
