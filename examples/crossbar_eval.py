"""What both examples' evaluate.py scripts share: the hardware sweep, compiling, and fusion statistics.

The scripts run as ``python examples/<name>/evaluate.py`` and put this folder on
``sys.path`` to import it.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

import cimc
from cimc.compiler import default_pipeline
from cimc.image import tile_weights

# One geometry for the whole sweep: an 8-bit ramp needs 2^8 - 1 + 5 = 260 word lines.
ARRAY = {"rows": 512, "cols": 64, "count": 64}
NONIDEALITIES = ("program_noise_us", "read_noise_rel", "stuck_on_rate", "stuck_off_rate")


def hardware_toml(bits: int, array: dict[str, int] | None = None, nonideality: dict[str, float] | None = None) -> str:
    """The override of cimc's default hardware description used for ``bits``."""
    lines = ["[array]"] + [f"{k} = {v}" for k, v in (array or ARRAY).items()]
    lines += ["", "[converters]", f"nl_adc_bits = {bits}"]
    if nonideality:
        lines += ["", "[nonideality]"] + [f"{k} = {v!r}" for k, v in nonideality.items()]
    return "\n".join(lines) + "\n"


def compile_model(model: Path, bits: int, calib: Path | None, identity: str = "auto", array: dict[str, int] | None = None,
                  nonideality: dict[str, float] | None = None, max_inl: float | None = None) -> cimc.CompiledModel:
    """Compile ``model`` for the sweep's hardware at ``bits``; ``max_inl`` changes fuse-activation's INL budget."""
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hw.toml"
        hw.write_text(hardware_toml(bits, array, nonideality))
        pipeline = None
        if max_inl is not None:
            pipeline = default_pipeline(str(Path(calib).resolve()) if calib else None, identity)
            assert "max_inl=1.0" in pipeline
            pipeline = pipeline.replace("max_inl=1.0", f"max_inl={max_inl!r}")
        return cimc.compile(model, hw=hw, calib=calib, identity=identity, pipeline=pipeline)


def short_reason(reason: str) -> str:
    """A fuse.reason without its numbers, so that equal causes count together."""
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
