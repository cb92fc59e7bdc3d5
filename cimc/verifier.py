"""The IR verifier: structural invariants plus each op kind's own rules.

Checked, in this order, for every op:
- its kind is registered; operand/result arity, attributes and region count
  match the definition; its own ``verify`` hook (type rules) passes;
- every operand is dominated by its definition (defined earlier in the same
  block or in an enclosing block, before the op that holds the region);
- use lists agree with operand lists in both directions;
- blocks end with exactly one terminator, and the graph ends with ``builtin.return``.

The structural rules (dominance, use lists, terminators) are checked in full on
every run. An op's own rules (arity, attributes, its kind's type rules) are
checked again only when something they read may have changed since the op last
passed them: its attributes (their dict's ``stamp``), its operands (the values
themselves, so also their producers) and their types, its result types. The
op keeps that record in ``Operation.verified``; ops with regions are always
checked, since their rules read their bodies. So the verifier still runs
before the first pass and after every one (as MLIR's verify-each), but a pass
pays for the ops it touched, not for the whole module each time.
"""

from __future__ import annotations

from functools import lru_cache

from cimc.attributes import is_annotation
from cimc.dialects import lookup
from cimc.dialects.registry import ArgSpec, OpDef, VerifyError
from cimc.ir import Attributes, Block, Module, Operation, Value


def verify(module: Module) -> None:
    """Raise :class:`VerifyError` at the first op that breaks a rule."""
    references: dict[int, int] = {}
    values: list[Value] = []
    _verify_block(module.body, set(), "builtin.return", None, references, values)
    for value in values:
        if references.get(id(value), 0) != len(value.uses):
            user = value.uses[0].op if value.uses else None
            raise VerifyError(user, f"use list of %{value.name} has {len(value.uses)} entries but "
                                    f"{references.get(id(value), 0)} operands read it")


def _verify_block(block: Block, visible: set[int], expected_terminator: str | None, owner: Operation | None,
                  references: dict[int, int], values: list[Value]) -> None:
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
            _verify_block(region.block, scope, None, op, references, values)
        record = _record(op, opdef)
        if record is None or op.verified != record:
            _verify_op(op, opdef)
            op.verified = record
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


def _record(op: Operation, opdef: OpDef) -> tuple | None:
    """What the op's own rules read, as compared by the next run (None: check it every time).

    The operands are held as values (compared by identity); attributes only by their stamp, so that replaced
    attribute tensors are not kept alive.
    """
    attributes = op.attributes
    if op.regions or type(attributes) is not Attributes:
        return None
    operands = op.operands
    return (opdef, attributes.stamp, tuple(operands), tuple(v.type for v in operands if v is not None),
            tuple(r.type for r in op.results))


def _verify_uses(value: Value) -> None:
    """Every use points at an operand slot holding ``value``, once; with the reference count this proves agreement."""
    if len(value.uses) > 1 and len(set((id(u.op), u.index) for u in value.uses)) != len(value.uses):
        raise VerifyError(value.uses[0].op, f"use list of %{value.name} lists one operand twice")
    for use in value.uses:
        if use.index >= len(use.op.operands) or use.op.operands[use.index] is not value:
            raise VerifyError(use.op, f"use list of %{value.name} is stale: '{use.op.name}' operand #{use.index} is not it")
        if use.op.parent is None:
            raise VerifyError(use.op, f"%{value.name} is used by an erased '{use.op.name}'")


def _verify_op(op: Operation, opdef: OpDef) -> None:
    _check_arity(op, "operand", op.operands, opdef.operands)
    _check_arity(op, "result", op.results, opdef.results)
    attributes = op.attributes
    for name in _required(opdef):
        if name not in attributes:
            raise VerifyError(op, f"'{op.name}' requires attribute '{name}'")
    specs = opdef.attributes
    for name, value in attributes.items():
        spec = specs.get(name)
        if spec is None:
            if is_annotation(name):
                continue
            known = ", ".join(sorted(specs)) or "none"
            raise VerifyError(op, f"'{op.name}' has no attribute '{name}' (it takes: {known})")
        problem = spec.check(value)
        if problem:
            raise VerifyError(op, f"attribute '{name}' of '{op.name}' {problem}")
    if len(op.regions) != opdef.num_regions:
        raise VerifyError(op, f"'{op.name}' takes {opdef.num_regions} regions, got {len(op.regions)}")
    if opdef.verify is not None:
        opdef.verify(op)


_REQUIRED: dict[int, tuple[OpDef, tuple[str, ...]]] = {}


def _required(opdef: OpDef) -> tuple[str, ...]:
    """The attributes ``opdef`` requires; found once per op kind (the entry holds the definition, so its id stays its own)."""
    entry = _REQUIRED.get(id(opdef))
    if entry is None or entry[0] is not opdef:
        entry = _REQUIRED[id(opdef)] = (opdef, tuple(n for n, spec in opdef.attributes.items() if spec.required))
    return entry[1]


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
