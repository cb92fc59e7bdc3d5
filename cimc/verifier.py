"""The IR verifier: structural invariants plus each op kind's own rules.

Checked, in this order, for every op:
- its kind is registered; operand/result arity, attributes and region count
  match the definition; its own ``verify`` hook (type rules) passes;
- every operand is dominated by its definition (defined earlier in the same
  block or in an enclosing block, before the op that holds the region);
- use lists agree with operand lists in both directions;
- blocks end with exactly one terminator, and the graph ends with ``builtin.return``.

Verifying after every pass must stay cheap on models with millions of weights:
the structural checks are linear in the number of ops, and an op's own rules
(which may scan its weight and conductance tensors) are re-run only when the op
changed since the last verification with the same :class:`VerifyCache`: a new
op, or one whose attributes (annotations aside), operand types or result types
are not the objects they were.  Attribute values are immutable, so an unchanged object needs no new
look.  Only ops that carry tensors (weights, conductances, constants) are
cached: for the others, checking is as cheap as deciding whether to check.  Ops
with regions are always checked in full (their rules read the body).
"""

from __future__ import annotations

from cimc.attributes import is_annotation
from cimc.dialects import lookup
from cimc.dialects.registry import ArgSpec, OpDef, VerifyError
from cimc.ir import Block, Module, Operation, Value


class VerifyCache:
    """What each op looked like when its own rules last passed; entries of ops no longer in the IR are dropped."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple] = {}
        self._next: dict[int, tuple] = {}

    def unchanged(self, op: Operation) -> bool:
        entry = self._seen.get(id(op))
        return (entry is not None and entry[0] is op and entry[1] == op.name and _same(entry[2], op.attributes)
                and _same_types(entry[3], op.operands) and _same_types(entry[4], op.results))

    def keep(self, op: Operation) -> None:
        self._next[id(op)] = (op, op.name, _rule_attributes(op), [None if v is None else v.type for v in op.operands],
                              [r.type for r in op.results])

    def start(self) -> None:
        self._next = {}

    def finish(self) -> None:
        self._seen, self._next = self._next, {}


_TENSOR_OPS: dict[str, bool] = {}


def _holds_tensors(opdef: OpDef) -> bool:
    if opdef.name not in _TENSOR_OPS:
        _TENSOR_OPS[opdef.name] = any(spec.kind == "tensor" for spec in opdef.attributes.values())
    return _TENSOR_OPS[opdef.name]


def _rule_attributes(op: Operation) -> dict:
    """The attributes an op's rules read: annotations (``sched.stage``) change nothing an op computes."""
    return {k: v for k, v in op.attributes.items() if not is_annotation(k)}


def _same(old: dict, new: dict) -> bool:
    count = 0
    for k, v in new.items():
        if not is_annotation(k):
            if old.get(k, _MISSING) is not v:
                return False
            count += 1
    return count == len(old)


_MISSING = object()


def _same_types(old: list, values: list) -> bool:
    return len(old) == len(values) and all((v is None and t is None) or (v is not None and t == v.type)
                                           for t, v in zip(old, values))


def verify(module: Module, cache: VerifyCache | None = None) -> None:
    """Raise :class:`VerifyError` at the first op that breaks a rule; ``cache`` skips ops unchanged since its last run."""
    references: dict[int, int] = {}
    values: list[Value] = []
    if cache is not None:
        cache.start()
    _verify_block(module.body, set(), "builtin.return", None, references, values, cache)
    if cache is not None:
        cache.finish()
    for value in values:
        if references.get(id(value), 0) != len(value.uses):
            user = value.uses[0].op if value.uses else None
            raise VerifyError(user, f"use list of %{value.name} has {len(value.uses)} entries but "
                                    f"{references.get(id(value), 0)} operands read it")


