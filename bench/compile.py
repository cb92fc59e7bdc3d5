"""cimc compile time and memory against the I/O floor, for 2-layer LSTMs of growing hidden size.

    python bench/compile.py [--sizes 128 256 512 1024 2048] [--repeat 3] [--timing] [--memory]

Each model is a 2-layer LSTM with input = hidden (16 H^2 + 16 H weights, float32),
built with onnx.helper from seeded random weights. For each size, in fresh
processes, the script measures

* the compile: ``cimc compile MODEL.onnx -o MODEL.cimg`` (default pipeline, chip
  array count raised so that every size fits), wall time and peak resident memory;
* the I/O floor: ``onnx.load`` of the model plus ``np.savez`` of its weights to a
  file in the same folder, the least any compiler must do (read the model, write
  the weights);

and prints the medians of --repeat runs, their ratio, peak memory in MB and as a
multiple of the weight bytes, and the growth exponent k of a least-squares fit of
log(compile time) against log(weights): k = 1 is linear in the weights. With
--timing, one more compile of the largest size prints ``cimc compile --timing``'s
per-phase table, so that the same run says where the remaining time goes. CPU time
(user + system) is printed beside wall time, with its own ratio: on a shared
machine it is the steadier of the two. With --memory, one more compile of the
largest size, in a fresh process that runs the phases as ``cimc compile`` does
(import, passes, ``build_image(release=True)``, save), prints the resident set
after each phase, the peak within the phase (VmHWM is reset after each one) and
the peak so far, so that the same run says where the peak is.
Every child runs with compiled bytecode (``PYTHONPYCACHEPREFIX`` in this run's
folder, ``PYTHONDONTWRITEBYTECODE`` removed, one untimed compile first), as an
installed package does, so that no timed compile includes compiling cimc's sources.
Peak memory is ``ru_maxrss`` of the child process (``RUSAGE_CHILDREN`` read by a
small wrapper that runs nothing else), so it is the compile's own peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": status, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_mb": usage.ru_maxrss / 1024}))
"""

_FLOOR = """
import sys
import numpy as np, onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
np.savez(sys.argv[2], **{init.name: numpy_helper.to_array(init) for init in model.graph.initializer})
"""


_PHASES = """
import sys
from cimc.compiler import CompileOptions, build_image, compile_to_ir, image_provenance, pipeline_of
from cimc.hardware import load_hardware
from cimc.timing import Timing

def mb():  # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss (this bench's, holding the model)
    with open("/proc/self/status") as f:
        kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in ("VmRSS", "VmHWM")}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

def reset_peak():  # "5" resets VmHWM to the current RSS (Linux >= 4.0), so that each row's peak is its own phase's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

class Resident(Timing):
    overall = phase_peak = 0.0

    def add(self, name, seconds):
        super().add(name, seconds)
        rss, peak = mb()
        self.phase_peak, self.overall = max(self.phase_peak, peak), max(self.overall, peak)
        if name != "(verify)":  # a verifier run's peak counts in the next phase's row
            print("  %-18s %8.0f %8.0f %8.0f" % (name, rss, self.phase_peak, self.overall), flush=True)
            self.phase_peak = 0.0
        reset_peak()

model, hw_path, out = sys.argv[1:4]
hw, timing = load_hardware(hw_path), Resident()
print("  %-18s %8s %8s %8s" % ("phase", "RSS MB", "in phase", "so far"))
print("  %-18s %8.0f %8.0f %8.0f" % (("(start)",) + mb() + mb()[1:]))
timing.overall = mb()[1]
reset_peak()
options = CompileOptions(timing=timing)
module = compile_to_ir(model, hw, options)
with timing.phase("build image"):
    image = build_image(module, hw, image_provenance(model, hw, pipeline_of(options)), release=True)
with timing.phase("write image"):
    image.save(out)
"""


def lstm_stack(hidden: int, layers: int = 2, seed: int = 0) -> onnx.ModelProto:
    """``layers`` stacked forward LSTMs, input = hidden, PyTorch-like uniform(+-1/sqrt(H)) weights."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(hidden)
    inits, nodes, x = [], [], "x"
    for layer in range(layers):
        for name, shape in ((f"W{layer}", (1, 4 * hidden, hidden)), (f"R{layer}", (1, 4 * hidden, hidden)),
                            (f"B{layer}", (1, 8 * hidden))):
            inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, size=shape).astype(np.float32), name))
        nodes.append(helper.make_node("LSTM", [x, f"W{layer}", f"R{layer}", f"B{layer}"], [f"Y{layer}", f"Y_h{layer}"],
                                      hidden_size=hidden, name=f"lstm{layer}"))
        if layer < layers - 1:
            inits.append(numpy_helper.from_array(np.array([1], np.int64), f"axis{layer}"))
            nodes.append(helper.make_node("Squeeze", [f"Y{layer}", f"axis{layer}"], [f"x{layer + 1}"]))
            x = f"x{layer + 1}"
    graph = helper.make_graph(nodes, "lstm_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", hidden])],
                              [helper.make_tensor_value_info(f"Y_h{layers - 1}", TensorProto.FLOAT, [1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def measure(*command: str) -> dict:
    """Run ``command`` in a child of a fresh wrapper process; its wall time and peak RSS."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["status"] != 0:
        raise SystemExit(f"failed ({result['status']}): {' '.join(command)}\n{out.stderr}")
    return result


