"""tile: cut every crossbar MVM into pieces that fit one array.

Columns split freely; cuts prefer the boundaries where the consumers slice the
result (an LSTM's i/o/f/c gates), so that a tile's columns share one
activation where possible and the next passes can give them one ramp. Gates
of one function run on into each other (the LSTM's i, o, f sigmoids fill
arrays end to end), since cutting there costs no ramp column. With
``ramp_cols`` every distinct activation in a tile reserves a bit line for its
ramp column, so a gate that would fill an array is split to leave room. Rows
split when the stacked input is taller than an array; the partial sums are
then added as currents on shared bit lines before a single conversion
(``cim.analog_sum`` then ``cim.adc``) when the hardware can, and otherwise
converted one by one and added digitally (``cim.adc`` on each, then
``onnx.Add``). The IR says which.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from cimc.attributes import EXACT_REFCOUNTS, Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.dialects.builtin import constant_array
from cimc.dialects.cim import activation_key
from cimc.ir import Module, Operation, Value
from cimc.pass_manager import ModulePass, from_hardware, register_pass
from cimc.types import TensorType

Group = tuple[int, int, str]  # columns [lo, hi) and the activation they feed ("linear" if none)


def slice_range(op: Operation, value: Value) -> tuple[int, int] | None:
    """The last-axis column range a unit-step ``onnx.Slice`` of ``value`` takes, or None for any other slice."""
    cols = value.type.shape[-1]
    starts, ends, axes, steps = (constant_array(v) if v is not None else None for v in (op.operands + [None, None])[1:5])
    rank = value.type.rank
    if not isinstance(cols, int) or starts is None or ends is None or starts.size != 1 \
            or (axes is not None and int(axes[0]) % rank != rank - 1) or (axes is None and rank != 1) \
            or (steps is not None and int(steps[0]) != 1):
        return None
    lo, hi, _ = slice(int(starts[0]), int(ends[0])).indices(cols)
    return lo, max(lo, hi)


def column_groups(value: Value) -> list[Group]:
    """Split the columns of an MVM result by the activation each consumer applies to them.

    Columns that no activation reads directly (or a result used whole by
    something else) form "linear" groups; overlapping slices give up and
    return one linear group.
    """
    cols = value.type.shape[-1]
    assert isinstance(cols, int)
    if len(value.uses) == 1 and value.uses[0].op.name == "cim.activation":
        return [(0, cols, activation_key(value.uses[0].op))]
    groups: list[Group] = []
    for use in value.uses:
        span = slice_range(use.op, value) if use.op.name == "onnx.Slice" and use.index == 0 else None
        if span is None:
            return [(0, cols, "linear")]
        users = use.op.results[0].uses
        key = activation_key(users[0].op) if len(users) == 1 and users[0].op.name == "cim.activation" else "linear"
        groups.append((span[0], span[1], key))
    groups.sort()
    out: list[Group] = []
    cursor = 0
    for lo, hi, key in groups:
        if lo < cursor:
            return [(0, cols, "linear")]
        if lo > cursor:
            out.append((cursor, lo, "linear"))
        out.append((lo, hi, key))
        cursor = hi
    if cursor < cols:
        out.append((cursor, cols, "linear"))
    return out


class ActivationKeys:
    """``activation_keys`` of many tiles over one unchanging IR, with each Concat's offsets, each Slice's
    columns and what each value's columns reach found once (per tile they cost O(Concat operands), which made a
    pass over all tiles quadratic)."""

    def __init__(self) -> None:
        self._offsets: dict[int, tuple[Operation, list[int]]] = {}
        self._spans: dict[int, tuple[Operation, tuple[int, int] | None]] = {}
        self._reach: dict[tuple[int, int, int], tuple[Value, frozenset[str]]] = {}

    def offsets(self, concat: Operation) -> list[int]:
        entry = self._offsets.get(id(concat))
        if entry is None or entry[0] is not concat:
            widths = [int(v.type.shape[-1]) for v in concat.operands]  # type: ignore[arg-type, union-attr]
            entry = self._offsets[id(concat)] = (concat, [0, *accumulate(widths[:-1])])
        return entry[1]

    def span(self, op: Operation, value: Value) -> tuple[int, int] | None:
        entry = self._spans.get(id(op))
        if entry is None or entry[0] is not op:
            entry = self._spans[id(op)] = (op, slice_range(op, value))
        return entry[1]

    def __call__(self, tile: Operation) -> tuple[str, ...]:
        """The activations that this tile's columns reach after conversion ('linear' where a column reaches none).

        Columns are followed individually through conversions, concatenations and
        slices of the last axis, so pieces of one gate that a Concat joins again
        are not mistaken for the whole gate.
        """
        return tuple(sorted(self._reached(tile.results[0], 0, int(tile.results[0].type.shape[-1]))))  # type: ignore[arg-type]

    def _reached(self, value: Value, lo: int, hi: int) -> frozenset[str]:
        """What columns [lo, hi) of ``value`` reach; found once per (value, columns): the row tiles of one column
        chunk all reach it through one analog sum."""
        entry = self._reach.get((id(value), lo, hi))
        if entry is not None and entry[0] is value:
            return entry[1]
        keys: set[str] = set()
        for use in value.uses:
            op = use.op
            if op.name in ("cim.analog_sum", "cim.adc"):
                keys |= self._reached(op.results[0], lo, hi)
            elif op.name == "onnx.Concat" and int(op.attributes["axis"]) % op.results[0].type.rank == op.results[0].type.rank - 1:  # type: ignore[arg-type]
                offset = self.offsets(op)[use.index]
                keys |= self._reached(op.results[0], lo + offset, hi + offset)
            elif op.name == "onnx.Slice" and (span := self.span(op, value)) is not None:
                if max(lo, span[0]) < min(hi, span[1]):
                    keys |= self._reached(op.results[0], max(lo, span[0]) - span[0], min(hi, span[1]) - span[0])
            elif op.name == "cim.activation" or (op.name == "cim.nl_adc" and use.index == 0):
                keys.add(activation_key(op))
            else:
                keys.add("linear")
        reached = frozenset(keys)
        self._reach[(id(value), lo, hi)] = (value, reached)
        return reached


def activation_keys(tile: Operation) -> tuple[str, ...]:
    """The activations that this tile's columns reach (see :class:`ActivationKeys`, which a pass over many tiles uses)."""
    return ActivationKeys()(tile)


