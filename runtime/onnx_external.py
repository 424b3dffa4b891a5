"""ONNX external data, checked before onnxruntime opens a model.

An ONNX tensor may keep its values in another file (`external_data`, key `location`, a path relative
to the model). Every such path must stay inside the model's own directory: no absolute paths, no
`..`, no symbolic links out. Recent onnxruntime releases check this themselves; this check holds
whatever onnxruntime is installed, and reads the protobuf wire format directly, so the runtime needs
no `onnx` package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Tuple

from .errors import ToolkitError

# The fields that can hold tensors, per message (field numbers of onnx.proto): field -> its message type.
_FIELDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # external_data: StringStringEntryProto (1: key, 2: value)
}
_LENGTH_DELIMITED = 2


def check_external_data(model_path: Path) -> None:
    """Refuse an ONNX file whose external data lies outside its directory (ToolkitError, one line)."""
    try:
        locations = external_locations(model_path.read_bytes())
    except (ValueError, RecursionError) as exc:  # what cannot be walked cannot be cleared
        raise ToolkitError(f"corrupt or unreadable ONNX artifact: {model_path} (not a valid protobuf: {exc})") from exc
    home = model_path.resolve().parent
    for location in locations:
        target = (home / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(home):
            raise ToolkitError(f"{model_path}: external data {location!r} lies outside the model's directory; "
                               "refusing to read it")


def external_locations(model: bytes) -> List[str]:
    """Every external-data `location` in a serialized ModelProto."""
    return list(_locations(memoryview(model), "model"))


def _locations(data: memoryview, message: str) -> Iterator[str]:
    if message == "entry":
        entry = {number: bytes(value).decode("utf-8", "replace") for number, value in _fields(data)}
        if entry.get(1) == "location":
            yield entry.get(2, "")
        return
    nested = _FIELDS[message]
    for number, value in _fields(data):
        if number in nested:
            yield from _locations(value, nested[number])


def _fields(data: memoryview) -> Iterator[Tuple[int, memoryview]]:
    """(field number, bytes) of each length-delimited field of one message; other wire types are skipped."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated field")
            yield key >> 3, data[position:position + length]
            position += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if position != len(data):
        raise ValueError("truncated message")


def _varint(data: memoryview, position: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position
