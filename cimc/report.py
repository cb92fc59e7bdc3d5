"""Human-readable summaries of a lowered module: which weight block went to which array, how full each is, and which MVMs share weights."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

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
        where = f" on {_count(len(arrays), 'array')}" if arrays else ""
        listed = ", ".join(nodes[:4]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 4 else "")
        lines.append(f"shared weights: {_count(len(shared), 'tile')}{where}, programmed once and read "
                     f"{_count(reads, 'time')}, by {listed}")
    return lines


LISTED_ARRAYS = 32  # up to this many arrays, the compile summary lists each one; above, it folds them


def mapping_summary(module: Module, hw: Hardware, image: str | None = None) -> str:
    """Arrays used, the weight-block regions each array holds, shared weights, per-loop step latency.

    Up to :data:`LISTED_ARRAYS` arrays are listed one by one. A large model's
    list (9,500 lines for a 2-layer LSTM-1024) would bury the rest of the
    summary, so above that the arrays are folded: how many arrays have each
    fill, and which arrays each node's weights occupy; ``cimc dump IMAGE``
    (``image``: the image written, if any) lists every array.
    """
    per_array: dict[int, list[str]] = defaultdict(list)
    used_cols: dict[int, int] = defaultdict(int)
    used_rows: dict[int, int] = defaultdict(int)
    node_arrays: dict[str, set[int]] = defaultdict(set)
    node_tiles: dict[str, int] = defaultdict(int)
    seen: set[tuple[int, int]] = set()
    unplaced = 0
    for op in module.walk():
        if op.name != "cim.tile_mvm":
            continue
        if "array" not in op.attributes:
            unplaced += 1
            continue
        k, col = int(op.attributes["array"]), int(op.attributes["array_col"])  # type: ignore[arg-type]
        node = str(op.location or op.attributes.get("block"))
        node_arrays[node].add(k)
        node_tiles[node] += 1
        bit_lines, word_lines, text = _region(op)
        if (k, col) in seen:  # a tile that shares the devices of one already listed
            continue
        seen.add((k, col))
        per_array[k].append(text)
        used_cols[k] += bit_lines
        used_rows[k] = max(used_rows[k], word_lines)
    a = hw.array
    lines = [chip_line(arrays_used(module), hw)]

    def fill(k: int) -> str:
        util = 100.0 * used_cols[k] * used_rows[k] / (a.rows * a.cols)
        return f"{used_cols[k]}/{a.cols} bit lines, {used_rows[k]}/{a.rows} word lines, {util:.0f}% of devices"

    if len(per_array) <= LISTED_ARRAYS:
        for k in sorted(per_array):
            lines.append(f"  array {k}: {fill(k)}")
            lines.extend(f"    {region}" for region in per_array[k])
    else:
        lines.extend(_folded(per_array, fill, node_arrays, node_tiles, image))
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


_FILLS_SHOWN = 6
_NODES_SHOWN = 12


def _folded(per_array: dict[int, list[str]], fill: Callable[[int], str], node_arrays: dict[str, set[int]],
            node_tiles: dict[str, int], image: str | None) -> list[str]:
    """The arrays of a large mapping in a few lines: counts by fill (most common first), each node's arrays."""
    by_fill: dict[str, list[int]] = defaultdict(list)
    for k in sorted(per_array):
        by_fill[fill(k)].append(k)
    fills = sorted(by_fill.items(), key=lambda item: (-len(item[1]), item[1][0]))
    lines = [f"  {_count(len(ks), 'array')}: {text}" for text, ks in fills[:_FILLS_SHOWN]]
    if len(fills) > _FILLS_SHOWN:
        rest = sum(len(ks) for _, ks in fills[_FILLS_SHOWN:])
        lines.append(f"  {_count(rest, 'array')} in {_count(len(fills) - _FILLS_SHOWN, 'other fill')}")
    nodes = sorted(node_arrays.items(), key=lambda item: min(item[1]))
    for node, ks in nodes[:_NODES_SHOWN]:
        lines.append(f"  {node}: {_count(node_tiles[node], 'tile')} on {_count(len(ks), 'array')} ({index_ranges(sorted(ks))})")
    if len(nodes) > _NODES_SHOWN:
        lines.append(f"  ... and {len(nodes) - _NODES_SHOWN} more nodes")
    where = f"cimc dump {image}" if image else "cimc dump IMAGE (compile with -o IMAGE)"
    lines.append(f"  ({len(per_array)} arrays hold weights; `{where}` lists each array and its regions)")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def index_ranges(indices: list[int], shown: int = 4) -> str:
    """Sorted indices as runs: ``0-2111, 2113, 2200-2300``; after ``shown`` runs, how many more."""
    runs: list[list[int]] = []
    for k in indices:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    text = ", ".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs[:shown])
    return text + (f", ... ({len(runs) - shown} more runs)" if len(runs) > shown else "")
