"""Accuracy of the keyword-spotting LSTM on the crossbar, against the float model.

Compiles ``kws_lstm.onnx`` with cimc for one hardware description per NL-ADC
resolution (3, 4, 5 and 8 bits; everything else fixed: 512 x 64 arrays, see
``hardware_toml``), runs the programming image on the simulator over
``eval_set.npz`` (all 600 clips) and reports top-1 accuracy:

- float: onnxruntime (``float_eval.py``);
- ``exact``: target conductances as floats, once, asserted equal to float;
- ``ideal``: programmed levels, DAC/ADC/NL-ADC codes, no randomness;
- ``noisy``: ``ideal`` plus programming/read noise and stuck devices, one
  programmed chip per seed, mean and sample standard deviation over seeds.
  Every multi-chip number comes from ``cimc.sweep`` (what ``cimc sweep`` runs:
  one compile per bit width, cached, chips on a Dask LocalCluster); the main
  table is ``cimc sweep ... --hw examples/crossbar_512x64.toml --bits 3,4,5,8
  --seeds 0:10`` (README).

Besides the default compilation (calibrated on ``calib.npz``, identity
columns chosen by cost), it tries what the compiler offers where accuracy
drops: tanh(c_t) digital instead of through an identity column, analytic
ranges instead of calibration data (and, since those fail on this model,
calibration on synthetic inputs made from the model's own normalization
constants), the default 128-row arrays, and which non-ideality costs the
noisy accuracy, and, at 5 bits, which region's stuck-at faults (ramp,
identity or weight columns) cost it most. Writes ``results.json`` (sorted
keys, deterministic) and ``accuracy.png`` next to this file and prints
markdown tables.

Run from the repository root:  .venv/bin/python examples/kws/evaluate.py
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.diagnostics import CimcError
from cimc.sweep.cluster import open_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import crossbar_eval  # noqa: E402  (shared by both examples)
from crossbar_eval import chip_summary, chip_sweep, fusion_stats, hardware_toml, write_results  # noqa: E402
from float_eval import HERE, load_eval_set, onnx_logits

MODEL = HERE / "kws_lstm.onnx"
CALIB = HERE / "calib.npz"  # features [49, 100, 40] = eval_set.npz clips 0, 6, 12, ...
BITS = (3, 4, 5, 8)
INPUT = "features"
OUTPUT = "logits"
NONIDEALITIES = crossbar_eval.NONIDEALITIES


def compile_model(bits: int, calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
                  nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> cimc.CompiledModel:
    return crossbar_eval.compile_model(MODEL, bits, calib, identity, array, nonideality, max_inl)


def accuracy(logits: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    hit = logits.argmax(1) == y
    return {"all": round(float(hit.mean()), 6), "held_out": round(float(hit[mask].mean()), 6)}


def evaluate(client: object, models: dict[int, cimc.CompiledModel], x: np.ndarray, y: np.ndarray, mask: np.ndarray,
             seeds: list[int], calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
             nonideality: dict[str, float] | None = None) -> dict[int, dict]:
    """Per bit width: ideal accuracy (all clips and held out, run here) and the chips' accuracy (``cimc.sweep``).

    The sweep compiles the same images on its workers: their SHA-256 and its ideal run must match the ones here."""
    chips = chip_sweep(client, MODEL, {INPUT: x}, y, list(models), seeds, calib, identity, array, nonideality)
    out = {}
    for bits, model in models.items():
        ideal = accuracy(model.run({INPUT: x}, fidelity="ideal")[OUTPUT], y, mask)
        assert chips[bits]["image_sha256"] == hashlib.sha256(model.image.to_bytes()).hexdigest(), "sweep compiled another image"
        assert round(chips[bits]["ideal"]["accuracy"], 6) == ideal["all"], "the sweep's ideal run differs"
        out[bits] = {"ideal": ideal, "noisy": chip_summary(chips[bits]["chips"], "accuracy", "all")}
    return out


def stuck_fault_attribution(bits: int, identity: str, x: np.ndarray, y: np.ndarray, mask: np.ndarray,
                            seeds: list[int]) -> dict:
    """Noisy accuracy with the stuck-at faults of one kind of region undone (ramps, identity columns, weights).

    The same image is compiled for the default non-idealities and for stuck rates 0. Both
    simulators draw the same programming noise for a seed (the stuck draws happen either way),
    so copying one region's devices from the fault-free chip removes exactly its stuck devices.
    """
    faulty = compile_model(bits, CALIB, identity)
    clean = compile_model(bits, CALIB, identity, nonideality={"stuck_on_rate": 0.0, "stuck_off_rate": 0.0})
    assert all(np.array_equal(faulty.image.device_levels(k), clean.image.device_levels(k)) for k in faulty.image.arrays)
    hw = faulty.image.hardware.array
    masks: dict[str, dict[int, np.ndarray]] = {"ramp columns": {}, "identity columns": {}, "weight columns": {}}
    for info in faulty.image.manifest["arrays"]:
        for region in info["regions"]:
            kind = ("ramp columns" if region["kind"] == "ramp" else
                    "identity columns" if str(region.get("block", "")).endswith(".identity") else "weight columns")
            m = masks[kind].setdefault(info["index"], np.zeros((hw.rows, hw.cols), bool))
            m[slice(*region["word_lines"]), slice(*region["bit_lines"])] = True
    out = {}
    for fix in ("none", *masks, "all"):
        per_seed = []
        for seed in seeds:
            sim = Simulator(faulty.image, SimulatorOptions("noisy", seed))
            if fix != "none":
                ref = Simulator(clean.image, SimulatorOptions("noisy", seed))
                for kind, arrays in masks.items():
                    if fix in (kind, "all"):
                        for k, m in arrays.items():
                            sim.devices[k] = np.where(m, ref.devices[k], sim.devices[k])
            per_seed.append({"accuracy": accuracy(sim.run({INPUT: x})[OUTPUT], y, mask)["all"]})
        out[f"stuck faults undone in: {fix}"] = chip_summary(per_seed, "accuracy", "all")
    return out


def synthetic_calibration(path: Path, steps: int, clips: int, seed: int = 0) -> str:
    """Gaussian inputs with the per-feature mean and std the model normalizes with (no data used)."""
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(MODEL)).graph.initializer}
    mean, std = init["mean"].astype(np.float32), init["std"].astype(np.float32)
    rng = np.random.default_rng(seed)
    x = (mean + std * rng.standard_normal((steps, clips, mean.size))).astype(np.float32)
    np.savez(path, **{INPUT: x})
    return f"{INPUT} [{steps}, {clips}, {mean.size}] ~ N(mean, std) from the model's 'mean'/'std' initializers, seed {seed}"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="noisy runs (programmed chips), seeds 0..N-1")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--no-ablation", action="store_true", help="only the main sweep and the compiler variants")
    parser.add_argument("--workers", type=int, help="Dask LocalCluster worker processes (default: the CPU count)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    seeds = list(range(args.seeds))
    x, y = load_eval_set(HERE / "eval_set.npz")
    calib_x = np.load(CALIB)[INPUT]
    held_out = np.ones(len(y), bool)
    held_out[::6] = False  # calib.npz is every 6th clip of eval_set.npz
    assert np.array_equal(calib_x, x[:, ~held_out]), "calib.npz is expected to be eval_set.npz[:, ::6]"

    float_logits = onnx_logits(MODEL, x)
    float_acc = accuracy(float_logits, y, held_out)
    results: dict = {
        "model": MODEL.name,
        "eval_set": f"eval_set.npz, all {len(y)} clips ('all'); 'held_out': the {int(held_out.sum())} clips not in calib.npz",
        "calibration": f"calib.npz: {INPUT} {list(calib_x.shape)}, eval_set.npz clips 0, 6, 12, ... (100 of the 600)",
        "metric": "top-1 accuracy",
        "seeds": seeds,
        "noisy_std": "sample standard deviation (ddof=1) over seeds; one seed = one programmed chip",
        "hardware_toml": {str(b): hardware_toml(b) for b in BITS},
        "float": float_acc,
        "command": ".venv/bin/python examples/kws/evaluate.py",
    }
    timings: dict[str, float] = {}
    with open_client(args.workers) as client:
        run_all(client, args, results, timings, x, y, held_out, calib_x, float_logits, seeds)
    write_results(results, args.out_dir, lambda r, path: plot(r, path, len(seeds)), "accuracy.png",
                  tables(results, len(seeds)), t_start, timings)


def run_all(client: object, args: argparse.Namespace, results: dict, timings: dict[str, float], x: np.ndarray,
            y: np.ndarray, held_out: np.ndarray, calib_x: np.ndarray, float_logits: np.ndarray, seeds: list[int]) -> None:
    """Every measurement, into ``results`` (the chips on ``client``)."""
    # exact fidelity must reproduce onnxruntime: a sanity check of the compiled image.
    t0 = time.perf_counter()
    model = compile_model(5, CALIB)
    exact_logits = model.run({INPUT: x}, fidelity="exact")[OUTPUT]
    diff = float(np.abs(exact_logits - float_logits).max())
    assert np.array_equal(exact_logits.argmax(1), float_logits.argmax(1)), "exact fidelity changed a prediction"
    assert diff <= 1e-4 * max(1.0, float(np.abs(float_logits).max())), f"exact fidelity differs from onnxruntime by {diff}"
    results["exact"] = {**accuracy(exact_logits, y, held_out), "bits": 5, "max_abs_logit_diff_vs_float": float(f"{diff:.1e}")}
    timings["exact"] = time.perf_counter() - t0

    # The sweep, and the compiler variants tried where accuracy drops.
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synthetic_calib.npz"
        synth_note = synthetic_calibration(synth, *calib_x.shape[:2])
        variants = {
            "calib": dict(calib=CALIB, identity="auto"),
            "calib, identity=digital": dict(calib=CALIB, identity="digital"),
            "analytic ranges": dict(calib=None, identity="auto"),
            "synthetic calib": dict(calib=synth, identity="auto"),
        }
        results["variants"] = {
            "calib": "calibrated on calib.npz; tanh(c_t) identity column per the cost model (identity=auto, the default)",
            "calib, identity=digital": "calibrated on calib.npz; tanh(c_t) computed digitally (identity=digital)",
            "analytic ranges": "no calibration data: interval bounds, inputs assumed within +-1 (cimc's default without --calib)",
            "synthetic calib": f"calibrated on synthetic data, no clip used: {synth_note}",
        }
        sweeps: dict = {}
        for name, opts in variants.items():
            t0 = time.perf_counter()
            sweeps[name] = {}
            models = {}
            for bits in BITS:  # compiled here too: the fusion statistics, and which widths compile at all
                try:
                    models[bits] = compile_model(bits, **opts)
                except CimcError as e:
                    sweeps[name][str(bits)] = {"error": e.message}
                    print(f"[{name}, {bits} bits] compile failed: {e.message}", file=sys.stderr)
            for bits, entry in evaluate(client, models, x, y, held_out, seeds, opts["calib"], opts["identity"]).items():
                sweeps[name][str(bits)] = entry = {**fusion_stats(models[bits]), **entry}
                print(f"[{name}, {bits} bits] ideal {pct(entry['ideal']['all'])} %, noisy "
                      f"{pct(entry['noisy']['all']['mean'])} +- {pct(entry['noisy']['all']['std'])} %",
                      file=sys.stderr, flush=True)
            timings[name] = time.perf_counter() - t0
        results["sweeps"] = sweeps

        # The default chip (128 x 64 arrays) at its default 5 bits, for comparison with the 512-row sweep.
        t0 = time.perf_counter()
        default_array = {"rows": 128, "cols": 64, "count": 64}
        model = compile_model(5, CALIB, array=default_array)
        results["default_arrays_5bit"] = {"array": "128 x 64 (cimc default), nl_adc_bits = 5", **fusion_stats(model),
                                          **evaluate(client, {5: model}, x, y, held_out, seeds, CALIB,
                                                     array=default_array)[5]}
        timings["default arrays, 5 bits"] = time.perf_counter() - t0

    # Which non-ideality costs the noisy accuracy: each one alone (5 bits, calibrated), for both identity choices.
    if not args.no_ablation:
        ablation: dict = {}
        for identity in ("auto", "digital"):
            for only in (None, *NONIDEALITIES):
                t0 = time.perf_counter()
                nonideality = {k: 0.0 for k in NONIDEALITIES if k != only}
                chips = chip_sweep(client, MODEL, {INPUT: x}, y, [5], seeds, CALIB, identity, nonideality=nonideality)
                ablation[f"identity={identity}, {only or 'none'}"] = chip_summary(chips[5]["chips"], "accuracy", "all")
                timings[f"ablation identity={identity}, {only}"] = time.perf_counter() - t0
        results["noisy_ablation_5bit"] = ablation
        attribution = {}
        for identity, sweep in (("auto", "calib"), ("digital", "calib, identity=digital")):
            t0 = time.perf_counter()
            attribution[f"identity={identity}"] = a = stuck_fault_attribution(5, identity, x, y, held_out, seeds)
            assert a["stuck faults undone in: none"] == results["sweeps"][sweep]["5"]["noisy"], "attribution does not reproduce the sweep"
            timings[f"stuck attribution identity={identity}"] = time.perf_counter() - t0
        results["stuck_fault_attribution_5bit"] = attribution
        results["noisy_ablation_note"] = ("noisy fidelity with only the named non-ideality enabled (the others set to 0 "
                                          "in [nonideality]); 'none': all four off. Defaults: "
                                          "program_noise_us 1.0, read_noise_rel 0.01, stuck_on_rate 0.001, stuck_off_rate 0.005")


def tables(r: dict, n_seeds: int) -> str:
    f = r["float"]["all"]
    lines = [f"float (onnxruntime): {pct(f)} %; exact fidelity: {pct(r['exact']['all'])} % "
             f"(max |logit - float| {r['exact']['max_abs_logit_diff_vs_float']:.1e})", "",
             f"| NL-ADC bits | ideal (%) | noisy (%), mean ± std of {n_seeds} | fused / digital activations (NL-ADC converters) "
             "| ramp columns | worst ramp INL (LSB) | gate columns' G window used (median) | kept digital because |",
             "|---|---|---|---|---|---|---|---|"]
    for bits in BITS:
        e = r["sweeps"]["calib"][str(bits)]
        reasons = "; ".join(f"{n} × {why}" for why, n in e["digital_reasons"].items()) or "–"
        lines.append(f"| {bits} | {pct(e['ideal']['all'])} | {pct(e['noisy']['all']['mean'])} ± {pct(e['noisy']['all']['std'])} "
                     f"| {e['activations_fused']} / {e['activations_digital']} ({e['nl_adc_ops']}) | {e['ramps']} "
                     f"| {e['worst_inl_lsb']:.2f} | {gates_window(e):.2f} | {reasons} |")
    lines += ["", "Compiler variants (ideal / noisy mean ± std, %):", "",
              "| variant | " + " | ".join(f"{b} bits" for b in BITS) + " |", "|---|" + "---|" * len(BITS)]
    for name, sweep in r["sweeps"].items():
        cells = []
        for bits in BITS:
            e = sweep[str(bits)]
            cells.append("compile fails" if "error" in e else
                         f"{pct(e['ideal']['all'])} / {pct(e['noisy']['all']['mean'])} ± {pct(e['noisy']['all']['std'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    d = r["default_arrays_5bit"]
    lines += ["", f"Default 128 x 64 arrays, 5 bits: ideal {pct(d['ideal']['all'])} %, noisy {pct(d['noisy']['all']['mean'])} "
              f"± {pct(d['noisy']['all']['std'])} %, {d['activations_fused']} fused / {d['activations_digital']} digital, "
              f"{d['ramps']} ramps, worst INL {d['worst_inl_lsb']:.2f} LSB"]
    if "noisy_ablation_5bit" in r:
        lines += ["", "Noisy accuracy at 5 bits with one non-ideality at a time (%):", "",
                  "| enabled | identity=auto | identity=digital |", "|---|---|---|"]
        for only in ("none", *NONIDEALITIES):
            cells = [r["noisy_ablation_5bit"][f"identity={i}, {only}"]["all"] for i in ("auto", "digital")]
            lines.append(f"| {only} | " + " | ".join(f"{pct(c['mean'])} ± {pct(c['std'])}" for c in cells) + " |")
        lines += ["", "Noisy accuracy at 5 bits, all non-idealities on, with the stuck-at faults of one region undone (%):", "",
                  "| stuck faults undone in | identity=auto | identity=digital |", "|---|---|---|"]
        for key in r["stuck_fault_attribution_5bit"]["identity=auto"]:
            cells = [r["stuck_fault_attribution_5bit"][f"identity={i}"][key]["all"] for i in ("auto", "digital")]
            lines.append(f"| {key.split(': ')[1]} | " + " | ".join(f"{pct(c['mean'])} ± {pct(c['std'])}" for c in cells) + " |")
    return "\n".join(lines)


def gates_window(entry: dict) -> float:
    return min(v for k, v in entry["g_window_used_median"].items() if k.endswith(".gates"))


def plot(r: dict, path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    ax.axhline(100 * r["float"]["all"], color="black", lw=1, ls="--", label="float (onnxruntime)")
    styles = {"calib": ("tab:blue", "-"), "calib, identity=digital": ("tab:orange", ":")}
    for name, (color, ls) in styles.items():
        sweep = r["sweeps"][name]
        bits = [b for b in BITS if "error" not in sweep[str(b)]]
        ideal = [100 * sweep[str(b)]["ideal"]["all"] for b in bits]
        mean = np.array([100 * sweep[str(b)]["noisy"]["all"]["mean"] for b in bits])
        std = np.array([100 * sweep[str(b)]["noisy"]["all"]["std"] for b in bits])
        ax.plot(bits, ideal, color=color, ls=ls, marker="o", label=f"ideal, {name}")
        ax.errorbar(bits, mean, yerr=std, color=color, ls=ls, marker="s", mfc="white", capsize=3,
                    label=f"noisy, {name} (mean ± std, {n_seeds} chips)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.15 * (hi - lo), hi)  # room for the labels below
    for bits in BITS:  # how many of the LSTM's activations are NL-ADCs in the default compilation
        e = r["sweeps"]["calib"][str(bits)]
        n = e["activations_fused"] + e["activations_digital"]
        ax.text(bits, 0.02, f"NL-ADC: {e['activations_fused']} of {n}\nactivations", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="tab:blue")
    ax.set_xticks(list(BITS))
    ax.set_xlim(2.3, 8.7)
    ax.set_xlabel("NL-ADC bits")
    ax.set_ylabel("top-1 accuracy on eval_set.npz (%)")
    ax.set_title("KWS LSTM on the crossbar (512 x 64 arrays)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
