"""The IR verifier: structural invariants plus each op kind's own rules.

Checked, in this order, for every op:
- its kind is registered; operand/result arity, attributes and region count
  match the definition; its own ``verify`` hook (type rules) passes;
- every operand is dominated by its definition (defined earlier in the same
  block or in an enclosing block, before the op that holds the region);
- use lists agree with operand lists in both directions;
- blocks end with exactly one terminator, and the graph ends with ``builtin.return``.
"""

from __future__ import annotations

from functools import lru_cache
from operator import is_

from cimc.attributes import is_annotation
from cimc.dialects import lookup
from cimc.dialects.registry import ArgSpec, OpDef, VerifyError
from cimc.ir import Block, Module, Operation, Value


Memo = dict[int, tuple]  # id(op) -> (op, the op's verified signature, the objects the signature names)


def verify(module: Module, memo: Memo | None = None) -> None:
    """Raise :class:`VerifyError` at the first op that breaks a rule.

    ``memo`` makes verify-each cheap (the pass manager keeps one across its
    runs): an op whose own rules passed in the previous run and whose kind,
    operands, operand and result types, attributes and region count are still
    the very same objects is not checked against its definition again, since
    those rules read nothing else (attributes and types are immutable). The
    structural rules (dominance, use lists, terminators) still run on every op.
    The memo is replaced by this run's, so erased ops leave it.
    """
    references: dict[int, int] = {}
    values: list[Value] = []
    fresh: Memo | None = {} if memo is not None else None
    _verify_block(module.body, set(), "builtin.return", None, references, values, memo, fresh)
    if memo is not None and fresh is not None:
        memo.clear()
        memo.update(fresh)
    for value in values:
        if references.get(id(value), 0) != len(value.uses):
            user = value.uses[0].op if value.uses else None
            raise VerifyError(user, f"use list of %{value.name} has {len(value.uses)} entries but "
                                    f"{references.get(id(value), 0)} operands read it")


def _verify_block(block: Block, visible: set[int], expected_terminator: str | None, owner: Operation | None,
                  references: dict[int, int], values: list[Value], memo: Memo | None = None,
                  fresh: Memo | None = None) -> None:
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
            _verify_block(region.block, scope, None, op, references, values, memo, fresh)
        if fresh is None:
            _verify_op(op, opdef)
        else:
            _verify_op_memoized(op, opdef, memo, fresh)  # type: ignore[arg-type]
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
    if len(value.uses) > 1 and len(set((id(u.op), u.index) for u in value.uses)) != len(value.uses):
        raise VerifyError(value.uses[0].op, f"use list of %{value.name} lists one operand twice")
    for use in value.uses:
        if use.index >= len(use.op.operands) or use.op.operands[use.index] is not value:
            raise VerifyError(use.op, f"use list of %{value.name} is stale: '{use.op.name}' operand #{use.index} is not it")
        if use.op.parent is None:
            raise VerifyError(use.op, f"%{value.name} is used by an erased '{use.op.name}'")


def _verify_op_memoized(op: Operation, opdef: OpDef, memo: Memo, fresh: Memo) -> None:
    # The entry holds the very objects (so no id can be reused while it may match) and is compared by identity.
    operands = tuple(op.operands)
    types = tuple([v.type if v is not None else None for v in operands] + [r.type for r in op.results])
    # Annotations (dotted names) change no op-local rule's answer: a pass that only adds them (schedule's
    # stages, fuse-activation's reasons) leaves the op verified.
    attrs = [(k, v) for k, v in op.attributes.items() if not is_annotation(k)]
    names, values = tuple(k for k, _ in attrs), tuple(v for _, v in attrs)
    entry = memo.get(id(op))
    if entry is None or not (entry[0] is op and entry[1] == (op.name, len(op.regions), names)
                             and _same(entry[2], operands) and _same(entry[3], types) and _same(entry[4], values)):
        _verify_op(op, opdef)
    fresh[id(op)] = (op, (op.name, len(op.regions), names), operands, types, values)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(map(is_, a, b))


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


@lru_cache(maxsize=None)
def _arity(specs: tuple[ArgSpec, ...]) -> tuple[int, bool, int]:
    """(required, variadic, optional) of an op definition's slots; cached, since every op of a kind asks again."""
    return (sum(s.kind == "single" for s in specs), any(s.kind == "variadic" for s in specs),
            sum(s.kind == "optional" for s in specs))


def _check_arity(op: Operation, what: str, values: list, specs: tuple[ArgSpec, ...]) -> None:
    required, variadic, optional = _arity(specs)
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
