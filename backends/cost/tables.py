"""The readable form of a cost report: fixed-width tables with fixed number formats (byte-identical output)."""

from __future__ import annotations

_COLUMNS = ("area_mm2", "energy_pj", "energy_pj_per_step", "latency_ns", "tops_per_w")


def _num(x: float | int | None, width: int = 10) -> str:
    if x is None:
        return "-".rjust(width)
    if isinstance(x, int):
        return str(x).rjust(width)
    if x == 0:
        return "0".rjust(width)
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.3e}".rjust(width)
    return f"{x:.4g}".rjust(width)


def format_report(report: dict) -> str:
    hw = report["hardware"]
    lines = [
        f"cost of {report['model']}: {hw['arrays']} arrays of {hw['rows']} x {hw['cols']}, "
        f"{hw['clock_ghz']:g} GHz, DAC {hw['dac_bits']} bits, NL-ADC {report['nl_adc_bits']} bits, "
        f"linear ADC {hw['adc_bits']} bits, {hw['digital_lanes']} digital lanes",
        (f"sequence length {report['seq_len']}" + ("" if report["seq_len_given"] else
                                                    " (the default: the model's time dim is symbolic; give --seq-len)")
         if report["seq_len_used"] else "sequence length fixed by the model")
        + f", batch {report['batch']}; {report['op_convention']}",
    ]
    fit = report["ramps"]
    if not fit["fits"]:
        lines.append(f"note: a ramp at this width needs {fit['ramp_rows_max']} word lines, more than the arrays' "
                     f"{fit['array_rows']}: recompile with [array] rows >= {fit['ramp_rows_max']} to realize it")
    for name, s in report["schemes"].items():
        t, st = s["total"], s["per_step"]
        lines += ["", f"== {name} ==",
                  f"total: {_num(t['area_mm2'], 0)} mm2, {_num(t['energy_pj'], 0)} pJ and {_num(t['latency_ns'], 0)} ns "
                  f"per inference, {_num(t['power_mw'], 0)} mW; {_num(t['tops'], 0)} TOPS effective, "
                  f"{_num(t['peak_tops'], 0)} TOPS peak, {_num(t['tops_per_w'], 0)} TOPS/W, "
                  f"{_num(t['tops_per_mm2'], 0)} TOPS/mm2"]
        if st["loop"]:
            lines.append(f"per time step of {st['loop']}: {_num(st['energy_pj'], 0)} pJ, {_num(st['latency_ns'], 0)} ns, "
                         f"{_num(st['tops'], 0)} TOPS, {_num(st['tops_per_w'], 0)} TOPS/W, "
                         f"{st['digital_activation_cycles']} digital-activation cycles")
        lines.append(f"  {'component':<20}" + "".join(f"{c:>20}" for c in _COLUMNS))
        for component, v in s["components"].items():
            lines.append(f"  {component:<20}" + "".join(_num(v[c], 20) for c in _COLUMNS))
        lines.append(f"  {'level':<20}{'energy_pj':>20}{'area_mm2':>20}{'latency_ns':>20}{'tops_per_w':>20}")
        for level, v in s["levels"].items():
            lines.append(f"  {level:<20}" + "".join(_num(v[c], 20) for c in ("energy_pj", "area_mm2", "latency_ns", "tops_per_w")))
        lines.append(f"  {'layer':<44}{'area_mm2':>12}{'energy_pj':>12}{'latency_ns':>12}")
        for layer, v in s["layers"].items():
            lines.append(f"  {layer[-44:]:<44}" + "".join(_num(v[c], 12) for c in ("area_mm2", "energy_pj", "latency_ns")))
    lines += ["", "baseline / NL-ADC (above 1: the NL-ADC is better)",
              f"  {'baseline':<18}{'quantity':<10}{'mac_array':>11}{'nonlinear':>11}{'full_system':>12}{'inference':>11}"]
    for name, r in report["ratios"].items():
        for quantity in ("latency", "energy", "area"):
            v = r[quantity]
            lines.append(f"  {name:<18}{quantity:<10}" + _num(v["mac_array"], 11) + _num(v["nonlinear"], 11)
                         + _num(v["full_system"], 12) + _num(v.get("inference"), 11))
        removed = r["digital_activation_cycles_removed_per_step"]
        lines.append(f"  {name:<18}digital-activation cycles per step: {removed['baseline']} -> {removed['nl_adc']} with the NL-ADC")
    return "\n".join(lines) + "\n"
