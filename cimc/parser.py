"""Parse textual IR back into a module.

Syntax errors and semantic errors (undefined or redefined values, wrong arity,
type mismatches, unknown ops) are raised as :class:`~cimc.diagnostics.CimcError`
with ``file:line:col``, the offending source line and a caret. Semantic checks
are the verifier's: the parser records where each op was written and maps the
verifier's complaint back to that position.
"""

from __future__ import annotations

import json
import math
import zipfile
from functools import cache
from importlib import resources as package_data
from pathlib import Path

import lark
import numpy as np
from lark import Token, Tree

from cimc.attributes import AttrValue, Tensor
from cimc.diagnostics import CimcError, source_pos
from cimc.dialects import VerifyError, lookup
from cimc.ir import Block, Module, Operation, Region, Value
from cimc.types import DTYPES, Dim, TensorType
from cimc.npz import load_npz
from cimc.verifier import verify

SIDECAR_ATTR = "sidecar"

_FRIENDLY = {
    "VALUE": "a value like %x", "OPNAME": "an op name like onnx.Add", "DTYPE": "an element type like f32",
    "IDENT": "a name", "ATTR_NAME": "an attribute name", "INT": "an integer", "FLOAT": "a float", "STRING": "a string", "SYMBOL": "@name",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "MORETHAN": "'>'", "LESSTHAN": "'<'",
    "BLOCK_LABEL": "a region label like ^bb0", "NONE": "none", "QMARK": "'?'",
}


@cache
def _lark_parser() -> lark.Lark:
    grammar = package_data.files("cimc").joinpath("ir.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_module(text: str, filename: str = "<input>", base_dir: Path | None = None,
                 resources: dict[str, np.ndarray] | None = None) -> Module:
    """Parse and verify ``text``.

    Large tensors come from ``resources`` if given (a programming image keeps
    them in its own archive), else from the ``.npz`` that the graph's
    ``sidecar`` attribute names, relative to ``base_dir`` (the folder of the ``.cir``).
    """
    try:
        tree = _lark_parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise CimcError(_syntax_message(e), source_pos(filename, text, e.line, e.column)) from None
    builder = _Builder(text, filename, base_dir)
    builder._sidecar_arrays = resources
    module = builder.build(tree)
    try:
        verify(module)
    except VerifyError as e:
        line, col = builder.positions.get(id(e.op), (1, 1)) if e.op is not None else (1, 1)
        raise CimcError(e.message, source_pos(filename, text, line, col)) from None
    return module


