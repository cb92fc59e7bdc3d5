"""A small helper for passes that create ops: insertion point, location and constants in one place."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cimc.attributes import Tensor
from cimc.ir import Block, Operation, Region, Value
from cimc.types import TensorType


class Builder:
    """Inserts new ops into ``block`` before ``anchor`` (or at the end), stamping ``location`` on each."""

    def __init__(self, block: Block, anchor: Operation | None = None, location: str | None = None) -> None:
        self.block = block
        self.anchor = anchor
        self.location = location
        self._at = -1  # where the anchor was last seen: checked in O(1) before use, searched for only if it moved

    def insert(self, op: Operation) -> Operation:
        if op.location is None:
            op.location = self.location
        if self.anchor is None:
            self.block.append(op)
            return op
        ops = self.block.ops
        if not (0 <= self._at < len(ops) and ops[self._at] is self.anchor):
            self._at = ops.index(self.anchor)  # a pass that creates thousands of ops before one anchor searches once
        self.block.insert(self._at, op)
        self._at += 1
        return op

    def create(self, name: str, operands: Sequence[Value | None], result_types: Sequence[TensorType],
               attributes: dict[str, object] | None = None, names: Sequence[str | None] | None = None,
               regions: Sequence[Region] = ()) -> Operation:
        return self.insert(Operation(name, operands, result_types, attributes, regions, result_names=names))

    def value(self, name: str, operands: Sequence[Value | None], result_type: TensorType,
              attributes: dict[str, object] | None = None, result_name: str | None = None) -> Value:
        """Create a single-result op and return its result."""
        return self.create(name, operands, [result_type], attributes, [result_name]).result

    def const(self, array: np.ndarray | float | int, dtype: np.dtype | type | None = None, key: str | None = None,
              name: str | None = None) -> Value:
        tensor = Tensor(np.asarray(array, dtype=dtype), key=key)
        return self.value("builtin.constant", [], tensor.type, {"value": tensor}, name)
