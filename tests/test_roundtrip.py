"""Print → parse → print is the identity, for hand-written IR and for random graphs."""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimc.attributes import Tensor
from cimc.ir import Block, Module, Operation, Region, Value
from cimc.irfile import read_ir, write_ir
from cimc import printer
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


def _same_value(a: object, b: object, where: str) -> None:
    """a and b are the same attribute value: same kind, dtype, shape and bits (NaN = NaN, -0.0 != 0.0)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, tuple):
        assert len(a) == len(b), f"{where}: {len(a)} elements became {len(b)}"  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b)):  # type: ignore[call-overload]
            _same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, Tensor):
        x, y = a.array, b.array  # type: ignore[union-attr]
        assert x.dtype == y.dtype and x.shape == y.shape, f"{where}: {x.dtype}{x.shape} became {y.dtype}{y.shape}"
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True) and np.array_equal(np.signbit(x), np.signbit(y)), \
                f"{where}: values changed, e.g. {x.ravel()[:4]} became {y.ravel()[:4]}"
        else:
            assert np.array_equal(x, y), f"{where}: values changed"
    elif isinstance(a, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))  # type: ignore[arg-type]
        assert same, f"{where}: {a!r} became {b!r}"
    else:
        assert a == b, f"{where}: {a!r} became {b!r}"


def assert_same_values(original: Module, parsed: Module) -> None:
    """Every op, attribute and type of ``parsed`` equals ``original``'s, value for value."""
    for key in original.attributes:
        if key != "sidecar":
            _same_value(original.attributes[key], parsed.attributes[key], f"module attribute {key}")
    ops_a, ops_b = list(original.walk()), list(parsed.walk())
    assert [op.name for op in ops_a] == [op.name for op in ops_b]
    for i, (a, b) in enumerate(zip(ops_a, ops_b)):
        assert sorted(a.attributes) == sorted(b.attributes), f"op {i} ({a.name}): attribute names"
        for key in a.attributes:
            _same_value(a.attributes[key], b.attributes[key], f"op {i} ({a.name}) attribute {key}")
        assert [str(r.type) for r in a.results] == [str(r.type) for r in b.results]


def check_round_trip(module: Module, folder: Path) -> None:
    """print -> parse gives the same values, and print -> parse -> print the same text and sidecar."""
    verify(module)
    printed = write_ir(module, folder / "g.cir")
    reparsed = read_ir(folder / "g.cir")
    assert_same_values(module, reparsed)
    again = print_module(reparsed)
    assert again.text == printed.text
    assert again.resources.keys() == printed.resources.keys()
    for key, array in printed.resources.items():
        np.testing.assert_array_equal(again.resources[key], array)
        assert again.resources[key].dtype == array.dtype


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_print_parse_print_is_identity(tmp_path_factory, module: Module) -> None:
    check_round_trip(module, tmp_path_factory.mktemp("rt"))


def _float_module() -> Module:
    """Floats whose shortest text needs all 17 (f64) or 9 (f32) significant digits, and the special values."""
    body = Block([])
    values = np.array([0.1, 1 / 3, -0.0, np.nan, np.inf, 5e-324, 1234.56789012345])
    for i, array in enumerate((values, values.astype(np.float32), values.astype(np.float16))):
        t = Tensor(array)
        body.append(Operation("builtin.constant", [], [t.type], {"value": t}, result_names=[f"c{i}"]))
    body.append(Operation("test.op", [], [], {"a": 1 / 3, "b": (0.1, -0.0, 2.0**-1074)}))
    body.append(Operation("builtin.return", []))
    return Module("floats", body)


def test_a_lossy_float_printer_fails_the_round_trip_check(tmp_path, monkeypatch) -> None:
    """The round-trip property is a real check: a printer keeping 5 significant digits is caught.

    Such a printer is idempotent (its output re-prints to the same text), so a
    text-only comparison would pass it; comparing parsed values does not.
    """
    check_round_trip(_float_module(), tmp_path)
    lossless = printer.format_scalar

    def five_digits(x: object) -> str:
        if isinstance(x, (float, np.floating)) and np.isfinite(x):
            return f"{float(x):.4e}"  # 5 significant digits
        return lossless(x)

    monkeypatch.setattr(printer, "format_scalar", five_digits)
    (tmp_path / "lossy").mkdir()
    with pytest.raises(AssertionError, match="became"):
        check_round_trip(_float_module(), tmp_path / "lossy")


HAND_WRITTEN = Path(__file__).parent / "data" / "lstm_like.cir"


def test_hand_written_lstm_loop_survives_byte_for_byte(cimc_cli) -> None:
    result = cimc_cli("opt", str(HAND_WRITTEN), "-p", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == HAND_WRITTEN.read_text()


def test_float_printing_is_exact(tmp_path) -> None:
    """The hand-written file's floats: sidecar tensors equal the .npz bit for bit, inline ones their literals."""
    text = HAND_WRITTEN.read_text()
    module = parse_module(text, str(HAND_WRITTEN), HAND_WRITTEN.parent)
    consts = {op.results[0].name: op.attributes["value"] for op in module.walk() if op.name == "builtin.constant"}
    with np.load(HAND_WRITTEN.with_suffix(".npz")) as sidecar:
        stored = sidecar["W"]
    weights = consts["W"]
    assert isinstance(weights, Tensor) and weights.array.dtype == np.float32 and weights.array.shape == (3 + 2, 4 * 2)
    assert weights.array.tobytes() == stored.tobytes()
    bias = consts["b"]
    assert isinstance(bias, Tensor)
    expected = np.array([0.1, -0.2, 0.3, 0.0, 1.0, 0.5, -0.5, 0.25], dtype=np.float32)
    assert bias.array.dtype == np.float32 and bias.array.tobytes() == expected.tobytes()
    check_round_trip(module, tmp_path)
