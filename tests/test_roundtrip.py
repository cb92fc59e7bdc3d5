"""Print → parse → print is the identity, for hand-written IR and for random graphs."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimc.attributes import Tensor
from cimc.ir import Block, Module, Operation, Region, Value
from cimc.irfile import read_ir, write_ir
from cimc.parser import parse_module
from cimc.printer import INLINE_LIMIT, print_module
from cimc.types import DTYPES, TensorType, scalar
from cimc.verifier import verify

NAME_CHARS = string.ascii_letters + string.digits + "_./:-"
names = st.one_of(st.none(), st.text(NAME_CHARS, min_size=1, max_size=8))
dims = st.one_of(st.integers(0, 5), st.sampled_from(["batch", "seq", "n", "f32", "none", "inf", "dense"]), st.none())
tensor_types = st.builds(TensorType, st.sampled_from(sorted(DTYPES)), st.lists(dims, max_size=3).map(tuple))
floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    dtype = draw(st.sampled_from(["f32", "f64", "f16", "i64", "i8", "bool"]))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    if draw(st.booleans()):
        shape = (INLINE_LIMIT + draw(st.integers(1, 5)),)  # goes to the sidecar
    size = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(size=size) * 10 ** draw(st.integers(-8, 8))
    if DTYPES[dtype].kind == "f" and size:
        values[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0, 1e-300, 0.1]))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf in f16 is a value like any other
        array = values.astype(DTYPES[dtype]) if dtype != "bool" else values > 0
    return Tensor(array.reshape(shape), key=draw(names))


scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), floats, st.text(max_size=12))
attr_values = st.recursive(st.one_of(scalars, tensors()), lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
attr_dicts = st.dictionaries(st.sampled_from("abcde"), attr_values, max_size=3)


@st.composite
def graphs(draw: st.DrawFn) -> Module:
    """Random graphs of test ops with nested loop bodies, every attribute kind and symbolic shapes."""
    body = Block(draw(st.lists(tensor_types, max_size=3)))
    for arg in body.args:
        arg.name = draw(names)
    _fill(draw, body, list(body.args), depth=0)
    return Module(draw(st.text(string.ascii_letters, min_size=1, max_size=6)), body,
                  draw(st.dictionaries(st.sampled_from(["source", "note", "version"]), scalars, max_size=2)))


def _fill(draw: st.DrawFn, block: Block, visible: list[Value], depth: int) -> None:
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["op", "op", "const", "loop", "region"] if depth < 2 else ["op", "const"]))
        loc = draw(st.one_of(st.none(), st.text(max_size=10)))
        if kind == "const":
            t = draw(tensors())
            op = Operation("builtin.constant", [], [t.type], {"value": t}, location=loc, result_names=[draw(names)])
        elif kind == "op":
            operands = draw(st.lists(st.sampled_from(visible), max_size=3)) if visible else []
            if operands and draw(st.booleans()):
                operands.insert(draw(st.integers(0, len(operands))), None)
            results = draw(st.lists(tensor_types, max_size=2))
            op = Operation("test.op", operands, results, draw(attr_dicts), location=loc,
                           result_names=[draw(names) for _ in results])
        elif kind == "loop":
            carried = draw(st.lists(st.sampled_from(visible), max_size=2)) if visible else []
            trip = Operation("builtin.constant", [], [scalar()], {"value": Tensor(np.array(draw(st.integers(0, 9))))})
            block.append(trip)
            inner = Block([scalar()] + [v.type for v in carried])
            for arg in inner.args:
                arg.name = draw(names)
            _fill(draw, inner, visible + [trip.result] + inner.args, depth + 1)
            scans = draw(st.lists(st.sampled_from(visible + inner.args), max_size=2))
            inner.append(Operation("cim.yield", inner.args[1:] + scans))
            op = Operation("cim.loop", [trip.result, *carried],
                           [v.type for v in carried] + [TensorType(v.type.dtype, ("seq", *v.type.shape)) for v in scans],
                           regions=[Region(inner)], location=loc)
        else:
            inner = Block(draw(st.lists(tensor_types, max_size=2)))
            _fill(draw, inner, visible + inner.args, depth + 1)
            inner.append(Operation("test.yield", draw(st.lists(st.sampled_from(visible + inner.args), max_size=2)) if visible or inner.args else []))
            op = Operation("test.region", [], draw(st.lists(tensor_types, max_size=1)), draw(attr_dicts),
                           regions=[Region(inner)], location=loc)
        block.append(op)
        visible = visible + list(op.results)
    outputs = draw(st.lists(st.sampled_from(visible), max_size=2)) if visible and depth == 0 else []
    if depth == 0:
        block.append(Operation("builtin.return", outputs))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_print_parse_print_is_identity(tmp_path_factory, module: Module) -> None:
    verify(module)
    folder = tmp_path_factory.mktemp("rt")
    printed = write_ir(module, folder / "g.cir")
    reparsed = read_ir(folder / "g.cir")
    again = print_module(reparsed)
    assert again.text == printed.text
    assert again.resources.keys() == printed.resources.keys()
    for key, array in printed.resources.items():
        np.testing.assert_array_equal(again.resources[key], array)
        assert again.resources[key].dtype == array.dtype


HAND_WRITTEN = Path(__file__).parent / "data" / "lstm_like.cir"


def test_hand_written_lstm_loop_survives_byte_for_byte(cimc_cli) -> None:
    result = cimc_cli("opt", str(HAND_WRITTEN), "-p", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == HAND_WRITTEN.read_text()


def test_float_printing_is_exact() -> None:
    text = HAND_WRITTEN.read_text()
    module = parse_module(text, str(HAND_WRITTEN), HAND_WRITTEN.parent)
    consts = [op.attributes["value"] for op in module.walk() if op.name == "builtin.constant"]
    weights = next(t for t in consts if isinstance(t, Tensor) and t.key == "W")
    assert weights.array.dtype == np.float32 and weights.array.shape == (3 + 2, 4 * 2)
