"""Human-readable summaries of a lowered module: which weight block went to which array, and how full each is."""

from __future__ import annotations

from collections import defaultdict

from cimc.hardware import Hardware
from cimc.ir import Module


def mapping_summary(module: Module, hw: Hardware) -> str:
    """A table of arrays: utilization and the weight-block regions each holds; then per-loop step latency."""
    per_array: dict[int, list[str]] = defaultdict(list)
    used_cols: dict[int, int] = defaultdict(int)
    used_rows: dict[int, int] = defaultdict(int)
    unplaced = 0
    for op in module.walk():
        if op.name != "cim.tile_mvm":
            continue
        r0, r1 = op.attributes["rows"]  # type: ignore[misc]
        c0, c1 = op.attributes["cols"]  # type: ignore[misc]
        if "array" not in op.attributes:
            unplaced += 1
            continue
        k = int(op.attributes["array"])  # type: ignore[arg-type]
        col = int(op.attributes["array_col"])  # type: ignore[arg-type]
        per_array[k].append(f"{op.attributes.get('block')}[rows {r0}:{r1}, cols {c0}:{c1}] -> bit lines {col}:{col + 2 * (c1 - c0)}")
        used_cols[k] += 2 * (c1 - c0)
        used_rows[k] = max(used_rows[k], r1 - r0)
    a = hw.array
    lines = [f"arrays used: {len(per_array)} of {a.count} ({a.rows} x {a.cols})"]
    for k in sorted(per_array):
        util = 100.0 * used_cols[k] * used_rows[k] / (a.rows * a.cols)
        lines.append(f"  array {k}: {used_cols[k]}/{a.cols} bit lines, {used_rows[k]}/{a.rows} word lines, {util:.0f}% of devices")
        lines.extend(f"    {region}" for region in per_array[k])
    if unplaced:
        lines.append(f"  {unplaced} tiles are not placed (the pipeline has no 'place')")
    for op in module.walk():
        if op.name == "cim.loop" and "sched.stages" in op.attributes:
            lines.append(f"loop at {op.location}: {op.attributes['sched.stages']} stages per time step")
    return "\n".join(lines) + "\n"
