"""The ``builtin`` dialect: constants and the graph terminator."""

from __future__ import annotations

import numpy as np

from cimc.attributes import Tensor
from cimc.dialects.registry import VerifyError, attrs, define
from cimc.ir import Operation


def _verify_constant(op: Operation) -> None:
    value = op.attributes["value"]
    assert isinstance(value, Tensor)
    if op.results[0].type != value.type:
        raise VerifyError(op, f"type mismatch: constant of type {value.type} declared as {op.results[0].type}")


CONSTANT = define(
    "builtin.constant",
    "A dense constant; large ones (weights) live in the sidecar .npz.",
    results="output",
    attributes=attrs(value="tensor!"),
    verify=_verify_constant,
)

RETURN = define(
    "builtin.return",
    "Ends the graph; its operands are the graph outputs in order.",
    operands="outputs*",
    terminator=True,
    pure=False,
)


def constant_tensor(value: object) -> Tensor | None:
    """The tensor behind ``value`` if a ``builtin.constant`` defines it, else None."""
    op = getattr(value, "op", None)
    if op is None or op.name != "builtin.constant":
        return None
    tensor = op.attributes["value"]
    assert isinstance(tensor, Tensor)
    return tensor


def constant_array(value: object) -> np.ndarray | None:
    """The array behind ``value`` if a ``builtin.constant`` defines it, else None."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.array
