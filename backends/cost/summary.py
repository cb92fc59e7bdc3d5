"""A costed scheme as plain numbers: totals, per step, per component, per layer, per level of the paper's Fig. 4f.

Units: area in mm^2, energy in pJ, latency in ns, throughput in TOPS at 2
ops per MAC. Every float is rounded to 6 significant digits, so the report of
a fixed image is byte-identical across runs and CPUs (the sums behind it are
taken in a fixed order; see ``program.py`` for the conductance sums).
"""

from __future__ import annotations

from collections import defaultdict

from cimc.backends.cost.model import COMPONENTS, MAC_COMPONENTS, BlockCost, Costed

OP_CONVENTION = ("2 ops per MAC; MACs = weight rows (bias rows excluded) x columns of every array read; "
                 "identity columns, conversions and digital ops count no ops")


def r6(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def _per(num: float, den: float) -> float | None:
    return num / den if den else None


def _what_component(costed: Costed) -> dict[str, str]:
    linear = "sar_adc" if costed.scheme.linear_adc == "sar" else "ramp_adc"
    return {"read": "crossbar", "nonlinear convert": "nl_adc" if costed.scheme.nl_adc else linear,
            "linear convert": linear, "digital activation": "digital_activation", "digital": "digital_elementwise"}


def _pj_by(block: BlockCost, key) -> dict[str, float]:  # noqa: ANN001  (key: (component, layer, nonlinear) -> str)
    out: dict[str, float] = defaultdict(float)
    for entry, fj in block.ledger.energy.items():
        out[key(entry)] += fj / 1000.0
    return out


def summarize(costed: Costed) -> dict:
    """The report entry of one scheme (see docs/cost-model.md for every quantity)."""
    ns = costed.cycle_ns
    total = costed.total
    ops = 2 * total.ledger.macs
    energy_pj = sum(total.ledger.energy.values()) / 1000.0
    latency_ns = total.cycles * ns
    area_mm2 = sum(costed.area.values()) / 1e6
    step = costed.step or total
    step_ops = 2 * step.ledger.macs
    step_energy = sum(step.ledger.energy.values()) / 1000.0
    step_ns = step.cycles * ns
    peak_tops = _per(step_ops, step_ns * 1000.0)  # ops per ns = GOPS
    tops = _per(ops, latency_ns * 1000.0)

    by_component = _pj_by(total, lambda e: e[0])
    step_by_component = _pj_by(step, lambda e: e[0])
    area_by_component: dict[str, float] = defaultdict(float)
    area_by_layer: dict[str, float] = defaultdict(float)
    for (component, layer, _), um2 in costed.area.items():
        area_by_component[component] += um2 / 1e6
        area_by_layer[layer] += um2 / 1e6
    cycles_by_component: dict[str, int] = defaultdict(int)
    for what, cycles in total.cycles_by.items():
        cycles_by_component[_what_component(costed)[what]] += cycles

    components = {}
    for name in COMPONENTS:
        energy = by_component.get(name, 0.0)
        area = area_by_component.get(name, 0.0)
        if not energy and not area:
            continue
        c_ns = cycles_by_component.get(name, 0) * ns
        components[name] = {
            "area_mm2": r6(area), "energy_pj": r6(energy), "energy_pj_per_step": r6(step_by_component.get(name, 0.0)),
            "latency_ns": r6(c_ns), "tops": r6(_per(ops, c_ns * 1000.0)), "tops_per_w": r6(_per(ops, energy)),
            "tops_per_mm2": r6(_per(peak_tops or 0.0, area))}

    layers = {}
    energy_by_layer = _pj_by(total, lambda e: e[1])
    for layer in sorted(set(energy_by_layer) | set(area_by_layer) | set(total.cycles_by_layer)):
        layers[layer] = {"area_mm2": r6(area_by_layer.get(layer, 0.0)), "energy_pj": r6(energy_by_layer.get(layer, 0.0)),
                         "latency_ns": r6(total.cycles_by_layer.get(layer, 0) * ns)}

    nonlinear_energy = sum(fj for (_, _, nl), fj in total.ledger.energy.items() if nl) / 1000.0
    mac_energy = sum(by_component.get(n, 0.0) for n in MAC_COMPONENTS)
    levels = {
        "mac_array": (mac_energy, sum(area_by_component.get(n, 0.0) for n in MAC_COMPONENTS), total.cycles_by.get("read", 0)),
        "nonlinear": (nonlinear_energy, sum(um2 for (_, _, nl), um2 in costed.area.items() if nl) / 1e6,
                      total.cycles_by.get("nonlinear convert", 0) + total.cycles_by.get("digital activation", 0)),
        "full_system": (energy_pj, area_mm2, total.cycles),
    }
    return {
        "scheme": costed.scheme.name,
        "total": {"area_mm2": r6(area_mm2), "energy_pj": r6(energy_pj), "latency_ns": r6(latency_ns), "tops": r6(tops),
                  "peak_tops": r6(peak_tops), "tops_per_w": r6(_per(ops, energy_pj)),
                  "tops_per_mm2": r6(_per(peak_tops or 0.0, area_mm2)), "power_mw": r6(_per(energy_pj, latency_ns)),
                  "macs": total.ledger.macs, "ops": ops},
        "per_step": {"loop": costed.step_layer, "energy_pj": r6(step_energy), "latency_ns": r6(step_ns),
                     "tops": r6(peak_tops), "tops_per_w": r6(_per(step_ops, step_energy)),
                     "power_mw": r6(_per(step_energy, step_ns)), "macs": step.ledger.macs,
                     "digital_activation_cycles": step.ledger.activation_cycles,
                     "timeline": [{"stage": ph.stage, "start_ns": r6(ph.start * ns), "latency_ns": r6(ph.cycles * ns),
                                   "what": ph.what, "layer": ph.layer} for ph in step.timeline]},
        "components": components,
        "layers": layers,
        "levels": {name: {"energy_pj": r6(e), "area_mm2": r6(a), "latency_ns": r6(c * ns),
                          "tops_per_w": r6(_per(ops, e))} for name, (e, a, c) in levels.items()},
    }
