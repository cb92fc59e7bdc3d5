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

from dataclasses import dataclass

from cimc.attributes import Tensor, is_annotation
from cimc.dialects import lookup as _lookup
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
    """One pass over the block: structure in full, each op's own rules where its record says they may have changed.

    Written as one loop with the per-op work inlined (no calls, no allocations for an unchanged op but its
    record's tuples): it runs over every op after every pass.
    """
    scope = set(visible)
    add_to_scope, count, define = scope.add, references.get, values.append
    for arg in block.args:
        add_to_scope(id(arg))
        _verify_uses(arg)
        define(arg)
    ops = block.ops
    last = len(ops) - 1
    for index, op in enumerate(ops):
        opdef = _lookup(op.name)
        if opdef is None:
            raise VerifyError(op, f"unknown op '{op.name}'")
        if op.parent is not block:
            raise VerifyError(op, f"'{op.name}' does not know the block it is in")
        if opdef.terminator and index != last:
            raise VerifyError(op, f"terminator '{op.name}' must be the last op of its block")
        operands = op.operands
        for value in operands:
            if value is None:
                continue
            key = id(value)
            if key not in scope:
                i = next(i for i, v in enumerate(operands) if v is value)
                what = f"%{value.name}" if value.name else f"operand #{i}"
                raise VerifyError(op, f"{what} is used before it is defined (not dominated by its definition)")
            references[key] = count(key, 0) + 1
        results = op.results
        attributes = op.attributes
        if op.regions:
            for region in op.regions:
                if region.parent is not op or region.block.parent is not region:
                    raise VerifyError(op, f"'{op.name}' has a region that does not point back to it")
                _verify_block(region.block, scope, None, op, references, values)
            _verify_op(op, opdef)
        elif type(attributes) is not Attributes:
            _verify_op(op, opdef)
            op.verified = None
        else:
            # What the op's own rules read: the operands as values (compared by identity), their and the results'
            # types, and the attributes by their stamp (so that replaced attribute tensors are not kept alive).
            record = (opdef, attributes.stamp, tuple(operands), tuple([v.type for v in operands if v is not None]),
                      tuple([r.type for r in results]))
            if op.verified != record:
                _verify_op(op, opdef)
                op.verified = record
        for res in results:
            add_to_scope(id(res))
            uses = res.uses
            if len(uses) == 1:  # the common case, checked here; _verify_uses says what is wrong
                use = uses[0]
                slots = use.op.operands
                if use.index >= len(slots) or slots[use.index] is not res or use.op.parent is None:
                    _verify_uses(res)
            elif uses:
                _verify_uses(res)
            define(res)
    term = block.terminator
    if expected_terminator is not None and (term is None or term.name != expected_terminator):
        raise VerifyError(term, f"the graph must end with '{expected_terminator}'")
    if owner is not None:
        term_def = _lookup(term.name) if term is not None else None
        if term_def is None or not term_def.terminator:
            raise VerifyError(owner, f"the region of '{owner.name}' must end with a terminator")


def _verify_uses(value: Value) -> None:
    """Every use points at an operand slot holding ``value``, once; with the reference count this proves agreement."""
    uses = value.uses
    if len(uses) > 1 and len(set(uses)) != len(uses):  # a Use is a tuple (op, index), the op hashed by identity
        raise VerifyError(uses[0].op, f"use list of %{value.name} lists one operand twice")
    for op, index in uses:
        slots = op.operands
        if index >= len(slots) or slots[index] is not value:
            raise VerifyError(op, f"use list of %{value.name} is stale: '{op.name}' operand #{index} is not it")
        if op.parent is None:
            raise VerifyError(op, f"%{value.name} is used by an erased '{op.name}'")


def _verify_op(op: Operation, opdef: OpDef) -> None:
    rules = _rules(opdef)
    _check_arity(op, "operand", op.operands, opdef.operands, rules.operands)
    _check_arity(op, "result", op.results, opdef.results, rules.results)
    attributes = op.attributes
    for name in rules.required:
        if name not in attributes:
            raise VerifyError(op, f"'{op.name}' requires attribute '{name}'")
    specs, exact, elements = opdef.attributes, rules.exact, rules.elements
    for name, value in attributes.items():
        kind = type(value)
        if exact.get(name) is kind:
            continue  # a scalar or tensor of exactly the declared kind, where any value of it is allowed
        if kind is tuple and name in elements:  # likewise a list of exactly the declared element type
            element = elements[name]
            for item in value:  # type: ignore[union-attr]
                if type(item) is not element:
                    break
            else:
                continue
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


_SCALAR_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "tensor": Tensor}
_ELEMENT_TYPES: dict[str, type] = {"ints": int, "floats": float, "strs": str}


@dataclass(frozen=True)
class _Rules:
    """What the generic rules need of an op kind, found once per kind: the attributes it requires, the exact Python
    type that passes an attribute's check whatever its value (declared scalar kinds without choices) and likewise
    the element type of list kinds, and the (required, variadic, optional) counts of its operand and result slots."""

    required: tuple[str, ...]
    exact: dict[str, type]
    elements: dict[str, type]
    operands: tuple[int, bool, int]
    results: tuple[int, bool, int]


_RULES: dict[int, tuple[OpDef, _Rules]] = {}


def _rules(opdef: OpDef) -> _Rules:
    """The entry holds the definition, so that its id stays its own."""
    entry = _RULES.get(id(opdef))
    if entry is None or entry[0] is not opdef:
        specs = opdef.attributes
        entry = _RULES[id(opdef)] = (opdef, _Rules(
            tuple(n for n, spec in specs.items() if spec.required),
            {n: _SCALAR_TYPES[spec.kind] for n, spec in specs.items() if spec.kind in _SCALAR_TYPES and spec.choices is None},
            {n: _ELEMENT_TYPES[spec.kind] for n, spec in specs.items() if spec.kind in _ELEMENT_TYPES and spec.choices is None},
            _arity(opdef.operands), _arity(opdef.results)))
    return entry[1]


def _arity(specs: tuple[ArgSpec, ...]) -> tuple[int, bool, int]:
    """(required, variadic, optional) of an op definition's slots."""
    return (sum(s.kind == "single" for s in specs), any(s.kind == "variadic" for s in specs),
            sum(s.kind == "optional" for s in specs))


def _check_arity(op: Operation, what: str, values: list, specs: tuple[ArgSpec, ...], arity: tuple[int, bool, int]) -> None:
    required, variadic, optional = arity
    n = len(values)
    if (n >= required if variadic else required <= n <= required + optional and None not in values):
        return  # the common case: the count fits and (variadic aside) no slot is absent
    if n < required or (not variadic and n > required + optional):
        expected = f"at least {required}" if variadic else (
            f"{required}" if not optional else f"{required} to {required + optional}")
        raise VerifyError(op, f"wrong arity: '{op.name}' takes {expected} {what}s, got {n}")
    if variadic:
        return
    for value, spec in zip(values, specs):
        if value is None and spec.kind == "single":
            raise VerifyError(op, f"required {what} '{spec.name}' of '{op.name}' is absent")