def _syntax_message(e: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {e.char!r}"
    if isinstance(e, lark.exceptions.UnexpectedEOF):
        return "unexpected end of input"
    assert isinstance(e, lark.exceptions.UnexpectedToken)
    expected = sorted({_FRIENDLY.get(t, repr(t.lower()) if t.isupper() else t) for t in e.expected})
    got = "end of input" if e.token.type == "$END" else repr(str(e.token))
    return f"unexpected {got}; expected {', '.join(expected)}"


class _Builder:
    """Walks the parse tree, resolving value names in nested scopes."""

    def __init__(self, text: str, filename: str, base_dir: Path | None) -> None:
        self.text = text
        self.filename = filename
        self.base_dir = base_dir
        self.sidecar: str | None = None
        self._sidecar_arrays: dict[str, np.ndarray] | None = None
        self.positions: dict[int, tuple[int, int]] = {}
        self.scopes: list[dict[str, Value]] = []

    def error(self, message: str, node: Tree | Token) -> CimcError:
        line, col = (node.line, node.column) if isinstance(node, Token) else (node.meta.line, node.meta.column)
        return CimcError(message, source_pos(self.filename, self.text, line, col))

    def build(self, tree: Tree) -> Module:
        graph = tree.children[0]
        symbol, args, attr_dict, *ops = graph.children
        attributes = self.attr_dict(attr_dict) if attr_dict is not None else {}
        sidecar = attributes.get(SIDECAR_ATTR)
        self.sidecar = sidecar if isinstance(sidecar, str) else None
        block = self.block(args, ops)
        return Module(symbol[1:], block, attributes)

    def block(self, args: Tree | None, ops: list[Tree]) -> Block:
        arg_nodes = args.children if args is not None else []
        block = Block([self.type(t) for _, t in (n.children for n in arg_nodes)])
        self.scopes.append({})
        try:
            for arg, node in zip(block.args, arg_nodes):
                self.define(node.children[0], arg)
            for node in ops:
                block.append(self.op(node))
        finally:
            self.scopes.pop()
        return block

    def define(self, token: Token, value: Value) -> None:
        name = token[1:]
        for scope in self.scopes:
            if name in scope:
                raise self.error(f"redefinition of %{name}", token)
        value.name = name
        self.scopes[-1][name] = value

    def resolve(self, token: Token) -> Value:
        name = token[1:]
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise self.error(f"use of undefined value %{name}", token)

    def op(self, node: Tree) -> Operation:
        results, opname, operands, attr_dict, *regions, types_node, location_node = node.children
        if lookup(str(opname)) is None:
            raise self.error(f"unknown op '{opname}'", opname)
        operand_values: list[Value | None] = []
        for item in operands.children if operands is not None else []:
            operand_values.append(None if isinstance(item, Tree) else self.resolve(item))
        result_tokens = results.children if results is not None else []
        result_types = [self.type(t) for t in types_node.children] if types_node is not None else []
        if len(result_tokens) != len(result_types):
            raise self.error(
                f"wrong arity: {len(result_tokens)} result names but {len(result_types)} result types", opname)
        op = Operation(
            str(opname),
            operand_values,
            result_types,
            self.attr_dict(attr_dict) if attr_dict is not None else {},
            [self.region(r) for r in regions],
            json.loads(location_node.children[0]) if location_node is not None else None,
        )
        self.positions[id(op)] = (opname.line, opname.column)
        for token, result in zip(result_tokens, op.results):
            self.define(token, result)
        return op

    def region(self, node: Tree) -> Region:
        _, args, *ops = node.children
        return Region(self.block(args, ops))

    def type(self, node: Tree) -> TensorType:
        dtype, *dims = node.children
        return TensorType(str(dtype), tuple(self.dim(d) for d in dims if d is not None))

    @staticmethod
    def dim(node: Tree) -> Dim:
        if node.data == "static_dim":
            return int(node.children[0])
        if node.data == "symbolic_dim":
            return str(node.children[0])
        return None

    def attr_dict(self, node: Tree) -> dict[str, AttrValue]:
        out: dict[str, AttrValue] = {}
        for entry in node.children:
            if entry is None:
                continue
            key, value = entry.children
            if str(key) in out:
                raise self.error(f"duplicate attribute '{key}'", key)
            out[str(key)] = self.attr(value)
        return out

    def attr(self, node: Tree) -> AttrValue:
        kind = node.data
        if kind == "int":
            return int(node.children[0])
        if kind == "float":
            return _float(node.children[0])
        if kind == "string":
            return json.loads(node.children[0])
        if kind == "list":
            return tuple(self.attr(c) for c in node.children if c is not None)
        if kind == "dense":
            type_node, *scalars = node.children
            ttype = self.type(type_node)
            values = [self.attr(s) for s in scalars if s is not None]
            expected = math.prod(d for d in ttype.shape if isinstance(d, int))
            if not ttype.is_static or len(values) != expected:
                raise self.error(f"dense<{ttype}> needs {expected} values, got {len(values)}", node)
            dtype = np.dtype(DTYPES[ttype.dtype])
            if dtype.kind in "iub" and not all(isinstance(v, int) for v in values):
                raise self.error(f"dense<{ttype}> holds integers; got {next(v for v in values if not isinstance(v, int))!r}", node)
            try:
                return Tensor(np.array(values, dtype=dtype).reshape(ttype.shape))
            except OverflowError:
                raise self.error(f"a value of dense<{ttype}> does not fit {ttype.dtype}", node) from None
        assert kind == "resource"
        type_node, key_token = node.children
        ttype = self.type(type_node)
        key = json.loads(key_token)
        arrays = self.sidecar_arrays(node)
        if key not in arrays:
            raise self.error(f"resource \"{key}\" is not in the sidecar {self.sidecar}", node)
        array = arrays[key]
        if TensorType.of_array(array) != ttype:
            raise self.error(f"resource \"{key}\" is {TensorType.of_array(array)} in the sidecar, not {ttype}", node)
        return Tensor(array, key=key)


    def sidecar_arrays(self, node: Tree) -> dict[str, np.ndarray]:
        if self._sidecar_arrays is None:
            if self.sidecar is None or self.base_dir is None:
                raise self.error("a resource needs the sidecar .npz named by the graph's 'sidecar' attribute", node)
            path = self.base_dir / self.sidecar
            try:
                self._sidecar_arrays = load_npz(path)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise self.error(f"cannot read the sidecar {path}: {e}", node) from None
        return self._sidecar_arrays


def _float(token: Token) -> float:
    return float(str(token))