def column_chunks(groups: list[Group], bitlines: int, ramp_cols: bool) -> list[tuple[int, int]]:
    """Pack consecutive column groups into chunks that fit ``bitlines`` bit lines.

    A weight column takes two bit lines (G+ and G-); with ``ramp_cols`` each
    distinct activation in a chunk also reserves one bit line for its ramp.
    Chunks end at group boundaries and a group too wide for one array is cut
    to array-wide pieces; or else a group whose activation the chunk already
    serves fills the chunk's remaining room (no extra ramp: a 16-column gate
    shares an array with the next gate of its function, and a 32-column gate
    does not leave a 1-column remainder of its own). The second is taken
    when it needs fewer chunks, since it converts some gates in more pieces.
    """
    aligned = _chunks(groups, bitlines, ramp_cols, run_on=False)
    run_on = _chunks(groups, bitlines, ramp_cols, run_on=True)
    return run_on if len(run_on) < len(aligned) else aligned


def _chunks(groups: list[Group], bitlines: int, ramp_cols: bool, run_on: bool) -> list[tuple[int, int]]:
    def cost(width: int, keys: set[str]) -> int:
        return 2 * width + (len(keys - {"linear"}) if ramp_cols else 0)

    chunks: list[tuple[int, int]] = []
    start, keys = 0, set()
    for lo, hi, key in groups:
        if cost(hi - start, keys | {key}) <= bitlines:
            keys.add(key)
            continue
        if run_on and key in keys:
            cut = start + (bitlines - cost(0, keys)) // 2
            chunks.append((start, cut))
            start, keys = cut, set()
        elif lo > start:
            chunks.append((start, lo))
            start, keys = lo, set()
        piece = (bitlines - cost(0, {key})) // 2
        if piece < 1:
            raise CimcError(f"an array of {bitlines} bit lines cannot hold one weight column and its ramp column")
        while cost(hi - start, {key}) > bitlines:
            chunks.append((start, start + piece))
            start += piece
        keys = {key}
    chunks.append((start, groups[-1][1]))
    return chunks


