"""Bits per character of the character LM on the crossbar, against the float model.

Compiles ``charlm.onnx`` with cimc for one hardware description per NL-ADC
resolution (3, 4, 5 and 8 bits; everything else fixed: 512 x 64 arrays, see
``hardware_toml``), runs the programming image on the simulator and reports
bits per character (bpc, lower is better):

- float: onnxruntime (``float_eval.py``);
- ``exact``: target conductances as floats, once, asserted equal to float;
- ``ideal``: programmed levels, DAC/ADC/NL-ADC codes, no randomness;
- ``noisy``: ``ideal`` plus programming/read noise and stuck devices, one
  programmed chip per seed, mean and sample standard deviation over seeds,
  on the held-out columns. Every multi-chip number comes from ``cimc.sweep``
  (what ``cimc sweep`` runs: one compile per bit width, cached, chips on a
  Dask LocalCluster), with the held-out columns as its inputs.

``eval_set.npz`` (16 columns of 128 characters) is the only text that ships
with the repository, so calibration uses its first 4 columns and the
reported bpc is over the other 12 columns (1 536 characters, 'held_out');
the bpc over all 16 columns is in ``results.json`` too ('all').

Besides the default compilation (calibrated, identity columns chosen by
cost), it tries what the compiler offers where bpc rises: tanh(c_t) digital
instead of through an identity column, analytic ranges instead of
calibration data, ramps accepted up to 2 LSB INL instead of 1, the default
128-row arrays, and which non-ideality costs the noisy bpc, and, at 5 bits,
which region's stuck-at faults (ramp, identity or weight columns) cost it
most. Writes ``results.json`` (sorted keys, deterministic) and ``bpc.png``
next to this file and prints markdown tables.

Run from the repository root:  .venv/bin/python examples/charlm/evaluate.py
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.diagnostics import CimcError
from cimc.sweep.cluster import open_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import crossbar_eval  # noqa: E402  (shared by both examples)
from crossbar_eval import chip_summary, chip_sweep, fusion_stats, hardware_toml, write_results  # noqa: E402
from float_eval import HERE, bits_per_char, load_eval_set, onnx_logits

MODEL = HERE / "charlm.onnx"
BITS = (3, 4, 5, 8)
INPUT = "ids"
OUTPUT = "logits"
CALIB_COLUMNS = 4  # eval_set.npz columns 0..3 calibrate; columns 4..15 are evaluated
NONIDEALITIES = crossbar_eval.NONIDEALITIES


def compile_model(bits: int, calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
                  nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> cimc.CompiledModel:
    return crossbar_eval.compile_model(MODEL, bits, calib, identity, array, nonideality, max_inl)


def metric(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """bpc over the held-out columns (the reported number) and over all 16 columns."""
    return {"held_out": round(bits_per_char(logits[:, CALIB_COLUMNS:], y[:, CALIB_COLUMNS:]), 6),
            "all": round(bits_per_char(logits, y), 6)}


def evaluate(client: object, models: dict[int, cimc.CompiledModel], x: np.ndarray, y: np.ndarray, seeds: list[int],
             calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
             nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> dict[int, dict]:
    """Per bit width: ideal bpc (held out and all columns, run here) and the chips' held-out bpc (``cimc.sweep`` on
    the held-out columns). The sweep compiles the same images on its workers: their SHA-256 and its ideal run must
    match the ones here."""
    held_x, held_y = x[:, CALIB_COLUMNS:], y[:, CALIB_COLUMNS:]
    chips = chip_sweep(client, MODEL, {INPUT: held_x}, held_y, list(models), seeds, calib, identity, array, nonideality,
                       max_inl)
    out = {}
    for bits, model in models.items():
        ideal = {"all": metric(model.run({INPUT: x}, fidelity="ideal")[OUTPUT], y)["all"],
                 "held_out": round(bits_per_char(model.run({INPUT: held_x}, fidelity="ideal")[OUTPUT], held_y), 6)}
        assert chips[bits]["image_sha256"] == hashlib.sha256(model.image.to_bytes()).hexdigest(), "sweep compiled another image"
        assert round(chips[bits]["ideal"]["bits_per_label"], 6) == ideal["held_out"], "the sweep's ideal run differs"
        out[bits] = {"ideal": ideal, "noisy": chip_summary(chips[bits]["chips"], "bits_per_label", "held_out")}
    return out


def stuck_fault_attribution(bits: int, identity: str, calib: Path, x: np.ndarray, y: np.ndarray, seeds: list[int]) -> dict:
    """Noisy bpc with the stuck-at faults of one kind of region undone (ramps, identity columns, weights).

    The same image is compiled for the default non-idealities and for stuck rates 0. Both
    simulators draw the same programming noise for a seed (the stuck draws happen either way),
    so copying one region's devices from the fault-free chip removes exactly its stuck devices.
    """
    faulty = compile_model(bits, calib, identity)
    clean = compile_model(bits, calib, identity, nonideality={"stuck_on_rate": 0.0, "stuck_off_rate": 0.0})
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
            logits = sim.run({INPUT: x[:, CALIB_COLUMNS:]})[OUTPUT]  # the sweep's inputs, so "none" is its chips
            per_seed.append({"bits_per_label": bits_per_char(logits, y[:, CALIB_COLUMNS:])})
        out[f"stuck faults undone in: {fix}"] = chip_summary(per_seed, "bits_per_label", "held_out")
    return out


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
    float_logits = onnx_logits(MODEL, x)
    results: dict = {
        "model": MODEL.name,
        "eval_set": (f"eval_set.npz x/y [{x.shape[0]}, {x.shape[1]}]: 'held_out' = bpc over columns {CALIB_COLUMNS}.."
                     f"{x.shape[1] - 1} ({x[:, CALIB_COLUMNS:].size} characters, the reported number); "
                     f"'all' = over all {x.size} characters"),
        "calibration": (f"eval_set.npz x[:, :{CALIB_COLUMNS}] ({INPUT} [{x.shape[0]}, {CALIB_COLUMNS}], {x.shape[0] * CALIB_COLUMNS} "
                        "characters), written to a temporary npz; the eval set is the only text in the repository"),
        "metric": "bits per character (mean -log2 p(next character)), lower is better",
        "seeds": seeds,
        "noisy_std": "sample standard deviation (ddof=1) over seeds; one seed = one programmed chip",
        "hardware_toml": {str(b): hardware_toml(b) for b in BITS},
        "float": metric(float_logits, y),
        "command": ".venv/bin/python examples/charlm/evaluate.py",
    }
    timings: dict[str, float] = {}
    with open_client(args.workers) as client, tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, **{INPUT: x[:, :CALIB_COLUMNS]})

        # exact fidelity must reproduce onnxruntime: a sanity check of the compiled image.
        t0 = time.perf_counter()
        model = compile_model(5, calib)
        exact_logits = model.run({INPUT: x}, fidelity="exact")[OUTPUT]
        diff = float(np.abs(exact_logits - float_logits).max())
        assert np.array_equal(exact_logits.argmax(-1), float_logits.argmax(-1)), "exact fidelity changed a prediction"
        assert diff <= 1e-4 * max(1.0, float(np.abs(float_logits).max())), f"exact fidelity differs from onnxruntime by {diff}"
        results["exact"] = {**metric(exact_logits, y), "bits": 5, "max_abs_logit_diff_vs_float": float(f"{diff:.1e}")}
        timings["exact"] = time.perf_counter() - t0

        # The sweep, and the compiler variants tried where bpc rises.
        variants = {
            "calib": (dict(calib=calib, identity="auto"), BITS),
            "calib, identity=digital": (dict(calib=calib, identity="digital"), BITS),
            "analytic ranges": (dict(calib=None, identity="auto"), BITS),
            "calib, identity=digital, max_inl=2": (dict(calib=calib, identity="digital", max_inl=2.0), (4, 5)),
        }
        results["variants"] = {
            "calib": "calibrated on columns 0-3; tanh(c_t) identity column per the cost model (identity=auto, the default)",
            "calib, identity=digital": "calibrated on columns 0-3; tanh(c_t) computed digitally (identity=digital)",
            "analytic ranges": "no calibration data: interval bounds (cimc's default without --calib)",
            "calib, identity=digital, max_inl=2": ("as 'calib, identity=digital', with fuse-activation{max_inl=2.0} "
                                                   "(default 1.0): ramps up to 2 LSB INL are used; only 4 and 5 bits "
                                                   "(3 bits fuse anyway, 8 bits are far above)"),
        }
        sweeps: dict = {}
        for name, (opts, bits_list) in variants.items():
            t0 = time.perf_counter()
            sweeps[name] = {}
            models = {}
            for bits in bits_list:  # compiled here too: the fusion statistics, and which widths compile at all
                try:
                    models[bits] = compile_model(bits, **opts)
                except CimcError as e:
                    sweeps[name][str(bits)] = {"error": e.message}
                    print(f"[{name}, {bits} bits] compile failed: {e.message}", file=sys.stderr)
            for bits, entry in evaluate(client, models, x, y, seeds, **opts).items():
                sweeps[name][str(bits)] = entry = {**fusion_stats(models[bits]), **entry}
                print(f"[{name}, {bits} bits] ideal {entry['ideal']['held_out']:.3f}, noisy "
                      f"{entry['noisy']['held_out']['mean']:.3f} +- {entry['noisy']['held_out']['std']:.3f} bpc",
                      file=sys.stderr, flush=True)
            timings[name] = time.perf_counter() - t0
        results["sweeps"] = sweeps

        # The default chip (128 x 64 arrays) at its default 5 bits, for comparison with the 512-row sweep.
        t0 = time.perf_counter()
        default_array = {"rows": 128, "cols": 64, "count": 64}
        model = compile_model(5, calib, array=default_array)
        results["default_arrays_5bit"] = {"array": "128 x 64 (cimc default), nl_adc_bits = 5", **fusion_stats(model),
                                          **evaluate(client, {5: model}, x, y, seeds, calib, array=default_array)[5]}
        timings["default arrays, 5 bits"] = time.perf_counter() - t0

        # Which non-ideality costs the noisy bpc: each one alone (5 bits, calibrated, tanh(c_t) digital),
        # and the stuck-at faults by region (5 bits, the default compilation).
        if not args.no_ablation:
            ablation: dict = {}
            for only in (None, *NONIDEALITIES):
                t0 = time.perf_counter()
                nonideality = {k: 0.0 for k in NONIDEALITIES if k != only}
                chips = chip_sweep(client, MODEL, {INPUT: x[:, CALIB_COLUMNS:]}, y[:, CALIB_COLUMNS:], [5], seeds, calib,
                                   "digital", nonideality=nonideality)
                ablation[f"identity=digital, {only or 'none'}"] = chip_summary(chips[5]["chips"], "bits_per_label",
                                                                               "held_out")
                timings[f"ablation {only}"] = time.perf_counter() - t0
            results["noisy_ablation_5bit"] = ablation
            results["noisy_ablation_note"] = ("noisy fidelity with only the named non-ideality enabled (the others set to 0 "
                                              "in [nonideality]); 'none': all four off. Defaults: "
                                              "program_noise_us 1.0, read_noise_rel 0.01, stuck_on_rate 0.001, stuck_off_rate 0.005")
            t0 = time.perf_counter()
            a = stuck_fault_attribution(5, "auto", calib, x, y, seeds)
            assert a["stuck faults undone in: none"] == results["sweeps"]["calib"]["5"]["noisy"], "attribution does not reproduce the sweep"
            results["stuck_fault_attribution_5bit"] = {"identity=auto": a}
            timings["stuck attribution"] = time.perf_counter() - t0

    write_results(results, args.out_dir, lambda r, path: plot(r, path, len(seeds)), "bpc.png",
                  tables(results, len(seeds)), t_start, timings)


def cell(e: dict) -> str:
    if "error" in e:
        return "compile fails"
    return f"{e['ideal']['held_out']:.3f} / {e['noisy']['held_out']['mean']:.3f} ± {e['noisy']['held_out']['std']:.3f}"


def tables(r: dict, n_seeds: int) -> str:
    lines = [f"float (onnxruntime): {r['float']['held_out']:.3f} bpc (all 16 columns: {r['float']['all']:.3f}); "
             f"exact fidelity: {r['exact']['held_out']:.3f} bpc (max |logit - float| {r['exact']['max_abs_logit_diff_vs_float']:.1e})",
             "",
             f"| NL-ADC bits | ideal (bpc) | noisy (bpc), mean ± std of {n_seeds} | fused / digital activations (NL-ADC converters) "
             "| ramp columns | worst ramp INL (LSB) | gate columns' G window used (median) | kept digital because |",
             "|---|---|---|---|---|---|---|---|"]
    for bits in BITS:
        e = r["sweeps"]["calib"][str(bits)]
        reasons = "; ".join(f"{n} × {why}" for why, n in e["digital_reasons"].items()) or "–"
        lines.append(f"| {bits} | {e['ideal']['held_out']:.3f} | {e['noisy']['held_out']['mean']:.3f} ± "
                     f"{e['noisy']['held_out']['std']:.3f} | {e['activations_fused']} / {e['activations_digital']} "
                     f"({e['nl_adc_ops']}) | {e['ramps']} | {e['worst_inl_lsb']:.2f} | {gates_window(e):.2f} | {reasons} |")
    lines += ["", "Compiler variants (bpc, ideal / noisy mean ± std):", "",
              "| variant | " + " | ".join(f"{b} bits" for b in BITS) + " |", "|---|" + "---|" * len(BITS)]
    for name, sweep in r["sweeps"].items():
        lines.append(f"| {name} | " + " | ".join(cell(sweep[str(b)]) if str(b) in sweep else "–" for b in BITS) + " |")
    d = r["default_arrays_5bit"]
    lines += ["", f"Default 128 x 64 arrays, 5 bits: {cell(d)} bpc (ideal / noisy), {d['activations_fused']} fused / "
              f"{d['activations_digital']} digital, {d['ramps']} ramps, worst INL {d['worst_inl_lsb']:.2f} LSB"]
    if "noisy_ablation_5bit" in r:
        lines += ["", "Noisy bpc at 5 bits (tanh(c_t) digital) with one non-ideality at a time:", "",
                  "| enabled | bpc |", "|---|---|"]
        for only in ("none", *NONIDEALITIES):
            c = r["noisy_ablation_5bit"][f"identity=digital, {only}"]["held_out"]
            lines.append(f"| {only} | {c['mean']:.3f} ± {c['std']:.3f} |")
        lines += ["", "Noisy bpc at 5 bits (default compilation), all non-idealities on, with the stuck-at faults of one "
                  "region undone:", "", "| stuck faults undone in | bpc |", "|---|---|"]
        for key, v in r["stuck_fault_attribution_5bit"]["identity=auto"].items():
            lines.append(f"| {key.split(': ')[1]} | {v['held_out']['mean']:.3f} ± {v['held_out']['std']:.3f} |")
    return "\n".join(lines)


def gates_window(entry: dict) -> float:
    return min(v for k, v in entry["g_window_used_median"].items() if k.endswith(".gates"))


def plot(r: dict, path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    ax.axhline(r["float"]["held_out"], color="black", lw=1, ls="--", label="float (onnxruntime)")
    styles = {"calib": ("tab:blue", "-"), "calib, identity=digital": ("tab:orange", ":")}
    for name, (color, ls) in styles.items():
        sweep = r["sweeps"][name]
        bits = [b for b in BITS if str(b) in sweep and "error" not in sweep[str(b)]]
        ideal = [sweep[str(b)]["ideal"]["held_out"] for b in bits]
        mean = np.array([sweep[str(b)]["noisy"]["held_out"]["mean"] for b in bits])
        std = np.array([sweep[str(b)]["noisy"]["held_out"]["std"] for b in bits])
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
    ax.set_ylabel(f"bits per character, eval_set.npz columns {CALIB_COLUMNS}-15")
    ax.set_title("Char LM (LSTM 128) on the crossbar (512 x 64 arrays)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
