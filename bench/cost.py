"""Cost against accuracy, and cimc's cost model beside the paper's Table 1 (docs/cost-model.md quotes the output).

    python bench/cost.py                  # ~1 min on 2 cores; writes docs/cost-accuracy.png
    python bench/cost.py --out DIR        # write the figure elsewhere

1. Accuracy against TOPS/W: each example recompiled at NL-ADC bits 3, 4, 5, 8 on the very hardware
   of its accuracy table (examples/*/results.json "hardware_toml": 512 x 64 arrays, 64 of them), costed
   by `cimc report`'s model, and paired with that table's ideal and noisy accuracy/bpc (on the held-out inputs where its noisy
   runs have them, else on all: KWS's noisy runs are over all 600 clips).
2. Table 1 beside cimc: the KWS-size LSTM (examples/kws: 40 inputs, 32 hidden, 9,216 weights) and the
   char-LM example at 5 and 8 bits, with the paper's precision (input DAC at the same width as the
   NL-ADC), per time step of the LSTM (the paper's throughput is per step): compiled at 5 bits on the
   512-row geometry and re-costed at 8 (`cimc report --bits 8 --dac-bits 8`).
3. The digital-activation penalty of a 512-unit LSTM layer with k = 32 lanes (paper Fig. 1c: 2-5x the
   analog MVM): a random-weight LSTM 128 -> 512 compiled at 5 and 8 bits, the ramp-ADC baseline's digital
   activation cycles per step against the MVM's read + conversion cycles.

Part 1 recompiles per width (accuracy needs each width's ramps; an 8-bit ramp needs 260+ rows); part 2
re-costs one mapping, so that the 8-bit row is an NL-ADC design as in the paper.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import cimc
from cimc.backends.cost.report import cost_report
from cimc.plots import new_figure, save_png

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BITS = (3, 4, 5, 8)
# [Yang25] Table 1 (16 nm, 1 GHz), docs/nl-adc.md section 5.
PAPER = {("kws", 5): {"tops": 0.11, "power_mw": 3.7, "tops_per_w": 31.0, "tops_per_mm2": 39.48, "area_mm2": 0.003},
         ("kws", 8): {"tops": 0.02, "power_mw": 4.6, "tops_per_w": 4.0, "tops_per_mm2": 6.1, "area_mm2": 0.003},
         ("charlm", 5): {"tops": 19.5, "power_mw": 406.5, "tops_per_w": 47.9, "tops_per_mm2": 27.6, "area_mm2": 0.71},
         ("charlm", 8): {"tops": 5.5, "power_mw": 766.8, "tops_per_w": 7.2, "tops_per_mm2": 7.8, "area_mm2": 0.71}}


def _cases(tmp: Path) -> dict[str, dict]:
    charlm_calib = tmp / "charlm_calib.npz"
    np.savez(charlm_calib, ids=np.load(EXAMPLES / "charlm" / "eval_set.npz")["ids"][:, :4])  # as evaluate.py
    return {"kws": {"model": EXAMPLES / "kws" / "kws_lstm.onnx", "calib": EXAMPLES / "kws" / "calib.npz", "seq_len": 49,
                    "results": json.loads((EXAMPLES / "kws" / "results.json").read_text())},
            "charlm": {"model": EXAMPLES / "charlm" / "charlm.onnx", "calib": charlm_calib, "seq_len": 16,
                       "results": json.loads((EXAMPLES / "charlm" / "results.json").read_text())}}


def _compile(case: dict, toml: str, tmp: Path, name: str):  # noqa: ANN202
    hw = tmp / f"{name}.toml"
    hw.write_text(toml)
    return cimc.compile(case["model"], hw=hw, calib=case["calib"]).image


def _noisy_subset(accuracy: dict) -> str:
    """The inputs the table's noisy runs were scored on: the held-out ones where it has them, else all (the KWS table's
    noisy runs are over all 600 clips, examples/kws/README.md); the ideal number is taken over the same ones."""
    return "held_out" if "held_out" in accuracy["noisy"] else "all"


def accuracy_vs_cost(cases: dict, tmp: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, case in cases.items():
        rows = []
        for bits in BITS:
            image = _compile(case, case["results"]["hardware_toml"][str(bits)], tmp, f"{name}{bits}")
            report = cost_report(image, case["seq_len"])
            acc = case["results"]["sweeps"]["calib"][str(bits)]
            clips = _noisy_subset(acc)
            rows.append({"bits": bits, "clips": clips, "ideal": acc["ideal"][clips], "noisy": acc["noisy"][clips]["mean"],
                         **{scheme: report["schemes"][scheme]["per_step"]["tops_per_w"] for scheme in report["schemes"]},
                         "fused": acc["activations_fused"]})
        out[name] = rows
    return out


def table1(cases: dict, tmp: Path) -> list[str]:
    lines = ["| model | bits | | peak TOPS | power (mW) | TOPS/W | area (mm²) | TOPS/mm² |", "|---|---|---|---|---|---|---|---|"]
    trend = {}
    for name, case in cases.items():
        # Compiled at 5 bits on the accuracy tables' 512-row arrays, re-costed at 8 (its ramps fit 512 rows): at 8 bits
        # fuse-activation keeps these models' activations digital (ramp INL), so a recompiled 8-bit image has no NL-ADC.
        image = _compile(case, case["results"]["hardware_toml"]["5"], tmp, f"{name}5")
        for bits in (5, 8):
            s = cost_report(image, case["seq_len"], bits=bits, dac_bits=bits)["schemes"]["nl_adc"]
            ours = {"tops": s["per_step"]["tops"], "power_mw": s["per_step"]["power_mw"],
                    "tops_per_w": s["per_step"]["tops_per_w"], "area_mm2": s["total"]["area_mm2"],
                    "tops_per_mm2": s["total"]["tops_per_mm2"]}
            trend[(name, bits)] = ours
            paper = PAPER[(name, bits)]
            for who, v in (("paper", paper), ("cimc", ours)):
                lines.append(f"| {name} | {bits} | {who} | {v['tops']:.3g} | {v['power_mw']:.3g} | {v['tops_per_w']:.3g} "
                             f"| {v['area_mm2']:.3g} | {v['tops_per_mm2']:.3g} |")
    lines.append("")
    for name in cases:
        for who, table in (("paper", PAPER), ("cimc", trend)):
            a, b = table[(name, 5)], table[(name, 8)]
            lines.append(f"{name} 5-bit / 8-bit, {who}: throughput {a['tops'] / b['tops']:.2f}x, "
                         f"TOPS/W {a['tops_per_w'] / b['tops_per_w']:.2f}x")
    return lines


def _lstm512(path: Path, inputs: int = 128, hidden: int = 512, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, 4 * hidden, inputs)) / np.sqrt(inputs)).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b = np.zeros((1, 8 * hidden), np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "h"], hidden_size=hidden, name="lstm512")
    graph = helper.make_graph([node], "lstm512", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", inputs])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", hidden])],
                              [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (("W", w), ("R", r), ("B", b))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def activation_penalty(tmp: Path) -> list[str]:
    model = tmp / "lstm512.onnx"
    _lstm512(model)
    calib = tmp / "lstm512_calib.npz"
    np.savez(calib, x=np.random.default_rng(1).uniform(-1, 1, (8, 4, 128)).astype(np.float32))
    lines = []
    for bits in (5, 8):
        hw = tmp / f"lstm512_{bits}.toml"
        hw.write_text(("[array]\nrows = 512\n" if bits == 8 else "") + f"[converters]\nnl_adc_bits = {bits}\n")
        image = cimc.compile(model, hw=hw, calib=calib).image
        report = cost_report(image, 8)
        for scheme in ("ramp_adc+digital", "sar_adc+digital"):
            step = report["schemes"][scheme]["per_step"]
            timeline = step["timeline"]
            mvm = sum(p["latency_ns"] for p in timeline if p["what"] in ("read", "nonlinear convert"))
            act = sum(p["latency_ns"] for p in timeline if p["what"] == "digital activation")
            lines.append(f"LSTM 128 -> 512, {bits}-bit, {scheme}: digital activations {act:.0f} ns per step vs analog MVM "
                         f"(reads + conversions of activation columns) {mvm:.0f} ns: {act / mvm:.1f}x; "
                         f"NL-ADC step {report['schemes']['nl_adc']['per_step']['latency_ns']:.0f} ns vs this baseline's "
                         f"{step['latency_ns']:.0f} ns")
    return lines


def plot(curves: dict[str, list[dict]], cases: dict, path: Path) -> None:
    """The NL-ADC design's accuracy (ideal and noisy, from the examples' tables) against its TOPS/W.

    The baselines are not drawn: their accuracy (linear ADC + digital activation) is not what the
    tables measured.
    """
    figure = new_figure()
    for i, (name, rows) in enumerate(curves.items()):
        axes = figure.add_subplot(1, len(curves), i + 1)
        x = [r["nl_adc"] for r in rows]
        axes.plot(x, [r["ideal"] for r in rows], marker="o", color="C0", label="ideal")
        axes.plot(x, [r["noisy"] for r in rows], marker="s", linestyle="--", color="C3", label="noisy (mean of 10 chips)")
        for r in rows:
            note = f"{r['bits']} b" + ("" if r["fused"] else " (digital)")
            for key in ("ideal", "noisy"):
                axes.annotate(note, (r["nl_adc"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        axes.set_xscale("log")
        axes.set_xlabel("TOPS/W of one time step (cimc report)")
        axes.set_ylabel(cases[name]["results"]["metric"].split(" (")[0])
        axes.set_title(name)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="x-small")
    figure.suptitle("accuracy against energy efficiency, NL-ADC bits 3, 4, 5, 8 (512 x 64 arrays)")
    figure.subplots_adjust(wspace=0.35)
    save_png(figure, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of cost-accuracy.png (default docs/)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = _cases(tmp)
        curves = accuracy_vs_cost(cases, tmp)
        print("| model | bits | inputs | ideal | noisy (mean of 10) | TOPS/W nl_adc | ramp_adc+digital | sar_adc+digital |")
        print("|---|---|---|---|---|---|---|---|")
        for name, rows in curves.items():
            for r in rows:
                print(f"| {name} | {r['bits']} | {r['clips'].replace('_', ' ')} | {r['ideal']:.4g} | {r['noisy']:.4g} | {r['nl_adc']:.4g} | "
                      f"{r['ramp_adc+digital']:.4g} | {r['sar_adc+digital']:.4g} |")
        args.out.mkdir(parents=True, exist_ok=True)
        plot(curves, cases, args.out / "cost-accuracy.png")
        print()
        print("\n".join(table1(cases, tmp)))
        print()
        print("\n".join(activation_penalty(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
