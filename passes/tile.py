"""tile: cut every crossbar MVM into pieces that fit one array.

Columns split freely; cuts prefer the boundaries where the consumers slice the
result (an LSTM's i/o/f/c gates), so that a tile's columns share one
activation where possible and the next passes can give them one ramp. Rows
split when the stacked input is taller than an array; the partial sums are
then added as currents on shared bit lines before a single conversion
(``cim.analog_sum`` then ``cim.adc``) when the hardware can, and otherwise
converted one by one and added digitally (``cim.adc`` on each, then
``onnx.Add``). The IR says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimc.attributes import Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.dialects.builtin import constant_array
from cimc.hardware import load_hardware
from cimc.ir import Module, Operation, Value
from cimc.pass_manager import ModulePass, register_pass
from cimc.types import TensorType

_DEFAULT = load_hardware()


def consumer_boundaries(value: Value) -> set[int]:
    """Column offsets where the users of ``value`` slice its last axis (empty if any user does something else)."""
    cols = value.type.shape[-1]
    cuts: set[int] = set()
    for use in value.uses:
        op = use.op
        if op.name != "onnx.Slice" or use.index != 0:
            return set()
        starts, ends, axes, steps = (constant_array(v) if v is not None else None
                                     for v in (op.operands + [None, None])[1:5])
        rank = value.type.rank
        if starts is None or ends is None or starts.size != 1 or (axes is not None and int(axes[0]) % rank != rank - 1) \
                or (axes is None and rank != 1) or (steps is not None and int(steps[0]) != 1):
            return set()
        assert isinstance(cols, int)
        cuts.update(min(max(int(x) + (cols if int(x) < 0 else 0), 0), cols) for x in (starts[0], ends[0]))
    return cuts


def column_chunks(cols: int, cuts: set[int], capacity: int) -> list[tuple[int, int]]:
    """Pack the groups between ``cuts`` into chunks of at most ``capacity`` columns, splitting only oversized groups."""
    bounds = sorted({0, cols} | {c for c in cuts if 0 < c < cols})
    chunks: list[tuple[int, int]] = []
    start = 0
    for lo, hi in zip(bounds, bounds[1:]):
        if hi - start <= capacity:
            continue
        if lo > start:
            chunks.append((start, lo))
            start = lo
        while hi - start > capacity:
            chunks.append((start, start + capacity))
            start += capacity
    chunks.append((start, cols))
    return chunks


def tile_mvm(op: Operation, rows: int, capacity: int, analog: bool, adc_bits: int) -> None:
    attrs = op.attributes
    g_pos, g_neg, scale = (attrs[k].array for k in ("g_pos", "g_neg", "g_scale"))  # type: ignore[union-attr]
    total_rows, cols = g_pos.shape
    block = str(attrs.get("block", "mvm"))
    result = op.results[0]
    b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
    lead = result.type.shape[:-1]
    outputs = []
    for c0, c1 in column_chunks(cols, consumer_boundaries(result), capacity):
        part_type = TensorType(result.type.dtype, (*lead, c1 - c0))
        partials = []
        for r0 in range(0, total_rows, rows):
            r1 = min(r0 + rows, total_rows)
            key = f"{block}.r{r0}c{c0}"
            partials.append(b.value("cim.tile_mvm", op.operands, part_type, {
                "g_pos": Tensor(g_pos[r0:r1, c0:c1], key=f"{key}.g_pos"),
                "g_neg": Tensor(g_neg[r0:r1, c0:c1], key=f"{key}.g_neg"),
                "g_scale": Tensor(scale[c0:c1], key=f"{key}.g_scale"),
                "bias_rows": attrs.get("bias_rows", 0), "block": block,
                "rows": (r0, r1), "cols": (c0, c1)}))
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
    rows: int = _DEFAULT.array.rows
    cols: int = _DEFAULT.array.cols
    analog_sum: bool = _DEFAULT.converters.analog_partial_sums
    adc_bits: int = _DEFAULT.converters.adc_bits

    def apply(self, module: Module) -> bool:
        if self.rows < 1 or self.cols < 2:
            raise CimcError(f"tile needs at least 1 row and 2 columns (one differential pair), got {self.rows} x {self.cols}")
        ops = [op for op in module.walk() if op.name == "cim.crossbar_mvm"]
        for op in ops:
            tile_mvm(op, self.rows, self.cols // 2, self.analog_sum, self.adc_bits)
        return bool(ops)
