"""A count of a protobuf message's fields, taken from the wire format before it is parsed.

protobuf's parser builds every field of a message in one C call that holds the GIL: a 20 MB
ModelInferRequest of four million empty ``outputs`` is seconds of it, and no count can be
checked before it is done. This walk reads only the tags and lengths (nested messages too,
by the message's descriptor) and stops as soon as the message holds more fields than allowed,
so refusing a crafted message costs at most ``max_fields`` steps; a packed repeated scalar
counts one field per byte, an upper bound on its elements. Blobs (``bytes``, ``string``) are
skipped by their length, never copied.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from app.inference.errors import MalformedRequestError, RequestTooLargeError

_MAX_DEPTH = 32
_BLOBS = (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING)
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def check_field_count(data: bytes, descriptor: Descriptor, max_fields: int) -> int:
    """The number of fields in ``data`` (a ``descriptor`` message), at most ``max_fields``;
    ``RequestTooLargeError`` past it, ``MalformedRequestError`` when the framing is broken."""
    try:
        left = _walk(memoryview(data), descriptor, max_fields, 0)
    except MalformedRequestError as exc:
        raise MalformedRequestError(f"not a valid {descriptor.full_name} message: {exc.message}") from None
    return max_fields - left


def _walk(data: memoryview, descriptor: Descriptor | None, left: int, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise MalformedRequestError(f"the message nests deeper than {_MAX_DEPTH} levels")
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        left -= 1
        if left < 0:
            raise RequestTooLargeError(
                "the request holds more protobuf fields than a request of this server may "
                "(one per image, and a few for the names and parameters)"
            )
        wire_type = key & 7
        if wire_type == _VARINT:
            _, position = _varint(data, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if position + length > end:
                raise MalformedRequestError("a length-delimited field runs past the end of the message")
            field = descriptor.fields_by_number.get(key >> 3) if descriptor is not None else None
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                left = _walk(data[position : position + length], field.message_type, left, depth + 1)
            elif field is not None and field.type not in (
                FieldDescriptor.TYPE_BYTES,
                FieldDescriptor.TYPE_STRING,
            ):
                left -= length  # packed scalars: at most one element per byte
            position += length
        else:
            raise MalformedRequestError(f"wire type {wire_type} is not accepted (groups are not used)")
    if position > end:
        raise MalformedRequestError("the message ends inside a field")
    return left


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise MalformedRequestError("a truncated or overlong varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
