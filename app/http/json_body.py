"""JSON request bodies, bounded before they are parsed: a body of millions of tiny values, or
nested past the parser's recursion limit, is refused with a clear error and costs no more
than a count of its bytes."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.inference.errors import MalformedRequestError

# Every JSON value but the first follows a ',' or opens a '[' or '{' (or is the first in one):
# their count bounds the number of values. Counting is three passes of C over the bytes.
_STRUCTURE = (b",", b"[", b"{")


def count_json_values(body: bytes) -> int:
    """An upper bound on the values in ``body`` (characters inside strings counted too)."""
    return 1 + sum(body.count(character) for character in _STRUCTURE)


def load_json(body: bytes, max_values: int, what: str = "the request body") -> Any:
    """``body`` parsed, or ``MalformedRequestError`` when it is not JSON, holds more than
    ``max_values`` values (commas and brackets inside strings count) or nests too deeply."""
    values = count_json_values(body)
    if values > max_values:
        raise MalformedRequestError(
            f"{what} holds up to {values} JSON values (counting ',', '[' and '{{'), more than the "
            f"{max_values} a request of this route may hold"
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
