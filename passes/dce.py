"""Dead code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.dialects import lookup
from cimc.ir import Block, Module
from cimc.pass_manager import ModulePass, register_pass


def eliminate_dead_code(block: Block) -> bool:
    """Erase pure ops whose results nobody uses, innermost and last first, so chains die in one sweep."""
    changed = False
    for op in reversed(list(block.ops)):
        for region in op.regions:
            changed |= eliminate_dead_code(region.block)
        opdef = lookup(op.name)
        if opdef is not None and opdef.pure and not opdef.terminator and not any(r.uses for r in op.results):
            op.erase()
            changed = True
    return changed


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(ModulePass):
    """Remove side-effect-free ops whose results are unused."""

    name = "dce"

    def apply(self, module: Module) -> bool:
        return eliminate_dead_code(module.body)
