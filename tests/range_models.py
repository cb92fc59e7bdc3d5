"""ONNX recurrent cells with random weights of a chosen scale, for the range and saturation tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def recurrent_model(kind: str, inputs: int, hidden: int, seed: int, scale: float, direction: str = "forward",
                    lens: bool = False, bias: tuple[float, ...] | None = None, batch: int | str = "batch",
                    **attrs: object) -> onnx.ModelProto:
    """One ONNX LSTM/GRU node with weights ~ U(-scale, scale) (PyTorch's init at scale 1/sqrt(hidden))."""
    rng = np.random.default_rng(seed)
    gates = {"GRU": 3, "LSTM": 4}[kind]
    d = 2 if direction == "bidirectional" else 1
    b = rng.uniform(-scale, scale, (d, 2 * gates * hidden))
    if bias is not None:  # per gate, added to Wb
        b[:, :gates * hidden] += np.repeat(np.asarray(bias), hidden)
    inits = [numpy_helper.from_array(rng.uniform(-scale, scale, (d, gates * hidden, inputs)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-scale, scale, (d, gates * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(b.astype(np.float32), "B")]
    names = ["X", "W", "R", "B"]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", batch, inputs])]
    if lens:
        names.append("lens")
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [batch]))
    if kind == "LSTM" and attrs.pop("peepholes", False):
        names += [""] * (5 - len(names)) + ["", "", "P"]
        inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, (d, 3 * hidden)).astype(np.float32), "P"))
    node = helper.make_node(kind, names, ["Y", "Y_h"], hidden_size=hidden, direction=direction, name="cell", **attrs)
    graph = helper.make_graph([node], "cell", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", d, batch, hidden]),
                               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [d, batch, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
