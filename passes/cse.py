"""Common subexpression elimination."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.attributes import Tensor
from cimc.dialects import lookup
from cimc.ir import Block, Module, Operation
from cimc.pass_manager import ModulePass, register_pass


def _key(op: Operation) -> tuple | None:
    """What two ops must share to be twins; tensors enter by type only, so no weight is hashed unless needed."""
    opdef = lookup(op.name)
    if opdef is None or not opdef.pure or op.regions or opdef.terminator:
        return None
    attrs = []
    for k, v in op.attributes.items():
        t = type(v)
        if t is Tensor:
            attrs.append((k, "tensor", v.array.dtype.char, v.array.shape))  # type: ignore[union-attr]
        elif t is int or t is str or (t is tuple and all(type(x) is int for x in v)):  # type: ignore[union-attr]
            attrs.append((k, t, v))  # equal exactly when their reprs are
        else:
            attrs.append((k, repr(v)))  # floats: NaN equals NaN, -0.0 differs from 0.0
    attrs.sort(key=lambda item: item[0])
    return (op.name, tuple(id(v) if v is not None else None for v in op.operands), tuple(attrs), tuple(r.type for r in op.results))


def _same_tensors(a: Operation, b: Operation) -> bool:
    """Content equality of the tensor attributes (digests, computed only for ops whose other parts agree)."""
    return all(v == b.attributes[k] for k, v in a.attributes.items() if isinstance(v, Tensor))


def _cse_block(block: Block, available: dict[tuple, list[Operation]]) -> bool:
    changed = False
    scope = {k: list(v) for k, v in available.items()}
    for op in list(block.ops):
        for region in op.regions:
            changed |= _cse_block(region.block, scope)
        key = _key(op)
        if key is None:
            continue
        candidates = scope.setdefault(key, [])
        twin = next((c for c in candidates if _same_tensors(op, c)), None)
        if twin is None:
            candidates.append(op)
            continue
        for old, new in zip(op.results, twin.results):
            old.replace_all_uses_with(new)
        op.erase()
        changed = True
    return changed


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(ModulePass):
    """Merge identical side-effect-free ops (same kind, operands, attributes and types).

    Ops in a loop body may reuse an identical op defined before the loop,
    which hoists nothing but removes the duplicate inside.
    """

    name = "cse"

    def apply(self, module: Module) -> bool:
        return _cse_block(module.body, {})
