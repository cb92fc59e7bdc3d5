"""The cost side of the accuracy/bits trade: one mapping re-costed at several NL-ADC widths, without recompiling.

What changes with N bits (and what does not):

- every NL-ADC conversion takes 2^N cycles; its comparators decide 2^N times
  and latch N bits; the counter runs 2^N counts;
- a ramp column sweeps 2^N levels over the same z range at the same
  conductance per unit of z, so its mean conductance is unchanged and its
  sweep energy scales by 2^N / 2^N0 (N0: the compiled width);
- a ramp column needs 2^N - 1 step devices, plus the compiled ramp's
  two-device steps scaled by (2^N - 1)/(2^N0 - 1), plus the calibration
  devices. A width whose ramps do not fit the array's word lines is still
  costed and flagged: realizing it needs a recompile on taller arrays
  (the report says how many rows);
- the baselines' linear conversions of activation columns and their LUTs
  follow N; with ``with_dac`` the input DACs do too (2^N unit capacitors);
  the model's own linear ADC conversions (cim.adc) and the mapping (arrays,
  tiles, schedule) do not change.

Accuracy at each width needs a recompile (the ramp thresholds change); the
cost does not, which is why this re-costs rather than recompiles.
"""

from __future__ import annotations

from cimc.backends.cost.report import cost_report
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.image import Image

_KEEP_TOTAL = ("area_mm2", "energy_pj", "latency_ns", "tops", "peak_tops", "tops_per_w", "tops_per_mm2", "power_mw")
_KEEP_STEP = ("energy_pj", "latency_ns", "tops", "tops_per_w", "digital_activation_cycles")


def parse_bits(text: str) -> list[int]:
    """'3,4,5,8' -> [3, 4, 5, 8]; each width in 1..16, no repeats."""
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise CimcError(f"--sweep-bits expects comma-separated integers, got '{text}'") from None
    if not widths or any(not 1 <= b <= 16 for b in widths) or len(set(widths)) != len(widths):
        raise CimcError(f"--sweep-bits widths must be distinct and lie in 1..16, got '{text}'")
    return widths


def sweep(image: Image, widths: list[int], seq_len: int | None = None, batch: int = 1, with_dac: bool = False,
          hardware: Hardware | None = None) -> dict:
    """One row per width: each scheme's totals and per-step numbers, and whether the ramps fit.

    ``with_dac``: the input DACs take the same width (the paper's "in/out
    precision 5(8)"); otherwise they keep the hardware's ``dac_bits``.
    """
    rows = []
    for bits in widths:
        report = cost_report(image, seq_len, batch, bits, bits if with_dac else None, hardware)
        rows.append({
            "bits": bits, "ramps": report["ramps"],
            "schemes": {name: {"total": {k: s["total"][k] for k in _KEEP_TOTAL},
                               "per_step": {k: s["per_step"][k] for k in _KEEP_STEP}}
                        for name, s in report["schemes"].items()},
        })
    return {"model": image.manifest["model"].get("source"), "recompiled": False, "dac_follows_bits": with_dac,
            "sweep": rows}


def format_sweep(result: dict) -> str:
    dac = "the input DACs at the same width" if result["dac_follows_bits"] else "the DACs at the hardware's width"
    lines = [f"NL-ADC width sweep of {result['model']} (re-costed on the compiled mapping, not recompiled; {dac})",
             f"  {'bits':>4} {'ramp rows':>10} {'scheme':<18}{'step ns':>10}{'step pJ':>10}{'peak TOPS':>11}"
             f"{'TOPS/W':>10}{'TOPS/mm2':>10}{'act cyc':>8}"]
    for row in result["sweep"]:
        fit = row["ramps"]
        rows = f"{fit['ramp_rows_max']}{'' if fit['fits'] else '*'}"
        for name, s in row["schemes"].items():
            t, st = s["total"], s["per_step"]
            lines.append(f"  {row['bits']:>4} {rows:>10} {name:<18}{st['latency_ns']:>10.4g}{st['energy_pj']:>10.4g}"
                         f"{t['peak_tops']:>11.4g}{st['tops_per_w']:>10.4g}{t['tops_per_mm2']:>10.4g}"
                         f"{st['digital_activation_cycles']:>8}")
    if any(not row["ramps"]["fits"] for row in result["sweep"]):
        lines.append("  * the ramp does not fit the compiled arrays' word lines: realizing this width needs a recompile "
                     "with taller arrays ([array] rows >= the rows shown)")
    return "\n".join(lines) + "\n"
