"""Models too large for a fixed default chip, and models whose nodes share weights, built with onnx.helper.

They are generated (random weights, seeded) rather than committed, because
the large ones hold megabytes of weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def lstm_stack(inputs: int, hidden: int, layers: int = 1, seed: int = 0) -> onnx.ModelProto:
    """``layers`` stacked ONNX LSTMs (inputs -> hidden -> ... -> hidden), uniform weights in +-1/sqrt(hidden) as PyTorch inits."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(hidden)
    nodes, inits = [], []
    x = "x"
    for layer in range(layers):
        width = inputs if layer == 0 else hidden
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        for n, s in zip(names, ((1, 4 * hidden, width), (1, 4 * hidden, hidden), (1, 8 * hidden))):
            inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, size=s).astype(np.float32), n))
        nodes.append(helper.make_node("LSTM", [x, *names], [f"Y{layer}", f"Y_h{layer}"], hidden_size=hidden, name=f"lstm{layer}"))
        if layer + 1 < layers:
            nodes.append(helper.make_node("Squeeze", [f"Y{layer}", "axis1"], [f"x{layer + 1}"], name=f"squeeze{layer}"))
            x = f"x{layer + 1}"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(nodes, "lstm_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs])],
                              [helper.make_tensor_value_info(f"Y_h{layers - 1}", TensorProto.FLOAT, [1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def gru_decoder(steps: int = 20, hidden: int = 64, vocab: int = 32, seed: int = 0) -> onnx.ModelProto:
    """An unrolled greedy decoder as exporters emit it: ``steps`` GRU nodes over the same W, R, B initializers.

    Step k runs one GRU time step on the previous step's output (X = h_(k-1), a
    [1, batch, hidden] tensor, which is also its initial state) and projects
    it to ``vocab`` logits with a MatMul over the same projection weight; the
    output stacks every step's logits. One decoder's weights: 3 x hidden x
    (2 hidden) + 6 hidden + hidden x vocab.
    """
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(hidden)
    inits = [numpy_helper.from_array(rng.uniform(-scale, scale, size=s).astype(np.float32), n)
             for n, s in (("W", (1, 3 * hidden, hidden)), ("R", (1, 3 * hidden, hidden)), ("B", (1, 6 * hidden)),
                          ("P", (hidden, vocab)))]
    nodes = []
    h = "h0"
    logits = []
    for k in range(steps):
        nodes.append(helper.make_node("GRU", [h, "W", "R", "B", "", h], [f"Y{k}", f"h{k + 1}"], hidden_size=hidden,
                                      linear_before_reset=1, name=f"decoder_step{k}"))
        nodes.append(helper.make_node("MatMul", [f"h{k + 1}", "P"], [f"logits{k}"], name=f"project{k}"))
        logits.append(f"logits{k}")
        h = f"h{k + 1}"
    nodes.append(helper.make_node("Concat", logits, ["logits"], axis=0, name="stack"))
    graph = helper.make_graph(nodes, "gru_decoder", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", hidden])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [steps, "batch", vocab])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
