"""What both examples' evaluate.py scripts share: the hardware, compiling, chip sweeps, and fusion statistics.

The scripts run as ``python examples/<name>/evaluate.py`` and put this folder on
``sys.path`` to import it. Every multi-chip number goes through ``cimc.sweep`` (the
``cimc sweep`` command's Python entry point): one compile per bit width (cached by
content hash), the chips fanned out over a Dask LocalCluster.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

import cimc
from cimc.compiler import default_pipeline
from cimc.hardware import Hardware, hardware_from_dict, load_hardware
from cimc.image import tile_weights
from cimc.sweep import sweep

# One geometry for the whole sweep: an 8-bit ramp needs 2^8 - 1 + 5 = 260 word lines (the file says so too).
HARDWARE_FILE = Path(__file__).resolve().with_name("crossbar_512x64.toml")
ARRAY: dict[str, int] = tomllib.loads(HARDWARE_FILE.read_text())["array"]
NONIDEALITIES = ("program_noise_us", "read_noise_rel", "stuck_on_rate", "stuck_off_rate")


def hardware_toml(bits: int, array: dict[str, int] | None = None, nonideality: dict[str, float] | None = None) -> str:
    """The override of cimc's default hardware description used for ``bits``."""
    lines = ["[array]"] + [f"{k} = {v}" for k, v in (array or ARRAY).items()]
    lines += ["", "[converters]", f"nl_adc_bits = {bits}"]
    if nonideality:
        lines += ["", "[nonideality]"] + [f"{k} = {v!r}" for k, v in nonideality.items()]
    return "\n".join(lines) + "\n"


def hardware(array: dict[str, int] | None = None, nonideality: dict[str, float] | None = None) -> Hardware:
    """cimc's default hardware with the examples' arrays (or ``array``) and ``nonideality`` overrides."""
    data = load_hardware().to_dict()
    data["array"].update(array or ARRAY)
    data["nonideality"].update(nonideality or {})
    return hardware_from_dict(data, "examples/crossbar_eval.py")


def pipeline_with_max_inl(calib: Path | None, identity: str, max_inl: float | None) -> str | None:
    """The default pipeline with fuse-activation's INL budget changed (None: the default pipeline, unchanged)."""
    if max_inl is None:
        return None
    pipeline = default_pipeline(str(Path(calib).resolve()) if calib else None, identity)
    assert "max_inl=1.0" in pipeline
    return pipeline.replace("max_inl=1.0", f"max_inl={max_inl!r}")


def compile_model(model: Path, bits: int, calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
                  nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> cimc.CompiledModel:
    """Compile ``model`` for the sweep's hardware at ``bits``; ``max_inl`` changes fuse-activation's INL budget."""
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hw.toml"
        hw.write_text(hardware_toml(bits, array, nonideality))
        return cimc.compile(model, hw=hw, calib=calib, identity=identity,
                            pipeline=pipeline_with_max_inl(calib, identity, max_inl))


def chip_sweep(client: object, model: Path, feeds: Mapping[str, np.ndarray], labels: np.ndarray, bits: Sequence[int],
               seeds: Sequence[int], calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
               nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> dict[int, dict]:
    """Per bit width: the ideal run's and every chip's task metrics (accuracy, bits per label), by ``cimc.sweep``
    on ``client``; the image's SHA-256 too, so a caller can check it against its own compile."""
    result, _ = sweep(model, feeds, labels=labels, calib=[calib] if calib else [], hw=hardware(array, nonideality),
                      identity=identity, pipeline=pipeline_with_max_inl(calib, identity, max_inl), bits=bits,
                      seeds=seeds, client=client)
    return {p.nl_adc_bits: {"ideal": result.ideal[p], "chips": result.rows_of(p), "image_sha256": result.images[p]}
            for p in result.points}


def chip_summary(chips: Sequence[Mapping[str, object]], metric: str, key: str) -> dict:
    """The per-chip values of ``metric`` ("accuracy" or "bits_per_label") and their mean and sample std under
    ``key`` (how results.json has always spelled them), rounded to 6 digits."""
    v = np.array([c[metric] for c in chips], dtype=np.float64)
    return {"per_seed": [round(float(a), 6) for a in v],
            key: {"mean": round(float(v.mean()), 6), "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 6)}}


def short_reason(reason: str) -> str:
    """A fuse.reason without its numbers, so that equal causes count together."""
    if not reason:  # image format v2 keeps no compiler-only attribute; `cimc compile` prints the reasons
        return "reason not kept in the image (see cimc compile's summary)"
    if "INL" in reason:
        return "ramp INL above max_inl (steps narrower than G_min)"
    if "digital value" in reason:
        return "digital input (tanh(c_t))"
    if "partial sums" in reason:
        return "digital partial sums"
    return re.sub(r"[-+]?\d[\d.e+-]*", "#", reason)


def fusion_stats(model: cimc.CompiledModel) -> dict:
    """Activations fused (NL-ADC) vs kept digital, the reasons, the ramps and their worst INL."""
    program = model.image.program()
    digital = [str(op.attributes.get("fuse.reason", "")) for op in program.walk() if op.name == "cim.activation"]
    ramps = model.image.manifest["ramps"]
    return {
        "activations_fused": int(program.attributes.get("fuse.activations", 0)),  # type: ignore[arg-type]
        "nl_adc_ops": sum(1 for op in program.walk() if op.name == "cim.nl_adc"),
        "activations_digital": len(digital),
        "digital_reasons": dict(sorted(Counter(short_reason(r) for r in digital).items())),
        "digital_reasons_full": sorted(digital),
        "ramps": len(ramps),
        "worst_inl_lsb": round(max((float(r["inl_lsb"]) for r in ramps), default=0.0), 4),
        "arrays_used": len(model.image.manifest["arrays"]),
        "g_window_used_median": g_window_used(model),
    }


def g_window_used(model: cimc.CompiledModel) -> dict[str, float]:
    """Per weight block: median over its columns of max |G+ - G-| / (G_max - G_min).

    map-conductance gives every column the full window (1.0); fuse-activation
    scales the columns that share a ramp down to the smallest conductance per
    unit of z among them, so fused columns use less of it.
    """
    d = model.image.hardware.device
    used: dict[str, dict[int, float]] = {}  # block -> column -> largest |G+ - G-| over its row tiles
    for op in model.image.program().walk():
        block = str(op.attributes.get("block", ""))
        if op.name == "cim.tile_mvm" and not block.endswith(".identity"):
            window = np.abs(tile_weights(model.image, op)) * op.attributes["g_scale"].array
            columns = used.setdefault(block, {})
            for j, g in zip(range(*op.attributes["cols"]), window.max(0)):
                columns[j] = max(columns.get(j, 0.0), float(g))
    return {b: round(float(np.median(list(v.values()))) / (d.g_max_us - d.g_min_us), 3) for b, v in sorted(used.items())}


def write_results(results: dict, out: Path, plot: Callable[[dict, Path], None], png: str, tables: str,
                  t_start: float, timings: Mapping[str, float]) -> None:
    """Write ``results.json`` (sorted keys, deterministic) and the plot into ``out``, print the tables, and the run
    time with its parts on stderr."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot(results, out / png)
    print(tables)
    total = time.perf_counter() - t_start
    print(f"\nrun time {total:.0f} s ({', '.join(f'{k} {v:.1f} s' for k, v in timings.items())})", file=sys.stderr)
