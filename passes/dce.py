"""Dead code elimination."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cimc.dialects import lookup
from cimc.ir import Block, Module, Value
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


def erase_if_dead(values: Iterable[Value | None]) -> None:
    """Erase the pure producers of ``values`` that nobody uses any more, and then theirs: the part of a DCE
    sweep that one rewrite made dead, done at once, so that the weights it held are freed before the next."""
    stack = [v for v in values if v is not None]
    while stack:
        op = getattr(stack.pop(), "op", None)
        if op is None or op.parent is None or op.regions or any(r.uses for r in op.results):
            continue
        opdef = lookup(op.name)
        if opdef is None or not opdef.pure or opdef.terminator:
            continue
        stack.extend(v for v in op.operands if v is not None)
        op.erase()


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(ModulePass):
    """Remove side-effect-free ops whose results are unused."""

    name = "dce"

    def apply(self, module: Module) -> bool:
        return eliminate_dead_code(module.body)
