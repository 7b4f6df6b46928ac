"""The OpenAPI document's request bodies and responses of this package's inference routes."""

from __future__ import annotations

from typing import Any

from app.api.errors import NOT_READY, error_response
from app.api.uploads import FILE_FIELD, FORMAT_MEDIA_TYPES, OCTET_STREAM
from app.config import SUPPORTED_FORMATS
from app.http.errors import error_body_schema
from app.http.json_body import BASE64_PATTERN, EXAMPLE_PNG_BASE64

# -- POST /predict ---------------------------------------------------------------------------------
# Not empty: an empty body or part is refused (422) like any other undecodable image.
_BINARY = {"type": "string", "format": "binary", "minLength": 1}
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
                # A part under another name is refused (422), not ignored.
                "additionalProperties": False,
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
_B64_IMAGE = {
    "type": "object",
    "properties": {
        "b64": {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": BASE64_PATTERN,
            "description": "The encoded image, base64",
        }
    },
    "required": ["b64"],
    "additionalProperties": False,
}


def _named(value: dict[str, Any]) -> dict[str, Any]:
    """One input named by the client (``{"image_bytes": ...}``), any name but ``b64``."""
    return {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "propertyNames": {"not": {"const": "b64"}},
        "additionalProperties": value,
    }


# An instance: {"b64": ...}, or one named input holding it.
_INSTANCE = {"oneOf": [_B64_IMAGE, _named(_B64_IMAGE)]}
_INSTANCES = {"type": "array", "items": _INSTANCE, "minItems": 1}
TF_SERVING_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string", "description": "Accepted and not used."},
                    "instances": _INSTANCES,
                    # Columns: a list of images, one image, or one named input holding either.
                    "inputs": {"oneOf": [_INSTANCES, _INSTANCE, _named(_INSTANCES)]},
                },
                # Rows or columns: exactly one of the two.
                "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
            },
            "example": {"instances": [{"b64": EXAMPLE_PNG_BASE64}]},
        }
    },
}