def cimc_script() -> str:
    script = Path(sys.executable).with_name("cimc")
    if not script.exists():
        raise SystemExit(f"no cimc script next to {sys.executable}: run this with the venv's python")
    return str(script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timing", action="store_true", help="print the per-phase table of one compile of the largest size")
    parser.add_argument("--memory", action="store_true", help="print the resident set after each phase of one compile "
                        "of the largest size")
    args = parser.parse_args()
    if args.repeat < 1 or min(args.sizes) < 1:
        parser.error("--repeat and every --sizes value must be at least 1")
    cimc = cimc_script()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Children run with compiled bytecode, as an installed package does: an environment that forbids it
        # (PYTHONDONTWRITEBYTECODE) would add the compiling of cimc's sources to every timed compile. One untimed
        # compile of the first size writes the bytecode.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        hw = folder / "hw.toml"
        hw.write_text("[array]\ncount = 1000000\n")
        rows: list[tuple[int, float, float]] = []
        print(f"{'hidden':>7} {'weights':>11} {'weight MB':>10} {'compile s':>10} {'floor s':>8} {'ratio':>6} "
              f"{'cpu s':>7} {'floor cpu':>9} {'cpu ratio':>9} {'peak MB':>8} {'peak/weights':>13} {'image MB':>9}")
        for hidden in args.sizes:
            model = folder / f"lstm{hidden}.onnx"
            proto = lstm_stack(hidden)
            weights = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == TensorProto.FLOAT)
            onnx.save(proto, model)
            del proto
            image, floor_out = folder / f"lstm{hidden}.cimg", folder / f"lstm{hidden}.npz"
            compiles, floors = [], []
            if hidden == args.sizes[0]:
                measure(cimc, "compile", str(model), "--hw", str(hw), "-o", str(image))
                measure(sys.executable, "-c", _FLOOR, str(model), str(floor_out))
            for _ in range(args.repeat):  # interleaved, so that machine load hits both alike
                compiles.append(measure(cimc, "compile", str(model), "--hw", str(hw), "-o", str(image)))
                floors.append(measure(sys.executable, "-c", _FLOOR, str(model), str(floor_out)))
            t = statistics.median(c["seconds"] for c in compiles)
            floor = statistics.median(f["seconds"] for f in floors)
            cpu = statistics.median(c["cpu_seconds"] for c in compiles)
            floor_cpu = statistics.median(f["cpu_seconds"] for f in floors)
            peak = statistics.median(c["peak_mb"] for c in compiles)
            weight_mb = 4 * weights / 2**20
            rows.append((weights, t, cpu))
            print(f"{hidden:>7} {weights:>11,} {weight_mb:>10.1f} {t:>10.2f} {floor:>8.3f} {t / floor:>6.1f} "
                  f"{cpu:>7.2f} {floor_cpu:>9.3f} {cpu / floor_cpu:>9.1f} "
                  f"{peak:>8.0f} {peak / weight_mb:>13.1f} {image.stat().st_size / 2**20:>9.0f}", flush=True)
            if args.timing and hidden == args.sizes[-1]:
                out = subprocess.run([cimc, "compile", str(model), "--hw", str(hw), "-o", str(image), "--timing"],
                                     capture_output=True, text=True, check=True)
                table = out.stderr[out.stderr.index("==="):] if "===" in out.stderr else out.stderr
                print(f"cimc compile --timing, hidden {hidden}:\n{table}", end="")
            if args.memory and hidden == args.sizes[-1]:
                out = subprocess.run([sys.executable, "-c", _PHASES, str(model), str(hw), str(image)],
                                     capture_output=True, text=True, check=True)
                print(f"resident memory by phase, hidden {hidden} ({weight_mb:.1f} MB of weights):\n{out.stdout}", end="")
            for path in (model, image, floor_out):
                path.unlink()
    if len(rows) > 1:
        logw = np.log([r[0] for r in rows])
        k_wall = np.polyfit(logw, np.log([r[1] for r in rows]), 1)[0]
        k_cpu = np.polyfit(logw, np.log([r[2] for r in rows]), 1)[0]
        print(f"growth: compile time ~ weights^{k_wall:.2f} (wall), weights^{k_cpu:.2f} (cpu); 1.00 = linear in the weights")


if __name__ == "__main__":
    main()
