"""Print a module as textual IR.

The text is canonical: attributes sorted by name, value names made unique and
legal, floats printed with ``repr`` so that they parse back bit-exactly. That
makes print → parse → print the identity, which the round-trip tests check.
Tensors with more than :data:`INLINE_LIMIT` elements are printed as
``resource<type: "key">`` and collected in :attr:`PrintedModule.resources` for
the sidecar ``.npz``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from cimc.attributes import AttrValue, Tensor
from cimc.ir import Block, Module, Operation, Value

INLINE_LIMIT = 16
_ILLEGAL = re.compile(r"[^A-Za-z0-9_.$]")


def legal_name(name: str | None) -> str | None:
    """The printable form of a value or symbol name; None when nothing legal is left."""
    if not name:
        return None
    cleaned = _ILLEGAL.sub("_", name)
    return cleaned or None


def format_float(x: float) -> str:
    return repr(float(x))


def format_scalar(x: object) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, np.floating):
        return str(x)  # numpy's shortest repr that round-trips in the array's own precision
    if isinstance(x, float):
        return format_float(x)
    if isinstance(x, str):
        return json.dumps(x)
    raise TypeError(f"not a scalar attribute: {x!r}")


@dataclass
class PrintedModule:
    text: str
    resources: dict[str, np.ndarray] = field(default_factory=dict)


class Printer:
    """Names values once for the whole module, then prints it."""

    def __init__(self, module: Module, inline_limit: int = INLINE_LIMIT) -> None:
        self.module = module
        self.inline_limit = inline_limit
        self.names: dict[int, str] = {}
        self.resources: dict[str, np.ndarray] = {}
        self._resource_keys: dict[bytes, str] = {}
        self._assign_names()

    def _all_values(self) -> list[Value]:
        values: list[Value] = list(self.module.body.args)

        def visit(block: Block) -> None:
            for op in block.ops:
                for region in op.regions:
                    values.extend(region.block.args)
                    visit(region.block)
                values.extend(op.results)

        visit(self.module.body)
        return values

    def _assign_names(self) -> None:
        values = self._all_values()
        taken: set[str] = set()
        wanted = [legal_name(v.name) for v in values]
        for value, name in zip(values, wanted):
            if name is None:
                continue
            unique, n = name, 0
            while unique in taken:
                n += 1
                unique = f"{name}_{n}"
            taken.add(unique)
            self.names[id(value)] = unique
        counter = 0
        for value in values:
            if id(value) in self.names:
                continue
            while str(counter) in taken:
                counter += 1
            taken.add(str(counter))
            self.names[id(value)] = str(counter)

    def name(self, value: Value) -> str:
        return "%" + self.names[id(value)]

    def print(self) -> PrintedModule:
        m = self.module
        args = ", ".join(f"{self.name(a)}: {a.type}" for a in m.body.args)
        head = f"graph @{legal_name(m.name) or 'main'}({args})"
        if m.attributes:
            head += " attributes " + self._attr_dict(m.attributes)
        lines = [head + " {"]
        self._block_ops(m.body, 1, lines)
        lines.append("}")
        return PrintedModule("\n".join(lines) + "\n", self.resources)

    def _block_ops(self, block: Block, depth: int, lines: list[str]) -> None:
        for op in block.ops:
            self._op(op, depth, lines)

    def _op(self, op: Operation, depth: int, lines: list[str]) -> None:
        pad = "  " * depth
        text = pad
        if op.results:
            text += ", ".join(self.name(r) for r in op.results) + " = "
        text += op.name + "(" + ", ".join("none" if v is None else self.name(v) for v in op.operands) + ")"
        if op.attributes:
            text += " " + self._attr_dict(op.attributes)
        for index, region in enumerate(op.regions):
            block = region.block
            args = ", ".join(f"{self.name(a)}: {a.type}" for a in block.args)
            lines.append(f"{text} ^bb{index}({args}) {{")
            self._block_ops(block, depth + 1, lines)
            text = pad + "}"
        if op.results:
            text += " : " + ", ".join(str(r.type) for r in op.results)
        if op.location is not None:
            text += f" loc({json.dumps(op.location)})"
        lines.append(text)

    def _attr_dict(self, attributes: dict[str, AttrValue]) -> str:
        entries = [f"{k} = {self._attr(attributes[k])}" for k in sorted(attributes)]
        return "{" + ", ".join(entries) + "}"

    def _attr(self, value: AttrValue) -> str:
        if isinstance(value, tuple):
            return "[" + ", ".join(self._attr(v) for v in value) + "]"
        if isinstance(value, Tensor):
            return self._tensor(value)
        return format_scalar(value)

    def _tensor(self, tensor: Tensor) -> str:
        if tensor.array.size <= self.inline_limit:
            body = ", ".join(format_scalar(v) for v in tensor.array.reshape(-1))
            return f"dense<{tensor.type}: [{body}]>"
        key = self._resource_keys.get(tensor.digest)
        if key is None:
            base = legal_name(tensor.key) or "tensor"
            key, n = base, 0
            while key in self.resources:
                n += 1
                key = f"{base}_{n}"
            self.resources[key] = tensor.array
            self._resource_keys[tensor.digest] = key
        return f"resource<{tensor.type}: {json.dumps(key)}>"


def print_module(module: Module, inline_limit: int = INLINE_LIMIT) -> PrintedModule:
    """Print ``module``; large tensors are returned separately for the sidecar."""
    return Printer(module, inline_limit).print()


def module_to_text(module: Module) -> str:
    return print_module(module).text
