"""JSON request bodies, bounded before they are parsed: a body of millions of tiny values, or
nested past the parser's recursion limit, is refused with a clear error and costs no more
than a count of its bytes."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.inference.errors import MalformedRequestError

# Values without a comma between them only nest ('[[[...'), and the parser stops at its
# recursion limit (about a thousand levels): the commas bound the values, one C pass counts them.


_COUNT_STEP_BYTES = 256 * 1024  # counted a slice at a time: the GIL is never held for long


def count_json_values(body: bytes, stop_after: int | None = None) -> int:
    """An upper bound on the values in ``body`` (commas inside strings counted too); once it
    passes ``stop_after``, the count so far."""
    values = 1
    for start in range(0, len(body), _COUNT_STEP_BYTES):
        values += body.count(b",", start, start + _COUNT_STEP_BYTES)
        if stop_after is not None and values > stop_after:
            break
    return values


def load_json(body: bytes, max_values: int, what: str = "the request body") -> Any:
    """``body`` parsed, or ``MalformedRequestError`` when it is not JSON, holds more than
    ``max_values`` values (commas inside strings count) or nests too deeply."""
    values = count_json_values(body, stop_after=max_values)
    if values > max_values:
        raise MalformedRequestError(
            f"{what} holds more than the {max_values} JSON values a request of this route may hold "
            f"(its commas counted)"
        )
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedRequestError(f"{what} nests JSON arrays or objects too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequestError(f"{what} is not valid JSON: {exc}") from None


def decode_base64(value: object, where: str) -> bytes:
    """One base64 string (standard alphabet, padded) as bytes: how JSON carries binary data."""
    if not isinstance(value, str):
        raise MalformedRequestError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequestError(f"{where}: not valid base64 ({exc})") from None


# A real image (a 1 x 1 grey PNG) as base64, for the OpenAPI examples: an example request the
# server answers 200, not a placeholder it refuses.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
# Standard base64 with its padding, what ``decode_base64`` accepts, as a JSON Schema pattern.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
