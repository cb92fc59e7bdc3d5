"""KWS accuracy and char-LM bits per character on faulty chips: plain mapping against defect-aware mapping.

    python bench/faults.py               # both models, 10 chips per stuck rate
    python bench/faults.py --chips 20 --models kws

For each model, each stuck rate (stuck-on / stuck-off: the defaults 0.1 % / 0.5 %, then
1 % / 1 % and 5 % / 5 %) and each chip S = 0 .. chips-1:

1. the plain image (5-bit NL-ADCs on the hardware of the examples' evaluate.py: 512 x 64
   arrays, with the default spare lines) is compiled once per rate;
2. the tester measures chip S with it (``backends/tester.py``: the march test, then the image
   read back; what ``cimc chip`` writes);
3. the defect-aware image is compiled from that measurement (``map-defects``: rows and columns
   assigned to physical lines, spares included, partner compensation, ramps re-synthesized);
4. both images run at ``noisy`` fidelity on chip S (``cimc run --fidelity noisy --seed S``: the
   same stuck devices, the same programming index 0).

KWS: top-1 accuracy over the 600 clips of examples/kws/eval_set.npz (higher is better).
char-LM: bits per character over the held-out columns 4..15 of examples/charlm/eval_set.npz
(1 536 characters; columns 0..3 calibrate, as in examples/charlm/evaluate.py; lower is better).
Printed: mean ± sample std and the worst chip, with float (onnxruntime) and ideal (no device
effects) for reference, as markdown tables. Every other non-ideality is the default
(write-verify: 1 uS per round, 10 rounds, 0.78 uS tolerance; read noise 1 %).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import cimc  # noqa: E402
import crossbar_eval  # noqa: E402
from cimc.backends.simulator import Simulator, SimulatorOptions  # noqa: E402
from cimc.backends.tester import measure  # noqa: E402

BITS = 5
RATES = ((0.001, 0.005), (0.01, 0.01), (0.05, 0.05))
CHARLM_CALIB_COLUMNS = 4  # as examples/charlm/evaluate.py


def _float_eval(example: str):  # noqa: ANN202  (a module: each example has its own float_eval.py)
    spec = importlib.util.spec_from_file_location(f"{example}_float_eval", ROOT / "examples" / example / "float_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Task:
    """One model: how to compile it, feed it and score its output (``higher``: whether larger is better)."""

    name: str
    model: Path
    calib: Path
    feeds: dict[str, np.ndarray]
    output: str
    score: Callable[[np.ndarray], float]
    float_score: float
    unit: str
    higher: bool


def kws_task(tmp: Path) -> Task:
    fe = _float_eval("kws")
    model = ROOT / "examples" / "kws" / "kws_lstm.onnx"
    x, y = fe.load_eval_set(ROOT / "examples" / "kws" / "eval_set.npz")

    def score(logits: np.ndarray) -> float:
        return 100.0 * float((logits.argmax(-1) == y).mean())

    return Task("KWS top-1 accuracy (%), 600 clips", model, ROOT / "examples" / "kws" / "calib.npz", {"features": x},
                "logits", score, score(fe.onnx_logits(model, x)), "%", True)


def charlm_task(tmp: Path) -> Task:
    fe = _float_eval("charlm")
    model = ROOT / "examples" / "charlm" / "charlm.onnx"
    x, y = fe.load_eval_set(ROOT / "examples" / "charlm" / "eval_set.npz")
    calib = tmp / "charlm_calib.npz"
    np.savez(calib, ids=x[:, :CHARLM_CALIB_COLUMNS])

    def score(logits: np.ndarray) -> float:
        return fe.bits_per_char(logits[:, CHARLM_CALIB_COLUMNS:], y[:, CHARLM_CALIB_COLUMNS:])

    return Task("char-LM bits per character, held-out columns 4..15 (1 536 characters)", model, calib, {"ids": x},
                "logits", score, score(fe.onnx_logits(model, x)), "bpc", False)


TASKS = {"kws": kws_task, "charlm": charlm_task}


def run(image: cimc.Image, task: Task, fidelity: str, seed: int = 0) -> float:
    return task.score(Simulator(image, SimulatorOptions(fidelity, seed)).run(task.feeds)[task.output])


def stats(values: list[float], higher: bool) -> str:
    v = np.array(values)
    worst = v.min() if higher else v.max()
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} (worst {worst:.2f})" if v.size > 1 else f"{v.mean():.2f}"


def table(task: Task, chips: int, tmp: Path) -> str:
    rows = []
    for on, off in RATES:
        hw = tmp / f"hw_{on}_{off}.toml"
        hw.write_text(crossbar_eval.hardware_toml(BITS, nonideality={"stuck_on_rate": on, "stuck_off_rate": off}))
        plain = cimc.compile(task.model, hw=hw, calib=task.calib)
        ideal = run(plain.image, task, "ideal")
        results: dict[str, list[float]] = {"plain": [], "defect-aware": []}
        for seed in range(chips):
            aware = cimc.compile(task.model, hw=hw, calib=task.calib, defects=measure(plain.image, "bench", seed))
            results["plain"].append(run(plain.image, task, "noisy", seed))
            results["defect-aware"].append(run(aware.image, task, "noisy", seed))
            print(f"{task.model.stem} stuck {on:.1%}/{off:.1%} chip {seed}: plain {results['plain'][-1]:.3f}, "
                  f"defect-aware {results['defect-aware'][-1]:.3f}", file=sys.stderr, flush=True)
        rows.append(f"| {on:.1%} / {off:.1%} | {ideal:.2f} | {stats(results['plain'], task.higher)} | "
                    f"{stats(results['defect-aware'], task.higher)} |")
    head = (f"{task.name}, {BITS}-bit NL-ADCs, {chips} chips per row; float {task.float_score:.2f} {task.unit} "
            f"({'higher' if task.higher else 'lower'} is better)\n\n"
            "| stuck on / off | ideal | plain mapping: mean ± std (worst) | defect-aware: mean ± std (worst) |\n"
            "|---|---|---|---|\n")
    return head + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=10)
    parser.add_argument("--models", nargs="+", choices=sorted(TASKS), default=["kws", "charlm"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(table(TASKS[name](Path(tmp)), args.chips, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
