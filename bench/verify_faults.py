"""`cimc verify --fidelity noisy` on faulty chips: what the fault-aware tolerance says, chip by chip.

    python bench/verify_faults.py            # KWS, default hardware, chips 0..5
    python bench/verify_faults.py --chips 10 # chips 0..9

For each chip S, on examples/kws/verify_inputs.npz (50 clips, 49 steps):

- plain: the plain image, the bound counting stuck devices from the rates alone;
- plain + measured: the same image with its own measurement of chip S (``--defects``): the bound counts
  the tester's stuck devices exactly;
- defect-aware + measured: the image compiled from that measurement, verified on chip S with it.

Printed per chip and case: PASS/FAIL, the worst err/bound of the enforced per-step rows, the relative RMS of
the bound on the LSTM cell state (carried #1) and the free-running argmax agreement with onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KWS = ROOT / "examples" / "kws"

import cimc  # noqa: E402
from cimc.backends.simulator import SimulatorOptions  # noqa: E402
from cimc.backends.tester import measure  # noqa: E402
from cimc.verification import verify_image  # noqa: E402


def row(label: str, seed: int, report) -> str:  # noqa: ANN001
    worst = max(o.worst_ratio for o in report.steps)
    cell = next(o for o in report.steps if o.name.endswith("carried #1"))
    agree = report.outputs[0].argmax_agreement
    return (f"| {seed} | {label} | {'PASS' if report.passed else 'FAIL'} | {worst:.3f} | {cell.bound_relative:.1%} | "
            f"{100 * agree:.0f} % |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=6, help="chips 0..N-1 (default 6)")
    args = parser.parse_args()
    if args.chips < 1:
        parser.error("--chips must be at least 1")
    model = KWS / "kws_lstm.onnx"
    inputs = dict(np.load(KWS / "verify_inputs.npz"))
    plain = cimc.compile(model, calib=KWS / "calib.npz")
    lines = ["| chip | image (bound) | result | worst err/bound | c bound (rel. RMS) | argmax agreement |",
             "|---|---|---|---|---|---|"]
    for seed in range(args.chips):
        m = measure(plain.image, "bench", seed)
        aware = cimc.compile(model, calib=KWS / "calib.npz", defects=m)
        options = SimulatorOptions("noisy", seed)
        for label, image, defects in (("plain (rates)", plain.image, None), ("plain (measured)", plain.image, m),
                                      ("defect-aware (measured)", aware.image, m)):
            lines.append(row(label, seed, verify_image(model, image, inputs, options=options, defects=defects)))
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
