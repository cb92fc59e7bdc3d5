"""Simulator time against onnxruntime on the same LSTM, batch and sequence length, at each fidelity.

The last line is the saturation counters' overhead: the median ratio of counted
to plain ``ideal`` runs, interleaved, in CPU time.

    python bench/simulate.py [--hidden 256] [--batch 64] [--steps 100] [--repeat 5]

Prints the median wall time of each and the ratio simulator / onnxruntime,
measured in the same run. onnxruntime runs with its default threads; the
simulator is numpy (its BLAS threads are the machine's too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.npz import npz_bytes


def lstm_model(inputs: int, hidden: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(hidden)
    inits = [numpy_helper.from_array((rng.uniform(-scale, scale, size=s)).astype(np.float32), n)
             for n, s in (("W", (1, 4 * hidden, inputs)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="lstm")
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def median_time(fn, repeat: int, clock=time.perf_counter) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    model_path = folder / "lstm.onnx"
    onnx.save(lstm_model(args.inputs, args.hidden), model_path)
    x = np.random.default_rng(1).uniform(-1, 1, size=(args.steps, args.batch, args.inputs)).astype(np.float32)
    (folder / "calib.npz").write_bytes(npz_bytes({"x": x[:, :16]}))
    compiled = cimc.compile(model_path, calib=folder / "calib.npz")  # the default chip is sized to the model
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    t_ort = median_time(lambda: session.run(None, {"x": x}), args.repeat)
    print(f"LSTM input {args.inputs}, hidden {args.hidden}, batch {args.batch}, {args.steps} steps; median of {args.repeat}")
    print(f"  onnxruntime        {1000 * t_ort:9.1f} ms")
    for fidelity in ("exact", "ideal", "noisy"):
        t = median_time(lambda f=fidelity: compiled.run({"x": x}, fidelity=f, seed=0), max(1, args.repeat // 2))
        print(f"  simulator {fidelity:<8} {1000 * t:9.1f} ms   ratio {t / t_ort:6.1f}x")
    # Interleaved pairs, timed in CPU seconds of this process, so that load from other processes (the machine is
    # shared) does not enter; the overhead is the median of the per-pair ratios.
    pairs = [(median_time(lambda: compiled.run({"x": x}, fidelity="ideal", seed=0), 1, time.process_time),
              median_time(lambda: compiled.run_with_saturation({"x": x}, fidelity="ideal", seed=0), 1, time.process_time))
             for _ in range(args.repeat)]
    print(f"  ideal + counters   counters' overhead {statistics.median(c / p for p, c in pairs):.3f}x in CPU time "
          f"(median of {args.repeat} interleaved pairs)")


if __name__ == "__main__":
    main()
