"""cimc compile time against the I/O floor, for single-layer LSTMs of growing hidden size.

    python bench/compile.py [--sizes 128 256 512 1024 2048] [--repeat 1]

For each size (input = hidden, so 8 H^2 weights) a fresh process runs
``cimc compile MODEL.onnx -o MODEL.cimg`` with enough arrays on the chip, and
another measures the I/O floor: ``onnx.load`` of the model plus ``np.save``
of its weights. The script prints both times (median of --repeat), their
ratio, each compile's peak resident memory, and the growth exponent k of a
least-squares fit time ~ H^k.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from simulate import lstm_model  # noqa: E402

_COMPILE = """
import json, resource, sys, time
from cimc.cli import main
start = time.perf_counter()
status = main(["compile", sys.argv[1], "--hw", sys.argv[2], "-o", sys.argv[3]])
elapsed = time.perf_counter() - start
print(json.dumps({"status": status, "seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_FLOOR = """
import io, json, sys, time
import numpy as np, onnx
from onnx import numpy_helper
start = time.perf_counter()
model = onnx.load(sys.argv[1])
buffer = io.BytesIO()
for init in model.graph.initializer:
    np.save(buffer, numpy_helper.to_array(init))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    hw = folder / "hw.toml"
    hw.write_text("[array]\ncount = 1000000\n")
    rows = []
    print(f"{'hidden':>7} {'weights':>10} {'compile s':>10} {'I/O floor s':>12} {'ratio':>7} {'peak MB':>8} {'image MB':>9}")
    for hidden in args.sizes:
        model = folder / f"lstm{hidden}.onnx"
        onnx.save(lstm_model(hidden, hidden), model)
        image = folder / f"lstm{hidden}.cimg"
        compiles = [run(_COMPILE, str(model), str(hw), str(image)) for _ in range(args.repeat)]
        floors = [run(_FLOOR, str(model))["seconds"] for _ in range(args.repeat)]
        if any(c["status"] != 0 for c in compiles):
            raise SystemExit(f"compile failed for hidden {hidden}")
        t = statistics.median(c["seconds"] for c in compiles)
        floor = statistics.median(floors)
        peak = max(c["peak_mb"] for c in compiles)
        rows.append((hidden, t))
        print(f"{hidden:>7} {8 * hidden * hidden:>10} {t:>10.2f} {floor:>12.3f} {t / floor:>7.0f} {peak:>8.0f} "
              f"{image.stat().st_size / 2**20:>9.0f}", flush=True)
        image.unlink()
    h, t = np.log([r[0] for r in rows]), np.log([r[1] for r in rows])
    k = np.polyfit(h, t, 1)[0] if len(rows) > 1 else float("nan")
    print(f"growth: compile time ~ hidden^{k:.2f} (weights grow as hidden^2)")


if __name__ == "__main__":
    main()
