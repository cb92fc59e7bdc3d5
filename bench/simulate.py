"""Simulator time against onnxruntime on the same LSTM, batch and sequence length, at each fidelity; peers beside it.

    python bench/simulate.py [--hidden 256] [--inputs 64] [--batch 64] [--steps 100] [--repeat 7] [--threads 1]

In-process: the median wall time of ``repeat`` runs of each runner, interleaved
round by round (so that load from other processes on a shared machine falls on
every runner alike), and the ratio runner / onnxruntime of the medians. A
simulator is constructed once per fidelity (its chip is realized and its plan
compiled once) and then run: what is timed is a run, as for onnxruntime's
``session.run``. Whole-process: the wall time of ``cimc run`` on the saved
image against a Python process that loads onnxruntime and runs the model once.

Peers, when importable (never a dependency of cimc):

- CrossSim 3.2 (Sandia, ``simulator`` package) ``AnalogLSTM`` converted from the
  same torch LSTM by ``from_torch``: "ideal core" (default parameters: no
  converters, no device errors) and "8-bit ADC/DAC, 2 % programming error"
  (``NormalProportionalDevice`` of magnitude 0.02, ADC range at its maximum);
  that plus 2 % proportional read noise (per MVM), which is so slow that it is
  timed on its first ``--read-noise-steps`` steps and scaled to the sequence.
- aihwkit 1.2 ``AnalogLSTM`` with ``TorchInferenceRPUConfig`` (torch tile) and
  with ``InferenceRPUConfig`` (C++ tile), both with their default noise model,
  same weights.

``--threads N`` sets every runner to N threads (onnxruntime's intra-op threads,
numpy's BLAS, torch); default 1, since on a shared machine oversubscribed thread
pools make the multi-threaded times meaningless (CrossSim's run went from 0.5 s
to 20 s here); 0 leaves each library's own default.
The last line is the saturation counters' overhead: the median ratio of counted
to plain ``ideal`` runs, interleaved, in CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # BLAS reads its thread count when numpy is first imported
    _n = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    if _n != "0":
        for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[_var] = _n

import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cimc  # noqa: E402
from cimc.backends.simulator import Simulator, SimulatorOptions  # noqa: E402
from cimc.hardware import hardware_from_dict  # noqa: E402
from cimc.npz import npz_bytes  # noqa: E402


def lstm_model(inputs: int, hidden: int, seed: int = 0) -> onnx.ModelProto:
    """A one-layer LSTM with PyTorch's default initialization, U(-1/sqrt(H), 1/sqrt(H)), as ONNX."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(hidden)
    inits = [numpy_helper.from_array((rng.uniform(-scale, scale, size=s)).astype(np.float32), n)
             for n, s in (("W", (1, 4 * hidden, inputs)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="lstm")
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def torch_lstm(model: onnx.ModelProto, threads: int):  # noqa: ANN201
    """The same LSTM as a torch.nn.LSTM (ONNX gate order i, o, f, c; torch's i, f, g, o), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, r, b = init["W"][0], init["R"][0], init["B"][0]
    hidden = r.shape[1]
    order = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in (0, 2, 3, 1)])
    lstm = torch.nn.LSTM(w.shape[1], hidden)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(w[order]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(r[order]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b[:4 * hidden][order]))
        lstm.bias_hh_l0.copy_(torch.from_numpy(b[4 * hidden:][order]))
    return lstm


def crosssim_runners(lstm, x: np.ndarray) -> dict[str, Callable[[], object]]:  # noqa: ANN001
    try:
        import torch
        from simulator import CrossSimParameters
        from simulator.algorithms.dnn.torch.convert import from_torch
        from simulator.parameters.xbar_parameters import ADCRangeLimits
    except ImportError:
        return {}
    ideal = CrossSimParameters()
    noisy = CrossSimParameters()
    noisy.xbar.device.programming_error.enable = True
    noisy.xbar.device.programming_error.model = "NormalProportionalDevice"
    noisy.xbar.device.programming_error.magnitude = 0.02
    noisy.xbar.adc.mvm.bits = 8
    noisy.xbar.adc.mvm.adc_range_option = ADCRangeLimits.MAX
    noisy.xbar.dac.mvm.bits = 8
    xt = torch.from_numpy(x)
    runners = {}
    for label, params in (("CrossSim 3.2 AnalogLSTM, ideal core", ideal),
                          ("CrossSim 3.2 AnalogLSTM, 8-bit ADC/DAC, 2 % programming error", noisy)):
        analog = from_torch(lstm, params)

        def run(m=analog) -> object:  # noqa: ANN001
            with torch.no_grad():
                return m(xt)
        runners[label] = run
    return runners


def crosssim_read_noise_per_step(lstm, x: np.ndarray, steps: int) -> float | None:  # noqa: ANN001
    """Seconds per time step of CrossSim with read noise as well (2 % proportional, drawn per MVM), on ``steps`` steps.

    Far too slow for the full sequence (minutes per run here), so it is timed on a prefix; its cost per step
    does not depend on the step.
    """
    try:
        import torch
        from simulator import CrossSimParameters
        from simulator.algorithms.dnn.torch.convert import from_torch
        from simulator.parameters.xbar_parameters import ADCRangeLimits
    except ImportError:
        return None
    params = CrossSimParameters()
    for error in (params.xbar.device.programming_error, params.xbar.device.read_noise):
        error.enable = True
        error.model = "NormalProportionalDevice"
        error.magnitude = 0.02
    params.xbar.adc.mvm.bits = 8
    params.xbar.adc.mvm.adc_range_option = ADCRangeLimits.MAX
    params.xbar.dac.mvm.bits = 8
    analog = from_torch(lstm, params)
    xt = torch.from_numpy(np.ascontiguousarray(x[:steps]))
    with torch.no_grad():
        start = time.perf_counter()
        analog(xt)
        return (time.perf_counter() - start) / steps


def aihwkit_runners(lstm, x: np.ndarray) -> dict[str, Callable[[], object]]:  # noqa: ANN001
    try:
        import torch
        from aihwkit.nn import AnalogLSTM
        from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
    except ImportError:
        return {}
    xt = torch.from_numpy(x)
    runners = {}
    for label, config in (("aihwkit 1.2 AnalogLSTM, TorchInferenceRPUConfig (torch tile)", TorchInferenceRPUConfig()),
                          ("aihwkit 1.2 AnalogLSTM, InferenceRPUConfig (C++ tile)", InferenceRPUConfig())):
        analog = AnalogLSTM(lstm.input_size, lstm.hidden_size, rpu_config=config)
        analog.load_state_dict(_aihwkit_state(analog, lstm), strict=False)
        analog.eval()

        def run(m=analog) -> object:  # noqa: ANN001
            with torch.no_grad():
                return m(xt)
        runners[label] = run
    return runners


def _aihwkit_state(analog, lstm) -> dict:  # noqa: ANN001
    """The torch LSTM's weights under the analog LSTM's names (ih and hh weights of the one cell)."""
    state = {}
    source = dict(lstm.named_parameters())
    for name in analog.state_dict():
        for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if part in name and f"{part}_l0" in source:
                state[name] = source[f"{part}_l0"].detach().clone()
    return state


def interleaved_medians(runners: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    for fn in runners.values():
        fn()  # warm-up: first-call costs (allocator, thread pools) are not what is compared
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def whole_process(folder: Path, threads: int, repeat: int) -> dict[str, float]:
    """Wall time of one complete process per runner: start, load, run once, write the outputs."""
    env = dict(os.environ)
    if threads:
        env.update({v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    ort_script = ("import numpy as np, onnxruntime as ort; o = ort.SessionOptions(); "
                  f"o.intra_op_num_threads = {threads}; "
                  f"s = ort.InferenceSession({str(folder / 'lstm.onnx')!r}, o, providers=['CPUExecutionProvider']); "
                  f"np.savez({str(folder / 'ort_out.npz')!r}, *s.run(None, dict(np.load({str(folder / 'in.npz')!r}))))")
    cimc_bin = Path(sys.executable).with_name("cimc")
    commands = {"onnxruntime": [sys.executable, "-c", ort_script]}
    for fidelity in ("exact", "ideal", "noisy"):
        commands[f"cimc run --fidelity {fidelity}"] = [str(cimc_bin), "run", str(folder / "lstm.cimg"), "--inputs",
                                                       str(folder / "in.npz"), "-o", str(folder / f"{fidelity}.npz"),
                                                       "--fidelity", fidelity]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--process-repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of every runner (0: each library's default)")
    parser.add_argument("--no-peers", action="store_true", help="leave CrossSim and aihwkit out even when installed")
    parser.add_argument("--read-noise-steps", type=int, default=3,
                        help="time steps on which CrossSim with read noise is timed (0: not at all)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    model = lstm_model(args.inputs, args.hidden)
    onnx.save(model, folder / "lstm.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, size=(args.steps, args.batch, args.inputs)).astype(np.float32)
    (folder / "calib.npz").write_bytes(npz_bytes({"x": x[:, :16]}))
    (folder / "in.npz").write_bytes(npz_bytes({"x": x}))
    compiled = cimc.compile(folder / "lstm.onnx", calib=folder / "calib.npz")  # the default chip is sized to the model
    compiled.save(folder / "lstm.cimg")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(folder / "lstm.onnx"), options, providers=["CPUExecutionProvider"])
    runners: dict[str, Callable[[], object]] = {"onnxruntime": lambda: session.run(None, {"x": x})}
    for fidelity in ("exact", "ideal", "noisy"):
        sim = Simulator(compiled.image, SimulatorOptions(fidelity, seed=0))
        runners[f"cimc {fidelity}"] = lambda s=sim: s.run({"x": x})
    # CrossSim's noisy configuration has programming error and converters but no read noise: the same on cimc's side
    quiet = hardware_from_dict({**compiled.image.manifest["hardware"],
                                "nonideality": {**compiled.image.manifest["hardware"]["nonideality"], "read_noise_rel": 0.0}},
                               "bench hardware")
    without = Simulator(cimc.compile(folder / "lstm.onnx", hw=quiet, calib=folder / "calib.npz").image,
                        SimulatorOptions("noisy", seed=0))
    runners["cimc noisy without read noise"] = lambda: without.run({"x": x})
    lstm = None
    if not args.no_peers:
        lstm = torch_lstm(model, args.threads)
        if lstm is not None:
            runners.update(crosssim_runners(lstm, x))
            runners.update(aihwkit_runners(lstm, x))
    medians = interleaved_medians(runners, args.repeat)
    t_ort = medians["onnxruntime"]
    threads = f"{args.threads} thread(s) each" if args.threads else "each library's default threads"
    print(f"LSTM input {args.inputs}, hidden {args.hidden}, batch {args.batch}, {args.steps} steps; {threads}")
    print(f"in-process, median of {args.repeat} interleaved runs:")
    for name, t in medians.items():
        print(f"  {name:<64} {1000 * t:9.1f} ms   {t / t_ort:6.2f}x onnxruntime")
    if not args.no_peers and args.read_noise_steps and lstm is not None:
        per_step = crosssim_read_noise_per_step(lstm, x, args.read_noise_steps)
        if per_step is not None:
            t = per_step * args.steps
            label = "CrossSim 3.2, as above + 2 % read noise per MVM"
            print(f"  {label:<64} {1000 * t:9.1f} ms   {t / t_ort:6.2f}x onnxruntime  (1 run of "
                  f"{args.read_noise_steps} steps, {1000 * per_step:.0f} ms per step, times {args.steps} steps)")
    missing = [p for p, mod in (("CrossSim", "simulator"), ("aihwkit", "aihwkit")) if not _importable(mod)]
    if missing and not args.no_peers:
        print(f"  (not installed: {', '.join(missing)}; see bench/README.md)")
    process = whole_process(folder, args.threads, args.process_repeat)
    p_ort = process["onnxruntime"]
    print(f"whole process (start, load, run once, write), median of {args.process_repeat}:")
    for name, t in process.items():
        print(f"  {name:<64} {1000 * t:9.1f} ms   {t / p_ort:6.2f}x onnxruntime")
    # Interleaved pairs, timed in CPU seconds of this process, so that load from other processes (the machine is
    # shared) does not enter; the overhead is the median of the per-pair ratios.
    plain = Simulator(compiled.image, SimulatorOptions("ideal"))
    pairs = []
    for _ in range(args.repeat):
        counted = Simulator(compiled.image, SimulatorOptions("ideal", counters=True))
        counted.plan()
        start = time.process_time()
        plain.run({"x": x})
        middle = time.process_time()
        counted.run({"x": x})
        pairs.append((middle - start, time.process_time() - middle))
    print(f"  ideal + counters: counters' overhead {statistics.median(c / p for p, c in pairs):.3f}x in CPU time "
          f"(median of {args.repeat} interleaved pairs)")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