def _conductance_tiles(op: Operation, chunks: list[tuple[int, int]], rows: int) -> dict[tuple[int, int], dict[str, Tensor]]:
    """The MVM's G+ and G- cut into tiles, by (first row, first column) and then name.

    Each column chunk is copied once (C-contiguous, see :func:`_chunk_copies`), and its row tiles are windows of the
    copy: one copy per chunk, not per tile, and the later passes read each tile's devices in order. G+ is cut whole
    and deleted from the op before G- is cut.
    """
    block = str(op.attributes.get("block", "mvm"))
    total_rows = op.attributes["g_pos"].type.shape[0]  # type: ignore[union-attr]
    tiles: dict[tuple[int, int], dict[str, Tensor]] = {}
    for name in ("g_pos", "g_neg"):
        copies = _chunk_copies(op.attributes.pop(name), chunks)  # type: ignore[arg-type]
        for (c0, _), chunk in zip(chunks, copies):
            for r0 in range(0, total_rows, rows):
                tiles.setdefault((r0, c0), {})[name] = chunk.window((slice(r0, r0 + rows), slice(None)),
                                                                   key=f"{block}.r{r0}c{c0}.{name}")
    return tiles


_BAND_BYTES = 1 << 22  # rows of G moved to the chunk copies per step, before G's tail is given back


