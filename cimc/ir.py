"""The graph IR: typed SSA values, ops with use lists, blocks, regions, modules.

The design follows MLIR/xDSL: every value knows its uses, so rewriting
(``replace_all_uses_with``) is O(uses) and erasing an op that still has users is
refused rather than leaving dangling references. Ops may own regions; a region
holds one block whose arguments are bound by the op (the loop op binds the
iteration index and the loop-carried state that way), which is how a recurrence
over T steps stays one body instead of T copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from cimc.attributes import AttrValue, Tensor, is_annotation, normalize_attr
from cimc.types import TensorType


class Use(NamedTuple):
    """Operand ``index`` of ``op`` reads the value holding this use.

    A named tuple (immutable, compared and hashed by its fields, the op by identity): an IR of thousands of tiles
    makes and checks tens of thousands of these per pass.
    """

    op: Operation
    index: int


class Value:
    """An SSA value: defined once, by an op result or a block argument."""

    __slots__ = ("type", "name", "uses")

    def __init__(self, type: TensorType, name: str | None = None) -> None:
        self.type = type
        self.name = name
        self.uses: list[Use] = []

    @property
    def users(self) -> list[Operation]:
        seen: dict[int, Operation] = {}
        for use in self.uses:
            seen.setdefault(id(use.op), use.op)
        return list(seen.values())

    def has_uses(self) -> bool:
        return bool(self.uses)

    def replace_all_uses_with(self, new: Value) -> None:
        """Make every user read ``new`` instead; the types must agree."""
        if new is self:
            return
        if new.type != self.type:
            raise ValueError(f"cannot replace a value of type {self.type} by one of type {new.type}")
        for use in self.uses:
            use.op.operands[use.index] = new
        new.uses.extend(self.uses)
        self.uses = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} %{self.name} : {self.type}>"


class OpResult(Value):
    __slots__ = ("op", "index")

    def __init__(self, type: TensorType, op: Operation, index: int, name: str | None = None) -> None:
        super().__init__(type, name)
        self.op = op
        self.index = index


class BlockArgument(Value):
    __slots__ = ("block", "index")

    def __init__(self, type: TensorType, block: Block, index: int, name: str | None = None) -> None:
        super().__init__(type, name)
        self.block = block
        self.index = index


_STAMPS = itertools.count(1)
_NORMAL = (int, float, str, Tensor)  # attribute values normalize_attr returns unchanged (its checks, skipped)


class Attributes(dict):
    """An op's attribute dict, stamped afresh on every change an op definition can see.

    ``stamp`` is unique over the process (never reused, unlike an ``id``), so
    the verifier can tell that an op's attributes are the very ones it last
    checked without holding on to them (see ``Operation.verified``). Setting or
    deleting an annotation (a dotted name such as ``sched.stage``, which no op
    definition declares) keeps the stamp.
    """

    __slots__ = ("stamp",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.stamp = next(_STAMPS)

    def __setitem__(self, key: str, value: AttrValue) -> None:
        super().__setitem__(key, value)
        if not is_annotation(key):
            self.stamp = next(_STAMPS)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        if not is_annotation(key):
            self.stamp = next(_STAMPS)

    def __ior__(self, other: object) -> Attributes:  # type: ignore[override,misc]
        self.update(other)  # type: ignore[arg-type]
        return self

    def update(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self.stamp = next(_STAMPS)

    def pop(self, *args: object) -> AttrValue:  # type: ignore[override]
        self.stamp = next(_STAMPS)
        return super().pop(*args)  # type: ignore[arg-type]

    def popitem(self) -> tuple[str, AttrValue]:
        self.stamp = next(_STAMPS)
        return super().popitem()

    def setdefault(self, key: str, default: AttrValue = None) -> AttrValue:  # type: ignore[assignment,override]
        self.stamp = next(_STAMPS)
        return super().setdefault(key, default)

    def clear(self) -> None:
        super().clear()
        self.stamp = next(_STAMPS)


class Operation:
    """One op: ``%r = dialect.name(%a, %b) {attrs} ^regions : types loc(...)``.

    Operands may be ``None`` where the op definition allows an optional operand
    to be absent in the middle of the list (ONNX's empty input names).
    ``verified`` is the verifier's record of what it last found valid in the op
    by itself (see cimc.verifier); None until then.
    """

    __slots__ = ("name", "operands", "results", "attributes", "regions", "location", "parent", "verified")

    def __init__(
        self,
        name: str,
        operands: Sequence[Value | None] = (),
        result_types: Sequence[TensorType] = (),
        attributes: dict[str, object] | None = None,
        regions: Sequence[Region] = (),
        location: str | None = None,
        result_names: Sequence[str | None] | None = None,
    ) -> None:
        self.name = name
        self.operands: list[Value | None] = []
        names = list(result_names) if result_names is not None else [None] * len(result_types)
        self.results = [OpResult(t, self, i, n) for i, (t, n) in enumerate(zip(result_types, names, strict=True))]
        self.attributes: dict[str, AttrValue] = Attributes(
            {k: v if type(v) in _NORMAL else normalize_attr(v) for k, v in (attributes or {}).items()})
        self.regions: list[Region] = []
        self.location = location
        self.parent: Block | None = None
        self.verified: tuple | None = None
        for value in operands:
            self.add_operand(value)
        for region in regions:
            self.add_region(region)

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def result(self) -> OpResult:
        if len(self.results) != 1:
            raise ValueError(f"'{self.name}' has {len(self.results)} results, not one")
        return self.results[0]

    def add_operand(self, value: Value | None) -> None:
        self.operands.append(value)
        if value is not None:
            value.uses.append(Use(self, len(self.operands) - 1))

    def set_operand(self, index: int, value: Value | None) -> None:
        old = self.operands[index]
        if old is not None:
            old.uses.remove(Use(self, index))
        self.operands[index] = value
        if value is not None:
            value.uses.append(Use(self, index))

    def drop_operands(self) -> None:
        for i, value in enumerate(self.operands):
            if value is not None:
                value.uses.remove(Use(self, i))
        self.operands = []

    def add_region(self, region: Region) -> None:
        if region.parent is not None:
            raise ValueError("region already belongs to an op")
        region.parent = self
        self.regions.append(region)

    def walk(self) -> Iterator[Operation]:
        """This op and every op nested in its regions, in program order."""
        yield self
        for region in self.regions:
            yield from region.block.walk()

    def detach(self) -> Operation:
        """Take the op out of its block, keeping its operands, to insert it elsewhere."""
        if self.parent is not None:
            self.parent.ops.remove(self)
            self.parent = None
        return self

    def erase(self) -> None:
        """Detach and destroy the op; refuses while any result (nested ones included) is still used."""
        for op in self.walk():
            for res in op.results:
                external = [u for u in res.uses if not _is_inside(u.op, self)]
                if external:
                    raise ValueError(
                        f"cannot erase '{self.name}': result %{res.name or res.index} still used by '{external[0].op.name}'"
                    )
        for op in reversed(list(self.walk())):
            op.drop_operands()
            # An op and its results reference each other, so an erased op is freed only by the cycle collector,
            # at some later pass; its attributes (weights-sized tensors) are let go now.
            op.attributes = Attributes()
            op.verified = None
        self.detach()

    def __repr__(self) -> str:
        return f"<Operation {self.name} at {self.location}>"


def _is_inside(op: Operation, ancestor: Operation) -> bool:
    current: Operation | None = op
    while current is not None:
        if current is ancestor:
            return True
        block = current.parent
        current = block.parent.parent if block is not None and block.parent is not None else None
    return False


class Block:
    """A straight-line list of ops with arguments; the last op is its terminator."""

    __slots__ = ("args", "ops", "parent")

    def __init__(self, arg_types: Sequence[TensorType] = (), arg_names: Sequence[str | None] | None = None) -> None:
        names = list(arg_names) if arg_names is not None else [None] * len(arg_types)
        self.args = [BlockArgument(t, self, i, n) for i, (t, n) in enumerate(zip(arg_types, names, strict=True))]
        self.ops: list[Operation] = []
        self.parent: Region | None = None

    def append(self, op: Operation) -> Operation:
        return self.insert(len(self.ops), op)

    def insert(self, index: int, op: Operation) -> Operation:
        if op.parent is not None:
            raise ValueError(f"'{op.name}' is already in a block")
        op.parent = self
        self.ops.insert(index, op)
        return op

    def insert_before(self, anchor: Operation, op: Operation) -> Operation:
        return self.insert(self.ops.index(anchor), op)

    def add_arg(self, type: TensorType, name: str | None = None) -> BlockArgument:
        arg = BlockArgument(type, self, len(self.args), name)
        self.args.append(arg)
        return arg

    @property
    def terminator(self) -> Operation | None:
        return self.ops[-1] if self.ops else None

    def walk(self) -> Iterator[Operation]:
        for op in list(self.ops):
            yield from op.walk()


class Region:
    """The body of a region-holding op; cimc regions have exactly one block."""

    __slots__ = ("block", "parent")

    def __init__(self, block: Block) -> None:
        self.block = block
        block.parent = self
        self.parent: Operation | None = None


class Module:
    """A whole model: a named graph whose block arguments are the graph inputs.

    The graph body ends with ``builtin.return``; module attributes carry
    whole-model facts such as the ONNX source file and the original input and
    output names.
    """

    __slots__ = ("name", "body", "attributes")

    def __init__(self, name: str, body: Block, attributes: dict[str, object] | None = None) -> None:
        self.name = name
        self.body = body
        self.attributes: dict[str, AttrValue] = {k: normalize_attr(v) for k, v in (attributes or {}).items()}

    def walk(self) -> Iterator[Operation]:
        return self.body.walk()

    @property
    def inputs(self) -> list[BlockArgument]:
        return self.body.args

    @property
    def outputs(self) -> list[Value]:
        term = self.body.terminator
        return [v for v in term.operands if v is not None] if term is not None else []
