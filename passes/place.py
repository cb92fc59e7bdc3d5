"""place: assign every tile to a physical array.

Tiles are packed first-fit into arrays of ``cols`` bit lines (a weight column
takes a differential pair of them, and with ``ramp_cols`` every activation
an array serves reserves one more for its ramp column). The order is chosen so that tiles whose
columns feed the same activation land in the same array, because one ramp
column per array serves every comparator that needs that function; within a
function group, tiles are taken in dependency order (networkx generations of
each block's dependency graph), and a tile avoids arrays that another tile
of the same generation, driven by different inputs, already occupies (or a
tile of another loop that runs at the same time), since an array serves one
read at a time. Column pieces of one MVM read can share an array: one read
serves them all. The 1-column remainders of gates cut to
fit an array join an array of another activation (one more ramp column)
rather than take an array each. Tiles that share-weights found to hold the
same weights are placed once: their reads use the same devices.

Only the ``rows`` x ``cols`` lines of an array are placed on: its spare lines
(``spare_rows``, ``spare_cols``, ``spare_ramp_cols`` of the hardware) stay free
for a defect-aware mapping (map-defects), so a plain compile does not depend on
them.

With ``arrays=0`` the chip is sized to the model. A fixed count is a
constraint: a model that needs more arrays is refused with the count it
would need, and a chip too tight to keep activations apart and leave
fuse-activation its identity columns is packed denser, so that more arrays
never fuse fewer activations.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from cimc.diagnostics import CimcError
from cimc.ir import Block, Module, Operation
from cimc.pass_manager import ModulePass, from_hardware, register_pass
from cimc.passes.fuse_activation import analog_pieces
from cimc.passes.schedule import dependency_graph, read_key
from cimc.passes.tile import ActivationKeys, activation_keys  # noqa: F401  (activation_keys: re-exported, tests use it)


Read = tuple[tuple[int, int], tuple]  # ((block, generation), what is read): equal first parts are concurrent


def read_sets(module: Module) -> dict[int, set[Read]]:
    """Per tile: the concurrent steps it is read in, each with what is read (equal keys are served by one read).

    A tile is read in its block's generation of the dependency graph
    (networkx), and, inside a loop, whenever that loop runs: the loop's own
    generation in the enclosing block, where another loop of the same
    generation would run on the array at the same time.
    """
    import networkx as nx  # here, not at the top: only place and schedule need it, not every user of the pass registry

    reads: dict[int, set[Read]] = {}
    counter = itertools.count()

    def visit(block: Block, outer: frozenset[Read]) -> None:
        b = next(counter)
        ops = [op for op in block.ops if op is not block.terminator]
        for level, nodes in enumerate(nx.topological_generations(dependency_graph(block))):
            for i in nodes:
                op = ops[i]
                if op.name == "cim.tile_mvm":
                    reads[id(op)] = set(outer) | {((b, level), read_key(op))}
                for region in op.regions:
                    visit(region.block, outer | {((b, level), ("region", id(op)))})

    visit(module.body, frozenset())
    return reads


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

    def conflicts(self, reads: set[Read]) -> bool:
        """Whether this array already serves a different read in one of the concurrent steps of ``reads``."""
        return any(self.reads.get(level, set()) - {key} for level, key in reads)


@dataclass
class _Unit:
    """What takes one place on the chip: a tile, or every tile that shares its weights (the same devices, read by each)."""

    tiles: list[Operation]
    keys: tuple[str, ...]
    reads: set[Read]

    @property
    def width(self) -> int:
        c0, c1 = self.tiles[0].attributes["cols"]  # type: ignore[misc]
        return c1 - c0


def placement_units(tiles: list[Operation], reads: dict[int, set[Read]],
                    activation_keys: ActivationKeys | None = None) -> list[_Unit]:
    """Group tiles by their ``share`` attribute (set by share-weights); every other tile is a unit of its own."""
    activation_keys = activation_keys or ActivationKeys()
    groups: dict[object, list[Operation]] = {}
    for tile in tiles:
        groups.setdefault(tile.attributes.get("share", id(tile)), []).append(tile)
    units = []
    for members in groups.values():
        keys = sorted({k for t in members for k in activation_keys(t)})
        units.append(_Unit(members, tuple(keys), set().union(*(reads[id(t)] for t in members))))
    return units


def pack(units: list[_Unit], bitlines: int, ramp_cols: bool, dense: bool) -> list[tuple[_Unit, int, int]]:
    """First-fit packing: (unit, array index, first bit line) for every unit.

    Units are taken by activation, then in dependency order. A unit first
    joins an array whose activations already cover its own; failing that,
    an array with room for one more ramp column whose reads it does not
    collide with (so the 1-column remainders of several gates share one
    array instead of taking one each); failing that, a new array. With
    ``dense`` it takes any array with room, colliding reads included (they
    are then serialized), before opening a new one. Among the candidates,
    arrays that would serialize two concurrent reads come last, then those
    that need one more ramp column.
    """
    order = sorted(range(len(units)), key=lambda i: (units[i].keys, min(level for level, _ in units[i].reads), i))
    arrays: list[_Array] = []
    open_arrays: list[_Array] = []  # arrays with room for at least one more weight column
    placed = []
    for i in order:
        unit = units[i]
        keys, reads = unit.keys, unit.reads
        fits = [a for a in open_arrays if a.fits(unit.width, keys)]
        if not dense:
            fits = [a for a in fits if set(keys) <= a.functions or not a.conflicts(reads)]
        fits.sort(key=lambda a: (a.conflicts(reads), not set(keys) <= a.functions, a.index))
        target = fits[0] if fits else None
        if target is None:
            target = _Array(len(arrays), bitlines, ramp_cols)
            arrays.append(target)
            open_arrays.append(target)
        placed.append((unit, target.index, target.used))
        target.used += 2 * unit.width
        target.functions.update(keys)
        for level, key in reads:
            target.reads.setdefault(level, set()).add(key)
        if not target.fits(1, ()):
            open_arrays.remove(target)
    return placed


def identity_arrays(module: Module, rows: int, cols: int) -> int:
    """At most how many fresh arrays fuse-activation's identity columns can take: one per piece of every digital activation.

    fuse-activation routes an activation of a digital value (tanh(c_t)) through
    identity columns when the chip has room; a chip with a fixed count that
    place filled to the last array would leave it none, so that a larger chip
    fused fewer activations than a smaller one. Counting every such activation
    (whether or not fuse-activation will want it) errs on the side of room.
    """
    piece = min(rows, (cols - 1) // 2)
    if piece < 1:
        return 0
    total = 0
    for op in module.walk():
        if op.name == "cim.activation":
            x = op.operands[0]
            width = x.type.shape[-1] if x is not None else None
            if isinstance(width, int) and x is not None and analog_pieces(x) is None:
                total += -(-width // piece)
    return total


def _arrays_needed(placement: list[tuple[_Unit, int, int]]) -> int:
    return 1 + max((a for _, a, _ in placement), default=-1)


@register_pass
@dataclass(frozen=True)
class Place(ModulePass):
    """Assign tiles to physical arrays, grouping columns that share an activation; refuse models that do not fit.

    ``arrays`` is the chip's array count; 0 sizes the chip to the model (as many as the mapping needs).
    """

    name = "place"
    rows: int | None = from_hardware(lambda hw: hw.array.rows, "array.rows")
    cols: int | None = from_hardware(lambda hw: hw.array.cols, "array.cols")
    arrays: int | None = from_hardware(lambda hw: hw.array.limit or 0, "array.count; 0: auto, as many as the mapping needs")
    ramp_cols: bool = True

    def apply(self, module: Module) -> bool:
        if self.arrays < 0:
            raise CimcError(f"place arrays must be a count of arrays, or 0 for as many as the model needs; got {self.arrays}")
        tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
        activation_keys = ActivationKeys()
        empty = _Array(0, self.cols, self.ramp_cols)
        for tile in tiles:
            r0, r1 = tile.attributes["rows"]  # type: ignore[misc]
            c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
            if r1 - r0 > self.rows or not empty.fits(c1 - c0, activation_keys(tile)):
                raise CimcError(f"a tile of block '{tile.attributes.get('block')}' is {r1 - r0} x {c1 - c0} but an array has "
                                f"{self.rows} rows and {self.cols} bit lines: run 'tile' with the same array size first")
        units = placement_units(tiles, read_sets(module), activation_keys)
        placement = pack(units, self.cols, self.ramp_cols, dense=False)
        if self.arrays and _arrays_needed(placement) + identity_arrays(module, self.rows, self.cols) > self.arrays:
            # Too tight to keep activations apart and leave fuse-activation its identity columns: pack denser
            # if that takes fewer arrays, so that what is left can still serve identity columns.
            dense = pack(units, self.cols, self.ramp_cols, dense=True)
            if _arrays_needed(dense) < _arrays_needed(placement):
                placement = dense
        needed = _arrays_needed(placement)
        if self.arrays and needed > self.arrays:
            raise CimcError(f"the model needs {needed} arrays of {self.rows} x {self.cols}, but the chip has {self.arrays}")
        for unit, array, col in placement:
            for tile in unit.tiles:
                tile.attributes.update({"array": array, "array_row": 0, "array_col": col})
        module.attributes["arrays_used"] = needed
        return bool(tiles)
