"""Canonicalization: local simplifications to a fixed point, then dead code elimination.

Each op kind has a short list of patterns; a pattern rewrites one op and says
whether it changed anything. Adding a simplification means adding a function
to :data:`PATTERNS`, not a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cimc.builder import Builder
from cimc.dialects.builtin import constant_array
from cimc.ir import Module, Operation
from cimc.pass_manager import ModulePass, register_pass
from cimc.passes.dce import eliminate_dead_code

Pattern = Callable[[Operation], bool]


def _forward_operand(op: Operation) -> bool:
    """``y = Identity(x)``: every use of y reads x instead."""
    source = op.operands[0]
    result = op.results[0]
    if source is None or source.type != result.type or not result.uses:
        return False
    result.replace_all_uses_with(source)
    return True


def _slice_of_concat(op: Operation) -> bool:
    """``Slice(Concat(a, b, ...))`` along the concat axis, within one part: slice that part instead (or take it whole)."""
    data = op.operands[0]
    concat = getattr(data, "op", None)
    if concat is None or concat.name != "onnx.Concat" or len(op.operands) < 4:
        return False
    starts, ends, axes = (constant_array(v) for v in op.operands[1:4])
    steps = constant_array(op.operands[4]) if len(op.operands) > 4 and op.operands[4] is not None else None
    assert data is not None
    rank = data.type.rank
    axis = int(concat.attributes["axis"]) % rank  # type: ignore[arg-type]
    if starts is None or ends is None or axes is None or starts.size != 1 or int(axes[0]) % rank != axis \
            or (steps is not None and int(steps[0]) != 1):
        return False
    start, end = int(starts[0]), int(ends[0])
    offset = 0
    for part in concat.operands:
        assert part is not None
        width = part.type.shape[axis]
        if not isinstance(width, int) or start < 0 or end < 0:
            return False
        if offset <= start and end <= offset + width:
            result = op.results[0]
            if start == offset and end == offset + width and part.type == result.type:
                result.replace_all_uses_with(part)
                return True
            b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
            bounds = [b.const(np.array([v], np.int64)) for v in (start - offset, end - offset)]
            result.replace_all_uses_with(b.value("onnx.Slice", [part, *bounds, op.operands[3]], result.type))
            return True
        offset += width
    return False


def _hoist_constant(op: Operation) -> bool:
    """Constants inside a loop body do not depend on the step: define them once, before the loop."""
    block = op.parent
    region = block.parent if block is not None else None
    loop = region.parent if region is not None else None
    if loop is None or loop.parent is None:
        return False
    op.detach()
    loop.parent.insert_before(loop, op)
    return True


PATTERNS: dict[str, list[Pattern]] = {
    "onnx.Identity": [_forward_operand],
    "onnx.Slice": [_slice_of_concat],
    "builtin.constant": [_hoist_constant],
}


@register_pass
@dataclass(frozen=True)
class Canonicalize(ModulePass):
    """Apply each op kind's simplification patterns until nothing changes, then remove dead ops."""

    name = "canonicalize"
    max_iterations: int = 10

    def apply(self, module: Module) -> bool:
        changed = False
        for _ in range(self.max_iterations):
            round_changed = False
            for op in list(module.walk()):
                if op.parent is None:
                    continue
                for pattern in PATTERNS.get(op.name, ()):
                    round_changed |= pattern(op)
            round_changed |= eliminate_dead_code(module.body)
            changed |= round_changed
            if not round_changed:
                break
        return changed
