"""Symbolic dims of graph inputs that the model's initializers fix.

A model may declare its input ``X: [T, N, I]`` with a free batch symbol ``N``
and still carry initial states as initializers of batch 3: the model then runs
only at N = 3 (onnxruntime refuses any other batch). Left symbolic, N would
let ``cimc verify`` draw random inputs of another batch, and the mismatch would
surface deep in a simulator kernel. The importer therefore binds such symbols
to the size the initializer fixes, in the graph input types, so that the
manifest, the interpreter's input check and the random inputs all see it, and
records each binding with the tensor that fixed it.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from cimc.diagnostics import CimcError

# Recurrent op -> (input index, axis that is the batch at layout 0, at layout 1) of every batch-carrying optional input.
_BATCH_INPUTS = {
    "LSTM": ((4, 0, 0), (5, 1, 0), (6, 1, 0)),  # sequence_lens, initial_h, initial_c
    "GRU": ((4, 0, 0), (5, 1, 0)),
    "RNN": ((4, 0, 0), (5, 1, 0)),
}


def dims_bound_by_initializers(inferred: onnx.ModelProto,
                               initializers: Iterable[onnx.TensorProto]) -> dict[str, tuple[int, str]]:
    """Graph-input symbol -> (size, what fixed it), for the batch of every recurrent node whose states are initializers.

    ``inferred`` is the shape-inferred model (its ``value_info`` types X where X
    is computed); a symbol fixed at two different sizes is an error naming both.
    """
    shapes = {init.name: list(init.dims) for init in initializers}
    types = {info.name: info.type for info in [*inferred.graph.input, *inferred.graph.value_info]}
    input_symbols = {d.dim_param for inp in inferred.graph.input for d in inp.type.tensor_type.shape.dim if d.dim_param}
    bound: dict[str, tuple[int, str]] = {}
    for node in inferred.graph.node:
        if node.op_type not in _BATCH_INPUTS or not node.input or node.input[0] not in types:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        x_dims = types[node.input[0]].tensor_type.shape.dim
        if len(x_dims) != 3 or not x_dims[1 - layout].dim_param:
            continue
        symbol = x_dims[1 - layout].dim_param
        if symbol not in input_symbols:
            continue
        for index, axis0, axis1 in _BATCH_INPUTS[node.op_type]:
            name = node.input[index] if index < len(node.input) else ""
            dims = shapes.get(name)
            axis = axis1 if layout else axis0
            if not dims or axis >= len(dims):
                continue
            what = f"initializer '{name}' of {node.op_type} '{node.name or node.output[0]}'"
            if symbol in bound and bound[symbol][0] != dims[axis]:
                raise CimcError(f"dim '{symbol}' is fixed at {bound[symbol][0]} by {bound[symbol][1]} but at {dims[axis]} "
                                f"by {what}: no input can satisfy both")
            bound.setdefault(symbol, (int(dims[axis]), what))
    return bound


def bind_input_dims(model: onnx.ModelProto, bound: dict[str, tuple[int, str]]) -> None:
    """Replace every bound symbol in the graph inputs' types by its size."""
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param in bound:
                d.dim_value = bound[d.dim_param][0]


def describe(bound: dict[str, tuple[int, str]]) -> tuple[str, ...]:
    """The module attribute ``bound_dims``: one ``SYMBOL=SIZE by WHAT`` per binding."""
    return tuple(f"{symbol}={size} by {what}" for symbol, (size, what) in sorted(bound.items()))
