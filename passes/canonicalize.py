"""Canonicalization: local simplifications to a fixed point, then dead code elimination."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


PATTERNS: dict[str, list[Pattern]] = {
    "onnx.Identity": [_forward_operand],
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
