"""place: assign every tile to a physical array.

Tiles are packed first-fit into arrays of ``cols`` bit lines (a weight column
takes a differential pair of them, and with ``ramp_cols`` every activation
an array serves reserves one more for its ramp column). The order is chosen so that tiles whose
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
from cimc.dialects.cim import activation_key
from cimc.ir import Module, Operation, Value
from cimc.pass_manager import ModulePass, from_hardware, register_pass
from cimc.passes.schedule import dependency_graph, read_key
from cimc.passes.tile import slice_range


def activation_keys(tile: Operation) -> tuple[str, ...]:
    """The activations that this tile's columns reach after conversion ('linear' where a column reaches none).

    Columns are followed individually through conversions, concatenations and
    slices of the last axis, so pieces of one gate that a Concat joins again
    are not mistaken for the whole gate.
    """
    keys: set[str] = set()
    frontier: list[tuple[Value, int, int]] = [(tile.results[0], 0, int(tile.results[0].type.shape[-1]))]  # type: ignore[arg-type]
    while frontier:
        value, lo, hi = frontier.pop()
        for use in value.uses:
            op = use.op
            if op.name in ("cim.analog_sum", "cim.adc"):
                frontier.append((op.results[0], lo, hi))
            elif op.name == "onnx.Concat" and int(op.attributes["axis"]) % op.results[0].type.rank == op.results[0].type.rank - 1:  # type: ignore[arg-type]
                offset = sum(int(v.type.shape[-1]) for v in op.operands[:use.index])  # type: ignore[arg-type, union-attr]
                frontier.append((op.results[0], lo + offset, hi + offset))
            elif op.name == "onnx.Slice" and (span := slice_range(op, value)) is not None:
                if max(lo, span[0]) < min(hi, span[1]):
                    frontier.append((op.results[0], max(lo, span[0]) - span[0], min(hi, span[1]) - span[0]))
            elif op.name == "cim.activation" or (op.name == "cim.nl_adc" and use.index == 0):
                keys.add(activation_key(op))
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
    bitlines: int
    ramp_cols: bool
    used: int = 0  # bit lines taken by weight columns, from 0 up
    functions: set[str] = field(default_factory=set)
    reads: dict[tuple[int, int], set[tuple]] = field(default_factory=dict)

    def ramps(self, functions: set[str]) -> int:
        return len(functions - {"linear"}) if self.ramp_cols else 0

    def fits(self, width: int, keys: tuple[str, ...]) -> bool:
        """Room for ``width`` weight columns (two bit lines each) and a ramp column per activation it adds."""
        return self.used + 2 * width + self.ramps(self.functions | set(keys)) <= self.bitlines

    def conflicts(self, level: tuple[int, int], key: tuple) -> bool:
        """Whether this array already serves a different read in the same concurrent step."""
        return bool(self.reads.get(level, set()) - {key})


def pack(tiles: list[Operation], levels: dict[int, tuple[int, int]], bitlines: int, ramp_cols: bool,
         mix: bool) -> list[tuple[Operation, int, int]]:
    """First-fit packing: (tile, array index, first bit line) for every tile.

    Without ``mix`` a tile only joins an array whose activations already cover
    its own (else it opens a new array); with ``mix`` it takes any array with
    room, which packs denser at the cost of more ramp columns. Among the
    candidates, arrays that would have to serialize two concurrent reads come last.
    """
    keys = [activation_keys(t) for t in tiles]
    order = sorted(range(len(tiles)), key=lambda i: (keys[i], levels[id(tiles[i])], i))
    arrays: list[_Array] = []
    open_arrays: list[_Array] = []  # arrays with room for at least one more weight column
    placed = []
    for i in order:
        tile = tiles[i]
        c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
        width = c1 - c0
        level, key = levels[id(tile)], read_key(tile)
        fits = [a for a in open_arrays if a.fits(width, keys[i]) and (mix or set(keys[i]) <= a.functions)]
        fits.sort(key=lambda a: a.conflicts(level, key))
        target = fits[0] if fits else None
        if target is None:
            target = _Array(len(arrays), bitlines, ramp_cols)
            arrays.append(target)
            open_arrays.append(target)
        placed.append((tile, target.index, target.used))
        target.used += 2 * width
        target.functions.update(keys[i])
        target.reads.setdefault(level, set()).add(key)
        if not target.fits(1, ()):
            open_arrays.remove(target)
    return placed


@register_pass
@dataclass(frozen=True)
class Place(ModulePass):
    """Assign tiles to physical arrays, grouping columns that share an activation; refuse models that do not fit."""

    name = "place"
    rows: int | None = from_hardware(lambda hw: hw.array.rows, "array.rows")
    cols: int | None = from_hardware(lambda hw: hw.array.cols, "array.cols")
    arrays: int | None = from_hardware(lambda hw: hw.array.count, "array.count")
    ramp_cols: bool = True

    def apply(self, module: Module) -> bool:
        tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
        for tile in tiles:
            r0, r1 = tile.attributes["rows"]  # type: ignore[misc]
            c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
            if r1 - r0 > self.rows or not _Array(0, self.cols, self.ramp_cols).fits(c1 - c0, activation_keys(tile)):
                raise CimcError(f"a tile of block '{tile.attributes.get('block')}' is {r1 - r0} x {c1 - c0} but an array has "
                                f"{self.rows} rows and {self.cols} bit lines: run 'tile' with the same array size first")
        levels = read_levels(module)
        placement = pack(tiles, levels, self.cols, self.ramp_cols, mix=False)
        needed = 1 + max((a for _, a, _ in placement), default=-1)
        if needed > self.arrays:
            placement = pack(tiles, levels, self.cols, self.ramp_cols, mix=True)
            needed = 1 + max((a for _, a, _ in placement), default=-1)
        if needed > self.arrays:
            raise CimcError(f"the model needs {needed} arrays of {self.rows} x {self.cols}, but the chip has {self.arrays}")
        for tile, array, col in placement:
            tile.attributes.update({"array": array, "array_row": 0, "array_col": col})
        module.attributes["arrays_used"] = needed
        return bool(tiles)
