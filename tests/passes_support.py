"""Helpers shared by the tests that compare cimc with onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_corpus import CorpusCase

RTOL, ATOL = 1e-5, 1e-6


def assert_matches(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float = RTOL, atol: float = ATOL) -> None:
    """Same names, dtypes and shapes, and values within rtol/atol."""
    assert set(expected) <= set(actual), f"missing outputs {sorted(set(expected) - set(actual))}"
    for name, ref in expected.items():
        assert actual[name].dtype == ref.dtype and actual[name].shape == ref.shape, \
            f"{name}: {actual[name].dtype}{list(actual[name].shape)} vs {ref.dtype}{list(ref.shape)}"
        np.testing.assert_allclose(actual[name], ref, rtol=rtol, atol=atol, err_msg=name)


def bidirectional_lstm_case(I: int = 20, H: int = 12) -> CorpusCase:
    """A peephole LSTM with clip and sequence_lens; at the defaults 20 + 12 + 12 + 1 = 45 rows and 48 columns per
    direction, which forces row and column splits on 16 x 8 arrays."""
    rng = np.random.default_rng(3)
    T, B = 5, 3
    inits = [numpy_helper.from_array((rng.normal(size=s) * 0.3).astype(np.float32), n)
             for n, s in (("W", (2, 4 * H, I)), ("R", (2, 4 * H, H)), ("B", (2, 8 * H)), ("P", (2, 3 * H)))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "lens", "", "", "P"], ["Y", "Y_h", "Y_c"],
                            hidden_size=H, direction="bidirectional", clip=2.5, name="big")
    graph = helper.make_graph([node], "big", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", I]),
                                              helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"X": rng.normal(size=(T, B, I)).astype(np.float32), "lens": np.array([5, 2, 4], np.int32)}
    return CorpusCase("big-bidirectional-lstm", model, feeds)
