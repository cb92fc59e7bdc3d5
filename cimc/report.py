"""Human-readable summaries of a lowered module: which weight block went to which array, how full each is, and which MVMs share weights."""

from __future__ import annotations

from collections import defaultdict

from cimc.hardware import Hardware
from cimc.ir import Module, Operation


def arrays_used(module: Module) -> int:
    """The number of physical arrays the placed module occupies (weight tiles, identity columns and ramps)."""
    used = {int(op.attributes["array"]) for op in module.walk()  # type: ignore[arg-type]
            if op.name in ("cim.tile_mvm", "cim.ramp") and "array" in op.attributes}
    return len(used)


def chip_line(used: int, hw: Hardware) -> str:
    """'arrays used: N of M (R x C)', or, for a chip sized to the model, 'arrays used: N (count = auto) (R x C)'."""
    a = hw.array
    of = f"of {a.limit}" if a.limit is not None else "(count = auto: the chip is sized to the model)"
    return f"arrays used: {used} {of} ({a.rows} x {a.cols})"


def _region(op: Operation) -> tuple[int, int, str]:
    r0, r1 = op.attributes["rows"]  # type: ignore[misc]
    c0, c1 = op.attributes["cols"]  # type: ignore[misc]
    col = int(op.attributes["array_col"])  # type: ignore[arg-type]
    return 2 * (c1 - c0), r1 - r0, f"{op.attributes.get('block')}[rows {r0}:{r1}, cols {c0}:{c1}] -> bit lines {col}:{col + 2 * (c1 - c0)}"


def sharing_summary(module: Module) -> list[str]:
    """One line per group of MVMs that share weights: how many tiles, on which arrays, and the nodes that read them."""
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in module.walk():
        if op.name == "cim.tile_mvm" and "share" in op.attributes:
            groups[str(op.attributes["share"])].append(op)
    by_nodes: dict[tuple[str, ...], list[list[Operation]]] = defaultdict(list)
    for members in groups.values():
        nodes = tuple(dict.fromkeys(str(t.location or t.attributes.get("block")) for t in members))
        by_nodes[nodes].append(members)
    lines = []
    for nodes, shared in sorted(by_nodes.items()):
        arrays = sorted({int(m[0].attributes["array"]) for m in shared if "array" in m[0].attributes})  # type: ignore[arg-type]
        reads = sum(len(m) for m in shared)
        where = f" on {len(arrays)} arrays" if arrays else ""
        listed = ", ".join(nodes[:4]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 4 else "")
        lines.append(f"shared weights: {len(shared)} tiles{where}, programmed once and read {reads} times, by {listed}")
    return lines


def mapping_summary(module: Module, hw: Hardware) -> str:
    """A table of arrays: utilization and the weight-block regions each holds; shared weights; per-loop step latency."""
    per_array: dict[int, list[str]] = defaultdict(list)
    used_cols: dict[int, int] = defaultdict(int)
    used_rows: dict[int, int] = defaultdict(int)
    seen: set[tuple[int, int]] = set()
    unplaced = 0
    for op in module.walk():
        if op.name != "cim.tile_mvm":
            continue
        if "array" not in op.attributes:
            unplaced += 1
            continue
        k, col = int(op.attributes["array"]), int(op.attributes["array_col"])  # type: ignore[arg-type]
        bit_lines, word_lines, text = _region(op)
        if (k, col) in seen:  # a tile that shares the devices of one already listed
            continue
        seen.add((k, col))
        per_array[k].append(text)
        used_cols[k] += bit_lines
        used_rows[k] = max(used_rows[k], word_lines)
    a = hw.array
    lines = [chip_line(arrays_used(module), hw)]
    for k in sorted(per_array):
        util = 100.0 * used_cols[k] * used_rows[k] / (a.rows * a.cols)
        lines.append(f"  array {k}: {used_cols[k]}/{a.cols} bit lines, {used_rows[k]}/{a.rows} word lines, {util:.0f}% of devices")
        lines.extend(f"    {region}" for region in per_array[k])
    if per_array:
        total = sum(used_cols[k] * used_rows[k] for k in per_array)
        lines.append(f"weight devices: {100.0 * total / (len(per_array) * a.rows * a.cols):.1f}% of the devices of the "
                     f"{len(per_array)} arrays that hold weights")
    lines.extend(sharing_summary(module))
    if unplaced:
        lines.append(f"  {unplaced} tiles are not placed (the pipeline has no 'place')")
    for op in module.walk():
        if op.name == "cim.loop" and "sched.stages" in op.attributes:
            lines.append(f"loop at {op.location}: {op.attributes['sched.stages']} stages per time step")
    return "\n".join(lines) + "\n"
