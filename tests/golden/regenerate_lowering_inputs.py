"""Regenerate the input files of the lowering passes' golden tests (tiny LSTM and GRU, all weights inline).

Each pass's input is the IR just before it in the default pipeline; run from the
repository root, then `CIMC_UPDATE_GOLDEN=1 pytest tests/test_golden.py` and review the diff.
"""

import numpy as np
from onnx import helper, TensorProto, numpy_helper
from cimc.importer import import_model
from cimc.pass_manager import PassManager, parse_pipeline
from cimc.printer import print_module
rng = np.random.default_rng(7)


def model(op, gates, extra):
    I = H = 2
    inits = [numpy_helper.from_array(np.round(rng.normal(size=s) * 0.5, 2).astype(np.float32), n)
             for n, s in (("W", (1, gates*H, I)), ("R", (1, gates*H, H)), ("B", (1, 2*gates*H)))]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, name=f"{op.lower()}0", **extra)
    g = helper.make_graph([node], f"tiny_{op.lower()}", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", I])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 1, "batch", H]),
                           helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", H])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
stages = [("decompose-rnn", "decompose-rnn"), ("form-mvm", "form-mvm"), ("ranges", "ranges{calib=\"\" input_bound=1.0 max_steps=100}"),
          ("map-conductance", "map-conductance{granularity=column}"),
          ("tile", "tile{rows=4 cols=6 analog_sum=true adc_bits=8 ramp_cols=true}"), ("place", "place{rows=4 cols=6 ramp_cols=true}"),
          ("fuse-activation", "fuse-activation{bits=3 rows=16 cols=6 identity=digital quantization=cumulative}"),
          ("schedule", "schedule")]
cleanup = {"form-mvm": "canonicalize,cse", "tile": "canonicalize,cse", "fuse-activation": "canonicalize"}
for name, m in (("lstm", model("LSTM", 4, {})), ("gru", model("GRU", 3, {"linear_before_reset": 1}))):
    mod = import_model(m, f"tiny_{name}.onnx")
    for stage, spec in stages:
        text = print_module(mod, inline_limit=1 << 30).text
        open(f"tests/golden/{stage}/{name}.cir", "w").write(f"// RUN: {spec}\n" + text)
        PassManager(parse_pipeline(spec + ("," + cleanup[stage] if stage in cleanup else ""))).run(mod)

# share-weights: two unrolled decoder steps, GRU nodes over the same initializers, each step feeding the next.
inits = [numpy_helper.from_array(np.round(rng.normal(size=s) * 0.5, 2).astype(np.float32), n)
         for n, s in (("W", (1, 6, 2)), ("R", (1, 6, 2)), ("B", (1, 12)))]
steps = [helper.make_node("GRU", [h, "W", "R", "B", "", h], [f"Y{k}", f"h{k + 1}"], hidden_size=2, linear_before_reset=1,
                          name=f"step{k}") for k, h in enumerate(("h0", "h1"))]
g = helper.make_graph(steps, "tiny_decoder", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", 2])],
                      [helper.make_tensor_value_info("h2", TensorProto.FLOAT, [1, "batch", 2])], inits)
mod = import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "tiny_decoder.onnx")
PassManager(parse_pipeline(",".join(spec for stage, spec in stages[:5]) + ",canonicalize,cse")).run(mod)
open("tests/golden/share-weights/decoder.cir", "w").write("// RUN: share-weights\n" + print_module(mod, inline_limit=1 << 30).text)
