"""Read an ONNX file's ``metadata_props`` without onnx or ONNX Runtime.

The card package must import neither stage's heavy dependencies (the export stage has ``onnx``,
the server only ``onnxruntime``), yet both must read the card from the same bytes. An ONNX file
is one protobuf ``ModelProto``; its metadata is top-level field 14, a repeated
``StringStringEntryProto`` (``key`` = 1, ``value`` = 2). This walks the top-level fields and
seeks past every other one (the graph, which holds the weights, is never read), so reading the
card of a 500 MB model costs a few reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

_METADATA_PROPS_FIELD = 14
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class MetadataError(ValueError):
    """The bytes are not a well-formed ONNX ``ModelProto``."""


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """``{key: value}`` of the file's ``metadata_props`` (later duplicates win, as in onnx)."""
    metadata: dict[str, str] = {}
    size = path.stat().st_size
    with path.open("rb") as f:
        while f.tell() < size:
            field_number, wire_type = _read_key(f)
            if wire_type == _LENGTH_DELIMITED:
                length = _read_varint(f)
                if f.tell() + length > size:
                    raise MetadataError(f"field {field_number} runs past the end of the file")
                if field_number == _METADATA_PROPS_FIELD:
                    key, value = _parse_entry(f.read(length))
                    metadata[key] = value
                else:
                    f.seek(length, 1)
            elif wire_type == _VARINT:
                _read_varint(f)
            elif wire_type == _FIXED64:
                f.seek(8, 1)
            elif wire_type == _FIXED32:
                f.seek(4, 1)
            else:
                raise MetadataError(f"unexpected protobuf wire type {wire_type} (field {field_number})")
    return metadata


def _read_key(f: BinaryIO) -> tuple[int, int]:
    key = _read_varint(f)
    return key >> 3, key & 0x7


def _read_varint(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise MetadataError("the file ends inside a varint")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise MetadataError("a varint is longer than 10 bytes")


def _parse_entry(data: bytes) -> tuple[str, str]:
    """A ``StringStringEntryProto``: fields 1 (key) and 2 (value), both strings."""
    fields = {1: b"", 2: b""}
    pos = 0
    while pos < len(data):
        key, pos = _varint_at(data, pos)
        field_number, wire_type = key >> 3, key & 0x7
        if wire_type != _LENGTH_DELIMITED:
            raise MetadataError(f"metadata entry field {field_number} has wire type {wire_type}")
        length, pos = _varint_at(data, pos)
        if pos + length > len(data):
            raise MetadataError("a metadata entry runs past its end")
        fields[field_number] = data[pos : pos + length]
        pos += length
    try:
        return fields[1].decode("utf-8"), fields[2].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"a metadata entry is not UTF-8: {exc}") from exc


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise MetadataError("a metadata entry ends inside a varint")
