"""The same mapped model costed three ways, and the ratios between them.

(a) ``ramp_adc+digital``: every fused activation converted by a linear ramp
ADC, then computed by the digital units; (b) ``sar_adc+digital``: the same
with SAR ADCs (which also take over the model's linear conversions); (c)
``nl_adc``: the image as compiled. Ratios are baseline / NL-ADC at the
paper's three levels (Yang et al. 2025, Fig. 4f): the MAC array, the
nonlinear processing, and the full system.
"""

from __future__ import annotations

from cimc.backends.cost.model import Scheme
from cimc.backends.cost.summary import r6


def schemes(bits: int | None = None, dac_bits: int | None = None) -> tuple[Scheme, ...]:
    """The compiled NL-ADC design first, then the two conventional baselines, at NL-ADC width ``bits``."""
    return (Scheme("nl_adc", True, "ramp", bits, dac_bits),
            Scheme("ramp_adc+digital", False, "ramp", bits, dac_bits),
            Scheme("sar_adc+digital", False, "sar", bits, dac_bits))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return r6(a / b)


def ratios(summaries: dict[str, dict]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Baseline over NL-ADC for latency, energy and area, per level and for the whole step and inference."""
    reference = summaries["nl_adc"]
    out = {}
    for name, s in summaries.items():
        if name == "nl_adc":
            continue
        entry: dict[str, dict[str, float | None]] = {"latency": {}, "energy": {}, "area": {}}
        for level in ("mac_array", "nonlinear", "full_system"):
            for quantity, key in (("latency", "latency_ns"), ("energy", "energy_pj"), ("area", "area_mm2")):
                entry[quantity][level] = _ratio(s["levels"][level][key], reference["levels"][level][key])
        entry["latency"]["inference"] = _ratio(s["total"]["latency_ns"], reference["total"]["latency_ns"])
        entry["energy"]["inference"] = _ratio(s["total"]["energy_pj"], reference["total"]["energy_pj"])
        entry["digital_activation_cycles_removed_per_step"] = {
            "baseline": s["per_step"]["digital_activation_cycles"],
            "nl_adc": reference["per_step"]["digital_activation_cycles"]}
        out[name] = entry
    return out
