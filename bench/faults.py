"""KWS accuracy on faulty chips: plain mapping against defect-aware mapping (cimc compile --defects).

    python bench/faults.py               # 10 chips per stuck rate, ~4 min on 2 cores
    python bench/faults.py --chips 20

For each stuck rate (stuck-on / stuck-off: the defaults 0.1 % / 0.5 %, then 1 % / 1 %
and 5 % / 5 %) and each chip S = 0 .. chips-1:

1. the plain image (examples/kws at 5-bit NL-ADCs, the hardware of examples/kws/evaluate.py:
   512 x 64 arrays) is compiled once per rate;
2. the tester measures chip S with it (``backends/tester.py``: the march test, then the image
   read back; what ``cimc chip`` writes);
3. the defect-aware image is compiled from that measurement (``map-defects``);
4. both images run at ``noisy`` fidelity on chip S (``cimc run --fidelity noisy --seed S``: the
   same stuck devices, the same programming index 0) over the 600 clips of eval_set.npz.

Printed: top-1 accuracy mean ± sample std and worst over the chips, with float (onnxruntime)
and ideal (no device effects) for reference, as a markdown table. Every other non-ideality is
the default (write-verify: 1 uS per round, 10 rounds, 0.78 uS tolerance; read noise 1 %).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KWS = ROOT / "examples" / "kws"
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(KWS))

import cimc  # noqa: E402
import crossbar_eval  # noqa: E402
from cimc.backends.simulator import Simulator, SimulatorOptions  # noqa: E402
from cimc.backends.tester import measure  # noqa: E402
from float_eval import load_eval_set, onnx_logits  # noqa: E402

MODEL, CALIB, BITS = KWS / "kws_lstm.onnx", KWS / "calib.npz", 5
RATES = ((0.001, 0.005), (0.01, 0.01), (0.05, 0.05))


def accuracy(image: cimc.Image, x: np.ndarray, y: np.ndarray, fidelity: str, seed: int = 0) -> float:
    logits = Simulator(image, SimulatorOptions(fidelity, seed)).run({"features": x})["logits"]
    return 100.0 * float((logits.argmax(-1) == y).mean())


def stats(values: list[float]) -> str:
    v = np.array(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} (worst {v.min():.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=10)
    args = parser.parse_args()
    x, y = load_eval_set(KWS / "eval_set.npz")
    float_acc = 100.0 * float((onnx_logits(MODEL, x).argmax(-1) == y).mean())
    rows = []
    for on, off in RATES:
        rates = {"stuck_on_rate": on, "stuck_off_rate": off}
        with tempfile.TemporaryDirectory() as tmp:
            hw = Path(tmp) / "hw.toml"
            hw.write_text(crossbar_eval.hardware_toml(BITS, nonideality=rates))
            plain = cimc.compile(MODEL, hw=hw, calib=CALIB)
            ideal = accuracy(plain.image, x, y, "ideal")
            results: dict[str, list[float]] = {"plain": [], "defect-aware": []}
            for seed in range(args.chips):
                measured = measure(plain.image, "bench", seed)
                aware = cimc.compile(MODEL, hw=hw, calib=CALIB, defects=measured)
                results["plain"].append(accuracy(plain.image, x, y, "noisy", seed))
                results["defect-aware"].append(accuracy(aware.image, x, y, "noisy", seed))
                print(f"stuck {on:.1%}/{off:.1%} chip {seed}: plain {results['plain'][-1]:.2f} %, "
                      f"defect-aware {results['defect-aware'][-1]:.2f} %", file=sys.stderr, flush=True)
        rows.append(f"| {on:.1%} / {off:.1%} | {ideal:.2f} | {stats(results['plain'])} | "
                    f"{stats(results['defect-aware'])} |")
    print(f"KWS top-1 accuracy (%), 5-bit NL-ADCs, {args.chips} chips per row, 600 clips; float {float_acc:.2f} %\n")
    print("| stuck on / off | ideal | plain mapping: mean ± std (worst) | defect-aware: mean ± std (worst) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
