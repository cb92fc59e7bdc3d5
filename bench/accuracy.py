"""Accuracy of NL-ADC fusion per model and bit width, and the example accuracy tables.

    python bench/accuracy.py                # the NL-ADC table (ideal fidelity, ~15 s on 2 cores)
    python bench/accuracy.py --gain-rule    # also: KWS at 5 bits, noisy, largest ramp gain vs the gain closest to 1
    python bench/accuracy.py --examples     # also rerun each example's evaluate.py (noisy sweeps, ~8 min more)

The NL-ADC table compiles four models, each calibrated on its own calibration
data, for NL-ADC bits 3, 4, 5 and 8, and runs the image at ideal fidelity on
held-out inputs against onnxruntime's float result:

- examples/kws (keyword spotting, LSTM-32): top-1 accuracy on the 500 clips not in calib.npz;
- examples/charlm (character LM, LSTM-128): bits per character on eval columns 4..15
  (columns 0..3 calibrate);
- examples/torch_models/conv_lstm.onnx (PyTorch Conv1d + ReLU + LSTM-128 + Linear + Sigmoid) and
  bigru.onnx (PyTorch bidirectional GRU-48 + Linear + Tanh): calibrated on their 'x', evaluated
  on 'eval_x'; the metric is the fraction of the 0/1 targets 'eval_labels' decided right
  (cimc.labels: the Sigmoid's output above 0.5, the Tanh's, trained towards 2 t - 1, above 0).

Hardware: cimc's defaults (128 x 64 arrays) at 3, 4 and 5 bits; at 8 bits a ramp
needs 2^8 - 1 + 5 = 260 word lines, so 8 bits uses 512-row arrays (the only change).
Columns: activations fused / total (cim.activation ops before fusion), ramps and
their worst |INL| over all ramps, the gains used, the output error against
onnxruntime (max |err| and RMS err / RMS of the float output), and the metric.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import cimc
from cimc.compiler import CompileOptions, build_image, compile_to_ir, default_pipeline
from cimc.hardware import load_hardware
from cimc.labels import label_metrics, output_producers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BITS = (3, 4, 5, 8)


def _hw(bits: int, directory: Path) -> Path:
    path = directory / f"hw{bits}.toml"
    rows = "[array]\nrows = 512\n" if bits == 8 else ""
    path.write_text(f"{rows}[converters]\nnl_adc_bits = {bits}\n")
    return path


def _kws() -> dict:
    d = np.load(EXAMPLES / "kws" / "eval_set.npz")
    held_out = np.ones(len(d["y"]), bool)
    held_out[::6] = False  # calib.npz is every 6th clip
    return {"name": "kws (LSTM-32)", "model": EXAMPLES / "kws" / "kws_lstm.onnx", "calib": {"features": np.load(EXAMPLES / "kws" / "calib.npz")["features"]},
            "inputs": {"features": d["features"][:, held_out]}, "metric": ("accuracy", lambda out: float(np.mean(out.argmax(1) == d["y"][held_out])))}


def _charlm() -> dict:
    sys.path.insert(0, str(EXAMPLES / "charlm"))
    from float_eval import bits_per_char

    d = np.load(EXAMPLES / "charlm" / "eval_set.npz")
    return {"name": "charlm (LSTM-128)", "model": EXAMPLES / "charlm" / "charlm.onnx", "calib": {"ids": d["ids"][:, :4]},
            "inputs": {"ids": d["ids"][:, 4:]}, "metric": ("bpc", lambda out: bits_per_char(out, d["y"][:, 4:]))}


def _torch(name: str, title: str) -> dict:
    d = np.load(EXAMPLES / "torch_models" / f"{name}.npz")
    model = EXAMPLES / "torch_models" / f"{name}.onnx"
    producers = output_producers(onnx.load(model))
    return {"name": title, "model": model, "calib": {"x": d["x"]}, "inputs": {"x": d["eval_x"]},
            "metric": ("label accuracy", lambda out: label_metrics({"y": out}, d["eval_labels"], name, "y", producers).accuracy)}


def _row(case: dict, bits: int, tmp: Path, reference: np.ndarray) -> dict:
    calib = tmp / "calib.npz"
    np.savez(calib, **case["calib"])
    hardware = load_hardware(_hw(bits, tmp))
    # Compiled in two steps, as cimc.compile does, because why an activation stayed digital is the compiler's
    # (``fuse.reason`` in the IR): the image records only what the chip runs.
    module = compile_to_ir(case["model"], hardware, CompileOptions(calib=str(calib)))
    fused = int(module.attributes.get("fuse.activations", 0))  # type: ignore[arg-type]
    digital = [str(op.attributes.get("fuse.reason")) for op in module.walk() if op.name == "cim.activation"]
    model = cimc.CompiledModel(build_image(module, hardware, release=True))
    ramps = model.image.manifest["ramps"]
    out = next(iter(model.run(case["inputs"], fidelity="ideal").values())).astype(np.float64)
    err = out - reference
    row = {"bits": bits, "fused": fused, "total": fused + len(digital), "reasons": Counter(digital), "ramps": len(ramps),
           "worst_inl": max((float(r["inl_lsb"]) for r in ramps), default=0.0),
           "gains": sorted({float(r["gain"]) for r in ramps}),
           "max_err": float(np.abs(err).max()), "rel_rms": float(np.sqrt(np.mean(err**2) / np.mean(reference**2)))}
    if case["metric"]:
        row["metric"] = case["metric"][1](out)
    return row


def _reasons(reasons: Counter) -> str:
    """The table cell for why activations stayed digital: each reason's first clause (the summary of ``cimc compile``
    and ``fuse.reason`` give the rest), with the range of the best worst-case INL that was reached where one is given."""
    clauses: Counter = Counter()
    best: dict[str, list[float]] = {}
    for reason, n in reasons.items():
        head = re.sub(r"no ramp gain in \S+ realizes", "no ramp gain realizes", reason.split(":")[0])
        clauses[head] += n
        best.setdefault(head, []).extend(float(x) for x in re.findall(r"worst \|INL\| ([\d.]+) LSB", reason))
    cells = []
    for head, n in sorted(clauses.items()):
        inl = best[head]
        reached = f" (best reached {min(inl):.2f}–{max(inl):.2f} LSB)" if inl else ""
        cells.append(f"{n} x {head}{reached}")
    return "; ".join(cells) or "–"


def nl_adc_table() -> str:
    cases = [_kws(), _charlm(), _torch("conv_lstm", "torch Conv1d+LSTM-128"), _torch("bigru", "torch biGRU-48")]
    lines = ["| model | float | NL-ADC bits | activations fused | ramps (gains) | worst INL (LSB) | max \\|err\\| vs onnxruntime "
             "| rel. RMS err | ideal accuracy / bpc | kept digital because |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        sess = ort.InferenceSession(str(case["model"]), providers=["CPUExecutionProvider"])
        reference = sess.run(None, case["inputs"])[0].astype(np.float64)
        float_metric = f"{case['metric'][0]} {case['metric'][1](reference):.4g}" if case["metric"] else "–"
        for bits in BITS:
            with tempfile.TemporaryDirectory() as tmp:
                r = _row(case, bits, Path(tmp), reference)
            ramps = f"{r['ramps']} ({'/'.join(f'{g:g}' for g in r['gains'])})" if r["ramps"] else "0"
            inl = f"{r['worst_inl']:.2f}" if r["ramps"] else "–"
            reasons = _reasons(r["reasons"])
            metric = f"{r['metric']:.4g}" if "metric" in r else "–"
            lines.append(f"| {case['name']} | {float_metric} | {bits} | {r['fused']} / {r['total']} | {ramps} "
                         f"| {inl} | {r['max_err']:.3g} | {100 * r['rel_rms']:.2f} % | {metric} | {reasons} |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def gain_rule_comparison(seeds: int) -> str:
    """KWS at 5 bits on the default hardware: fuse-activation's gain_rule=largest against gain_rule=unity.

    Noisy fidelity (default non-idealities), one programmed chip per seed, on the held-out clips;
    mean and population std over the chips, plus the worst ideal INL over the ramps.
    """
    case = _kws()
    lines = ["| gain rule | gains used | worst ideal INL (LSB) | noisy accuracy, mean ± std over chips |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, **case["calib"])
        for rule in ("largest", "unity"):
            pipeline = default_pipeline(str(calib)).replace("fuse-activation{", f"fuse-activation{{gain_rule={rule} ")
            model = cimc.compile(case["model"], calib=calib, pipeline=pipeline)
            ramps = model.image.manifest["ramps"]
            accs = [case["metric"][1](next(iter(model.run(case["inputs"], fidelity="noisy", seed=s).values())))
                    for s in range(seeds)]
            lines.append(f"| {rule} | {'/'.join(f'{g:g}' for g in sorted({r['gain'] for r in ramps}))} "
                         f"| {max(r['inl_lsb'] for r in ramps):.2f} | {100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} % "
                         f"({seeds} chips) |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", action="store_true", help="also rerun examples/*/evaluate.py (noisy sweeps)")
    parser.add_argument("--gain-rule", action="store_true", help="also compare the ramp gain rules on KWS, noisy")
    parser.add_argument("--seeds", type=int, default=10, help="noisy runs (programmed chips) per setting for --gain-rule and --examples")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    print(nl_adc_table())
    if args.gain_rule:
        print(gain_rule_comparison(args.seeds))
    if args.examples:
        for example in ("kws", "charlm"):
            print(f"== {example}", flush=True)
            subprocess.run([sys.executable, str(EXAMPLES / example / "evaluate.py"), "--seeds", str(args.seeds)], check=True)


if __name__ == "__main__":
    main()