def _chunk_copies(g: Tensor, chunks: list[tuple[int, int]]) -> list[Tensor]:
    """A C-contiguous copy of each column chunk of ``g``, with ``g``'s known lower bound (as a window has it).

    When this pass holds the only reference to ``g`` (map-conductance's fresh G+ and G-: nothing else reads them),
    its array is emptied from the last rows up, a band of rows at a time, and shrunk after each band
    (``ndarray.resize``: realloc gives the tail back), so that G and its copies are never held at once: the pass adds
    one band to the memory peak, not one weights-sized array. Otherwise the chunks are copied from the array as
    it is.
    """
    floor = g.known_lower_bound()
    array = g.array
    # ``g`` and getrefcount's argument count for the tensor (the caller passes what it popped); the tensor, ``array``
    # and the argument for the array.
    if not (EXACT_REFCOUNTS and sys.getrefcount(g) == 2 and sys.getrefcount(array) == 3 and array.flags.owndata
            and array.ndim == 2 and array.flags.c_contiguous):
        return [g.window((slice(None), slice(c0, c1))).contiguous() for c0, c1 in chunks]
    del g  # the tensor is let go; ``array`` is its only holder, so that resize may shrink it
    total_rows, cols = array.shape
    copies = [np.empty((total_rows, c1 - c0), array.dtype) for c0, c1 in chunks]
    band = max(1, _BAND_BYTES // max(1, array.strides[0]))
    shrink = True
    for r1 in range(total_rows, 0, -band):
        r0 = max(0, r1 - band)
        for (c0, c1), copy in zip(chunks, copies):
            copy[r0:r1] = array[r0:r1, c0:c1]
        if shrink:
            try:
                array.resize((r0, cols), refcheck=True)
            except ValueError:  # numpy sees another holder (a weak reference): the rows stay, the copies are made
                shrink = False
    return [Tensor.adopt(copy, lower_bound=floor) for copy in copies]


def tile_mvm(op: Operation, rows: int, bitlines: int, ramp_cols: bool, analog: bool, adc_bits: int) -> None:
    attrs = op.attributes
    scale = attrs["g_scale"].array  # type: ignore[union-attr]
    total_rows, cols = attrs["g_pos"].type.shape  # type: ignore[union-attr]
    block = str(attrs.get("block", "mvm"))
    result = op.results[0]
    b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
    lead = result.type.shape[:-1]
    outputs = []
    # The pieces of the per-row and per-column vectors are copied once and shared (read-only) by the tiles
    # of a row band or column chunk, each under its own key.
    row_scales = {r0: Tensor(attrs["row_scale"].array[r0:r0 + rows]) for r0 in range(0, total_rows, rows)} \
        if "row_scale" in attrs else {}  # type: ignore[union-attr]
    chunks = column_chunks(column_groups(result), bitlines, ramp_cols)
    conductances = _conductance_tiles(op, chunks, rows)
    for c0, c1 in chunks:
        part_type = TensorType(result.type.dtype, (*lead, c1 - c0))
        columns = {"g_scale": Tensor(scale[c0:c1]),
                   **{k: Tensor(attrs[k].array[c0:c1]) for k in ("z_lo", "z_hi") if k in attrs}}  # type: ignore[union-attr]
        partials = []
        for r0 in range(0, total_rows, rows):
            r1 = min(r0 + rows, total_rows)
            key = f"{block}.r{r0}c{c0}"
            tile_attrs = {
                **conductances.pop((r0, c0)),
                "g_scale": columns["g_scale"].renamed(f"{key}.g_scale"),
                "bias_rows": attrs.get("bias_rows", 0), "block": block,
                "rows": (r0, r1), "cols": (c0, c1)}
            if "input_scale" in attrs:
                tile_attrs["input_scale"] = attrs["input_scale"]
            tile_attrs.update({k: columns[k].renamed(f"{key}.{k}") for k in ("z_lo", "z_hi") if k in columns})
            if row_scales:
                tile_attrs["row_scale"] = row_scales[r0].renamed(f"{key}.row_scale")
            partials.append(b.value("cim.tile_mvm", op.operands, part_type, tile_attrs))
        if len(partials) == 1 or analog:
            summed = partials[0] if len(partials) == 1 else b.value("cim.analog_sum", partials, part_type)
            outputs.append(b.value("cim.adc", [summed], part_type, {"bits": adc_bits}))
        else:
            converted = [b.value("cim.adc", [p], part_type, {"bits": adc_bits}) for p in partials]
            total = converted[0]
            for c in converted[1:]:
                total = b.value("onnx.Add", [total, c], part_type)
            outputs.append(total)
    joined = outputs[0] if len(outputs) == 1 else b.value("onnx.Concat", outputs, result.type, {"axis": result.type.rank - 1})
    result.replace_all_uses_with(joined)
    op.erase()


@register_pass
@dataclass(frozen=True)
class Tile(ModulePass):
    """Cut crossbar MVMs to the array size: rows x cols word/bit lines, a weight column using two bit lines."""

    name = "tile"
    rows: int | None = from_hardware(lambda hw: hw.array.rows, "array.rows")
    cols: int | None = from_hardware(lambda hw: hw.array.cols, "array.cols")
    analog_sum: bool | None = from_hardware(lambda hw: hw.converters.analog_partial_sums, "converters.analog_partial_sums")
    adc_bits: int | None = from_hardware(lambda hw: hw.converters.adc_bits, "converters.adc_bits")
    ramp_cols: bool = True

    def apply(self, module: Module) -> bool:
        if self.rows < 1 or self.cols < 2:
            raise CimcError(f"tile needs at least 1 row and 2 columns (one differential pair), got {self.rows} x {self.cols}")
        ops = [op for op in module.walk() if op.name == "cim.crossbar_mvm"]
        for op in ops:
            tile_mvm(op, self.rows, self.cols, self.ramp_cols, self.analog_sum, self.adc_bits)
        return bool(ops)
