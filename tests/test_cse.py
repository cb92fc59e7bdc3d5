"""cse (passes/cse.py): which attribute values make two ops twins. The key compares ints, strings and int lists as
themselves and everything else by repr, so NaN matches NaN while -0.0 and 0.0, or 1 and 1.0, stay apart."""

from __future__ import annotations

import math

import pytest

from cimc.ir import Block, Module, Operation
from cimc.passes.cse import CommonSubexpressionElimination
from cimc.types import TensorType
from cimc.verifier import verify

F = TensorType("f32", (1, 4))


def twins_merged(first: dict, second: dict, name: str = "onnx.LeakyRelu") -> bool:
    body = Block([F], ["x"])
    a = body.append(Operation(name, body.args, [F], first))
    b = body.append(Operation(name, body.args, [F], second))
    body.append(Operation("onnx.Concat", [a.result, b.result], [TensorType("f32", (1, 8))], {"axis": -1}))
    body.append(Operation("builtin.return", [body.ops[-1].result]))
    module = Module("g", body)
    CommonSubexpressionElimination().apply(module)
    verify(module)
    return sum(op.name == name for op in module.walk()) == 1


@pytest.mark.parametrize("first, second, merged", [
    ({"alpha": 0.5}, {"alpha": 0.5}, True),
    ({"alpha": math.nan}, {"alpha": math.nan}, True),
    ({"alpha": -0.0}, {"alpha": 0.0}, False),
    ({"alpha": 0.5}, {"alpha": 0.25}, False),
    ({"alpha": 0.5}, {}, False),
    ({"alpha": 1}, {"alpha": 1.0}, False),
])
def test_float_attributes_compare_by_repr(first: dict, second: dict, merged: bool) -> None:
    assert twins_merged(first, second) is merged


@pytest.mark.parametrize("first, second, merged", [
    ({"axis": 1}, {"axis": 1}, True),
    ({"axis": 1}, {"axis": 0}, False),
])
def test_int_attributes_compare_as_ints(first: dict, second: dict, merged: bool) -> None:
    assert twins_merged(first, second, "onnx.Softmax") is merged
