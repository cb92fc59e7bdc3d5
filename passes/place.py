"""place: assign every tile to a physical array.

Tiles are packed first-fit into arrays of ``cols`` bit lines (a weight column
takes a differential pair of them). The order is chosen so that tiles whose
columns feed the same activation land in the same array, because one ramp
column per array serves every comparator that needs that function; within a
function group, tiles are taken in dependency order (networkx generations of
each block's dependency graph), and a tile avoids arrays that another tile
of the same generation, driven by different inputs, already occupies, since
an array serves one read at a time. Column pieces of one MVM read can share
an array: one read serves them all.
A model that needs more arrays than the chip has is refused with the count
it would need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from cimc.diagnostics import CimcError
from cimc.hardware import load_hardware
from cimc.ir import Module, Operation, Value
from cimc.pass_manager import ModulePass, register_pass
from cimc.passes.schedule import dependency_graph, read_key

_DEFAULT = load_hardware()


def activation_keys(tile: Operation) -> tuple[str, ...]:
    """The activations that this tile's columns reach after conversion ('linear' where none does)."""
    keys: set[str] = set()
    frontier: list[Value] = [tile.results[0]]
    while frontier:
        value = frontier.pop()
        for use in value.uses:
            op = use.op
            if op.name in ("cim.analog_sum", "cim.adc", "onnx.Slice", "onnx.Concat"):
                frontier.extend(op.results)
            elif op.name == "cim.activation":
                a = op.attributes
                keys.add(f"{a['function']}(alpha={a.get('alpha')}, beta={a.get('beta')}, clip={a.get('clip')})")
            else:
                keys.add("linear")
    return tuple(sorted(keys))


def read_levels(module: Module) -> dict[int, tuple[int, int]]:
    """Per tile: (its block, its generation in that block's dependency graph). Equal pairs are read concurrently."""
    blocks = [module.body] + [region.block for op in module.walk() for region in op.regions]
    levels: dict[int, tuple[int, int]] = {}
    for b, block in enumerate(blocks):
        ops = [op for op in block.ops if op is not block.terminator]
        for level, nodes in enumerate(nx.topological_generations(dependency_graph(block))):
            for i in nodes:
                if ops[i].name == "cim.tile_mvm":
                    levels[id(ops[i])] = (b, level)
    return levels


@dataclass
class _Array:
    index: int
    capacity: int
    used: int = 0
    functions: set[str] = field(default_factory=set)
    reads: dict[tuple[int, int], set[tuple]] = field(default_factory=dict)

    def conflicts(self, level: tuple[int, int], key: tuple) -> bool:
        """Whether this array already serves a different read in the same concurrent step."""
        return bool(self.reads.get(level, set()) - {key})


def pack(tiles: list[Operation], levels: dict[int, tuple[int, int]], capacity: int, mix: bool) -> list[tuple[Operation, int, int]]:
    """First-fit packing: (tile, array index, first logical column) for every tile.

    Without ``mix`` a tile only joins an array whose activations already cover
    its own (else it opens a new array); with ``mix`` it takes any array with
    room, which packs denser at the cost of more ramp columns. Among the
    candidates, arrays that would have to serialize two concurrent reads come last.
    """
    keys = [activation_keys(t) for t in tiles]
    order = sorted(range(len(tiles)), key=lambda i: (keys[i], levels[id(tiles[i])], i))
    arrays: list[_Array] = []
    placed = []
    for i in order:
        tile = tiles[i]
        c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
        width = c1 - c0
        level, key = levels[id(tile)], read_key(tile)
        fits = [a for a in arrays if a.capacity - a.used >= width and (mix or set(keys[i]) <= a.functions)]
        fits.sort(key=lambda a: a.conflicts(level, key))
        target = fits[0] if fits else None
        if target is None:
            target = _Array(len(arrays), capacity)
            arrays.append(target)
        placed.append((tile, target.index, target.used))
        target.used += width
        target.functions.update(keys[i])
        target.reads.setdefault(level, set()).add(key)
    return placed


@register_pass
@dataclass(frozen=True)
class Place(ModulePass):
    """Assign tiles to physical arrays, grouping columns that share an activation; refuse models that do not fit."""

    name = "place"
    rows: int = _DEFAULT.array.rows
    cols: int = _DEFAULT.array.cols
    arrays: int = _DEFAULT.array.count

    def apply(self, module: Module) -> bool:
        tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
        capacity = self.cols // 2
        for tile in tiles:
            r0, r1 = tile.attributes["rows"]  # type: ignore[misc]
            c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
            if r1 - r0 > self.rows or c1 - c0 > capacity:
                raise CimcError(f"a tile of block '{tile.attributes.get('block')}' is {r1 - r0} x {c1 - c0} but an array holds "
                                f"{self.rows} rows x {capacity} weight columns: run 'tile' with the same array size first")
        levels = read_levels(module)
        placement = pack(tiles, levels, capacity, mix=False)
        needed = 1 + max((a for _, a, _ in placement), default=-1)
        if needed > self.arrays:
            placement = pack(tiles, levels, capacity, mix=True)
            needed = 1 + max((a for _, a, _ in placement), default=-1)
        if needed > self.arrays:
            raise CimcError(f"the model needs {needed} arrays of {self.rows} x {self.cols}, but the chip has {self.arrays}")
        for tile, array, col in placement:
            tile.attributes.update({"array": array, "array_row": 0, "array_col": 2 * col})
        module.attributes["arrays_used"] = needed
        return bool(tiles)
