"""Read an ONNX file with its large initializers' data going straight into arrays.

``onnx.load`` holds the file's bytes and the parsed message at once (twice the
weights), and the importer's arrays then sit beside the message (twice again):
protobuf's upb backend frees nothing of a message until the whole message goes,
so clearing ``raw_data`` afterwards does not help. This reader walks the file's
protobuf wire format instead: every field is copied as it is into a skeleton
message except the ``raw_data`` of large initializers (``ModelProto.graph`` ->
``GraphProto.initializer`` -> ``TensorProto.raw_data``), whose place in the file
is noted, and each of those is then read from the file into a fresh array of its
own. The compile's import then holds the weights once.

Only what :func:`numpy_helper.to_array` would read as a plain ``frombuffer`` is
read here (a built-in numpy element type, no segment, data stored in the file,
the byte count its dims need); any other large tensor gets its ``raw_data``
back in the message and is read as onnx reads it. A file this reader cannot walk
is left to ``onnx.load``, so its error is onnx's own.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper

# Field numbers of the path to the weights (onnx.proto3): ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9
_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5  # protobuf wire types (3 and 4, groups, never occur in ONNX)
_TAKE_BYTES = 1 << 14  # raw_data up to this size stays in the message (that of every initializer the skeleton keeps)


class _Unwalkable(Exception):
    """The file is not the wire format this reader walks; ``onnx.load`` will say what it is."""


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, list[np.ndarray | None]]:
    """The model at ``path`` and, per entry of ``graph.initializer``, the array its data was read into (None if that
    initializer keeps its data in the message).

    An initializer with an array has no data in the message: its array is the only copy, fresh, C-contiguous and
    owned by no one else (the caller may take it over as it is). Otherwise the message is what ``onnx.load``
    returns (external data loaded from the model's folder); on a file this reader cannot walk, it is
    ``onnx.load``'s result or error.
    """
    if onnx.serialization.registry.get_format_from_file_extension(os.path.splitext(os.fspath(path))[1]) \
            not in (None, "protobuf"):
        return onnx.load(path), []
    try:
        with open(path, "rb") as f:
            walker = _Walker(f, os.fstat(f.fileno()).st_size)
            skeleton = walker.message(walker.size, 0)
            model = onnx.ModelProto()
            decoded = model.ParseFromString(skeleton)
            if (decoded is not None and decoded != len(skeleton)) or len(walker.places) != len(model.graph.initializer):
                raise _Unwalkable
            arrays = [_read_data(f, init, place) for init, place in zip(model.graph.initializer, walker.places)]
    except Exception:  # noqa: BLE001  (not a file, not a model, not the wire format: onnx.load reports it)
        return onnx.load(path), []
    external_data_helper.load_external_data_for_model(model, os.path.dirname(os.fspath(path)))  # as onnx.load does
    return model, arrays


def _read_data(f: BinaryIO, init: onnx.TensorProto, place: tuple[int, int] | None) -> np.ndarray | None:
    """The array of a taken-out ``raw_data``; or None, with the bytes put back, if ``to_array`` must read them."""
    if place is None:
        return None
    offset, length = place
    f.seek(offset)
    dtype = _plain_dtype(init.data_type)
    count = int(np.prod(init.dims, dtype=np.int64))
    if dtype is None or init.HasField("segment") or init.data_location != onnx.TensorProto.DEFAULT \
            or count * dtype.itemsize != length or length <= _TAKE_BYTES:
        init.raw_data = f.read(length)
        return None
    array = np.empty(tuple(init.dims), dtype.newbyteorder("<"))  # ONNX's raw data is little-endian
    if f.readinto(memoryview(array).cast("B")) != length:
        raise _Unwalkable
    return array.astype(dtype) if sys.byteorder == "big" else array


def _plain_dtype(data_type: int) -> np.dtype | None:
    """The numpy type ``to_array`` reads this element type's raw data as with a plain ``frombuffer``, or None."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.isbuiltin and dtype.kind in "biufc" else None


class _Walker:
    """Copies a message's fields, leaving out the large initializers' ``raw_data``, whose places it notes."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.places: list[tuple[int, int] | None] = []  # per initializer in file order: (offset, length) taken out

    def varint(self) -> int:
        value = shift = 0
        while shift < 64:
            byte = self.f.read(1)
            if not byte:
                raise _Unwalkable
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7
        raise _Unwalkable

    def message(self, end: int, level: int) -> bytes:
        """The fields up to ``end`` of a model (level 0), its graph (1) or a large initializer (2)."""
        f = self.f
        out = bytearray()
        while (start := f.tell()) < end:
            key = self.varint()
            field, wire, after_key = key >> 3, key & 7, f.tell()
            if wire == _LEN:
                length = self.varint()
                body = f.tell()
                if body + length > end:
                    raise _Unwalkable
                if level == 1 and field == _INITIALIZER:
                    self.places.append(None)
                if (level == 0 and field == _GRAPH) or (level == 1 and field == _INITIALIZER and length > _TAKE_BYTES):
                    inner = self.message(body + length, level + 1)
                    out += _varint(key) + _varint(len(inner)) + inner
                    continue
                if level == 2 and field == _RAW_DATA:
                    self.places[-1] = (body, length)  # a repeated scalar field: the last one is the value
                    f.seek(body + length)
                    continue
                f.seek(body + length)
            elif wire == _VARINT:
                self.varint()
            elif wire in (_I64, _I32):
                f.seek(after_key + (8 if wire == _I64 else 4))
            else:
                raise _Unwalkable
            stop = f.tell()
            if stop > end:
                raise _Unwalkable
            f.seek(start)
            out += f.read(stop - start)
        if f.tell() != end:
            raise _Unwalkable
        return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