def _verify_block(block: Block, visible: set[int], expected_terminator: str | None, owner: Operation | None,
                  references: dict[int, int], values: list[Value], cache: VerifyCache | None) -> None:
    scope = set(visible)
    for arg in block.args:
        scope.add(id(arg))
        _verify_uses(arg)
        values.append(arg)
    for index, op in enumerate(block.ops):
        opdef = lookup(op.name)
        if opdef is None:
            raise VerifyError(op, f"unknown op '{op.name}'")
        if op.parent is not block:
            raise VerifyError(op, f"'{op.name}' does not know the block it is in")
        is_last = index == len(block.ops) - 1
        if opdef.terminator and not is_last:
            raise VerifyError(op, f"terminator '{op.name}' must be the last op of its block")
        for i, value in enumerate(op.operands):
            if value is None:
                continue
            if id(value) not in scope:
                what = f"%{value.name}" if value.name else f"operand #{i}"
                raise VerifyError(op, f"{what} is used before it is defined (not dominated by its definition)")
            references[id(value)] = references.get(id(value), 0) + 1
        for region in op.regions:
            if region.parent is not op or region.block.parent is not region:
                raise VerifyError(op, f"'{op.name}' has a region that does not point back to it")
            _verify_block(region.block, scope, None, op, references, values, cache)
        cached = cache is not None and not op.regions and _holds_tensors(opdef)
        if not cached or not cache.unchanged(op):  # type: ignore[union-attr]
            _verify_op(op, opdef)
        if cached:
            cache.keep(op)  # type: ignore[union-attr]
        for res in op.results:
            scope.add(id(res))
            _verify_uses(res)
            values.append(res)
    term = block.terminator
    if expected_terminator is not None and (term is None or term.name != expected_terminator):
        raise VerifyError(term, f"the graph must end with '{expected_terminator}'")
    if owner is not None:
        term_def = lookup(term.name) if term is not None else None
        if term_def is None or not term_def.terminator:
            raise VerifyError(owner, f"the region of '{owner.name}' must end with a terminator")


def _verify_uses(value: Value) -> None:
    """Every use points at an operand slot holding ``value``, once; with the reference count this proves agreement."""
    if len(set((id(u.op), u.index) for u in value.uses)) != len(value.uses):
        raise VerifyError(value.uses[0].op, f"use list of %{value.name} lists one operand twice")
    for use in value.uses:
        if use.index >= len(use.op.operands) or use.op.operands[use.index] is not value:
            raise VerifyError(use.op, f"use list of %{value.name} is stale: '{use.op.name}' operand #{use.index} is not it")
        if use.op.parent is None:
            raise VerifyError(use.op, f"%{value.name} is used by an erased '{use.op.name}'")


def _verify_op(op: Operation, opdef: OpDef) -> None:
    _check_arity(op, "operand", op.operands, opdef.operands)
    _check_arity(op, "result", op.results, opdef.results)
    for name, spec in opdef.attributes.items():
        if spec.required and name not in op.attributes:
            raise VerifyError(op, f"'{op.name}' requires attribute '{name}'")
    for name, value in op.attributes.items():
        spec = opdef.attributes.get(name)
        if spec is None and is_annotation(name):
            continue
        if spec is None:
            known = ", ".join(sorted(opdef.attributes)) or "none"
            raise VerifyError(op, f"'{op.name}' has no attribute '{name}' (it takes: {known})")
        problem = spec.check(value)
        if problem:
            raise VerifyError(op, f"attribute '{name}' of '{op.name}' {problem}")
    if len(op.regions) != opdef.num_regions:
        raise VerifyError(op, f"'{op.name}' takes {opdef.num_regions} regions, got {len(op.regions)}")
    if opdef.verify is not None:
        opdef.verify(op)


def _check_arity(op: Operation, what: str, values: list, specs: tuple[ArgSpec, ...]) -> None:
    required = sum(s.kind == "single" for s in specs)
    variadic = any(s.kind == "variadic" for s in specs)
    optional = sum(s.kind == "optional" for s in specs)
    n = len(values)
    if n < required or (not variadic and n > required + optional):
        expected = f"at least {required}" if variadic else (
            f"{required}" if not optional else f"{required} to {required + optional}")
        raise VerifyError(op, f"wrong arity: '{op.name}' takes {expected} {what}s, got {n}")
    if variadic:
        return
    for value, spec in zip(values, specs):
        if value is None and spec.kind == "single":
            raise VerifyError(op, f"required {what} '{spec.name}' of '{op.name}' is absent")
