"""Op definitions and the registry that holds them, one namespace per dialect.

An :class:`OpDef` states what the generic verifier checks for every op of its
kind (operand and result arity, attribute names, kinds and allowed values) and
may add a ``verify`` hook for the kind's own type rules. Op kinds are data, not
subclasses, so that the printer, parser and passes handle every op uniformly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cimc.attributes import AttrValue, Tensor, attr_kind, is_annotation
from cimc.ir import Operation


class VerifyError(Exception):
    """An op breaks a rule; carries the op so the error can point at it."""

    def __init__(self, op: Operation | None, message: str) -> None:
        super().__init__(message)
        self.op = op
        self.message = message


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """One operand or result slot: ``X`` (required), ``B?`` (optional) or ``inputs*`` (variadic)."""

    name: str
    kind: str  # "single" | "optional" | "variadic"

    @staticmethod
    def parse(text: str) -> tuple[ArgSpec, ...]:
        specs = []
        for item in (s.strip() for s in text.split(",") if s.strip()):
            if item.endswith("?"):
                specs.append(ArgSpec(item[:-1], "optional"))
            elif item.endswith("*"):
                specs.append(ArgSpec(item[:-1], "variadic"))
            else:
                specs.append(ArgSpec(item, "single"))
        if sum(s.kind == "variadic" for s in specs) > 1:
            raise ValueError(f"at most one variadic slot allowed in '{text}'")
        return tuple(specs)


_SCALAR_KIND: dict[type, str] = {int: "int", float: "float", str: "str", Tensor: "tensor"}
_ELEMENT_TYPE: dict[str, type] = {"ints": int, "floats": float, "strs": str}


@dataclass(frozen=True, slots=True)
class AttrSpec:
    """An attribute's kind (int, float, str, ints, floats, strs, tensor, any) and constraints."""

    kind: str
    required: bool = False
    choices: tuple[AttrValue, ...] | None = None

    def check(self, value: AttrValue) -> str | None:
        """Return a description of what is wrong with ``value``, or None."""
        if self.kind == "any" or (self.choices is None and _SCALAR_KIND.get(type(value)) == self.kind):
            return None  # the common case, a scalar of exactly the declared kind, without the general classification
        element = _ELEMENT_TYPE.get(self.kind)
        if element is not None and self.choices is None and type(value) is tuple and all(type(v) is element for v in value):
            return None  # likewise a list of exactly the declared element type (rows, cols, device levels)
        kind = attr_kind(value)
        accepted = {self.kind}
        if self.kind == "float":
            accepted.add("int")
        if self.kind in ("ints", "floats", "strs"):
            accepted.add("list")  # the empty list has no element kind
            if self.kind == "floats":
                accepted.add("ints")
        if kind not in accepted:
            return f"must be of kind {self.kind}, got {kind}"
        if kind == "list" and value != ():
            return f"must be of kind {self.kind}, got a mixed list"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(repr(c) for c in self.choices)}, got {value!r}"
        return None


def attrs(**specs: str | AttrSpec) -> dict[str, AttrSpec]:
    """Shorthand: ``attrs(axis="int", value="tensor!")``; a trailing ``!`` marks a required attribute."""
    out: dict[str, AttrSpec] = {}
    for name, spec in specs.items():
        if isinstance(spec, AttrSpec):
            out[name] = spec
        else:
            out[name] = AttrSpec(spec.rstrip("!"), required=spec.endswith("!"))
    return out


@dataclass(frozen=True)
class OpDef:
    """The definition of one op kind.

    ``verify`` may read the op's attributes, its operands (their types and the kinds of the ops that define them)
    and its result types, and, for an op with regions, anything inside them: the verifier re-runs it on an op only
    when one of those changed (see cimc.verifier).
    """

    name: str
    summary: str
    operands: tuple[ArgSpec, ...] = ()
    results: tuple[ArgSpec, ...] = ()
    attributes: Mapping[str, AttrSpec] = field(default_factory=dict)
    num_regions: int = 0
    verify: Callable[[Operation], None] | None = None
    pure: bool = True
    terminator: bool = False

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]


def define(
    name: str,
    summary: str,
    operands: str = "",
    results: str = "",
    attributes: Mapping[str, AttrSpec] | None = None,
    **kwargs: object,
) -> OpDef:
    """Build an :class:`OpDef` from compact slot strings and register it."""
    dotted = [n for n in attributes or {} if is_annotation(n)]
    if dotted:  # such names are annotations, which the verifier does not check against a definition
        raise ValueError(f"op '{name}' declares attribute '{dotted[0]}': dotted names are annotations")
    opdef = OpDef(
        name,
        summary,
        ArgSpec.parse(operands),
        ArgSpec.parse(results),
        dict(attributes or {}),
        **kwargs,  # type: ignore[arg-type]
    )
    register(opdef)
    return opdef


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> None:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op '{opdef.name}' is defined twice")
    _REGISTRY[opdef.name] = opdef


lookup: Callable[[str], OpDef | None] = _REGISTRY.get  # the op definition of a name, or None (the verifier asks per op)


def dialects() -> dict[str, list[OpDef]]:
    """Every registered op, grouped by dialect and sorted by name."""
    out: dict[str, list[OpDef]] = {}
    for opdef in sorted(_REGISTRY.values(), key=lambda d: d.name):
        out.setdefault(opdef.dialect, []).append(opdef)
    return out
