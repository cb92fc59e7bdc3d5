"""Unit tests of the IR data structures and the verifier."""

from __future__ import annotations

import numpy as np
import pytest

from cimc.attributes import Tensor
from cimc.dialects import VerifyError
from cimc.dialects.registry import attrs, define
from cimc.ir import Block, Module, Operation, Region
from cimc.types import TensorType, scalar
from cimc.verifier import verify

F = TensorType("f32", ("batch", 4))


def const(block: Block, value: np.ndarray, name: str | None = None) -> Operation:
    t = Tensor(value)
    return block.append(Operation("builtin.constant", [], [t.type], {"value": t}, result_names=[name]))


def graph_with_add() -> tuple[Module, Operation]:
    body = Block([F, F], ["x", "y"])
    add = body.append(Operation("onnx.Add", body.args, [F]))
    body.append(Operation("builtin.return", [add.result]))
    return Module("g", body), add


def test_use_lists_follow_operands() -> None:
    module, add = graph_with_add()
    x, y = module.inputs
    assert [u.op for u in x.uses] == [add] and [u.index for u in y.uses] == [1]
    add.set_operand(1, x)
    assert y.uses == [] and sorted(u.index for u in x.uses) == [0, 1]
    verify(module)


def test_replace_all_uses_with_moves_every_use() -> None:
    module, add = graph_with_add()
    x, y = module.inputs
    neg = Operation("onnx.Relu", [x], [F])
    module.body.insert(0, neg)
    x.replace_all_uses_with(neg.result)
    # The Relu itself now reads its own result: RAUW is literal, so restore its operand.
    neg.set_operand(0, x)
    assert add.operands[0] is neg.result and [u.op for u in x.uses] == [neg]
    verify(module)


def test_replace_all_uses_with_rejects_type_change() -> None:
    module, add = graph_with_add()
    other = Block([TensorType("f32", (4,))]).args[0]
    with pytest.raises(ValueError, match="type"):
        module.inputs[0].replace_all_uses_with(other)


def test_erase_refuses_while_used_and_detaches_after() -> None:
    module, add = graph_with_add()
    with pytest.raises(ValueError, match="still used"):
        add.erase()
    ret = module.body.terminator
    assert ret is not None
    ret.set_operand(0, module.inputs[0])
    add.erase()
    assert add.parent is None and module.inputs[1].uses == []
    verify(module)


def loop_module(body_result_type: TensorType = F) -> Module:
    g = Block([F, scalar("i64")], ["h0", "T"])
    body = Block([scalar("i64"), F], ["t", "h"])
    relu = body.append(Operation("onnx.Relu", [body.args[1]], [F]))
    body.append(Operation("cim.yield", [relu.result, relu.result]))
    loop = g.append(Operation("cim.loop", [g.args[1], g.args[0]],
                              [F, TensorType("f32", ("seq", "batch", 4)) if body_result_type == F else body_result_type],
                              regions=[Region(body)]))
    g.append(Operation("builtin.return", loop.results))
    return Module("loop", g)


def test_loop_verifies() -> None:
    verify(loop_module())


def test_erase_loop_drops_uses_from_its_body() -> None:
    module = loop_module()
    loop = module.body.ops[0]
    module.body.terminator.drop_operands()  # type: ignore[union-attr]
    h0 = module.inputs[0]
    loop.erase()
    assert h0.uses == [] and module.inputs[1].uses == []


def test_loop_scan_result_type_is_checked() -> None:
    with pytest.raises(VerifyError, match="scan result #1"):
        verify(loop_module(TensorType("f32", ("seq", 4))))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m, add: m.body.ops.reverse(), "terminator|used before it is defined"),
        (lambda m, add: add.operands.__setitem__(1, m.inputs[0]), "use list of %y is stale"),
        (lambda m, add: m.inputs[0].uses.clear(), "use list of %x has"),
        (lambda m, add: add.add_operand(m.inputs[0]), "wrong arity"),
        (lambda m, add: setattr(add, "name", "onnx.Nope"), "unknown op"),
        (lambda m, add: add.attributes.__setitem__("axis", 1), "has no attribute 'axis'"),
        (lambda m, add: setattr(add.results[0], "type", TensorType("i64", ("batch", 4))), "type mismatch"),
        (lambda m, add: setattr(add.results[0], "type", TensorType("f32", (3, 4, 4))), "broadcast"),
        (lambda m, add: m.body.ops.pop(), "must end with 'builtin.return'"),
        (lambda m, add: add.attributes.update({"axis": 1}), "has no attribute 'axis'"),
        (lambda m, add: add.attributes.setdefault("axis", 1), "has no attribute 'axis'"),
        (lambda m, add: setattr(add, "attributes", {"axis": 1}), "has no attribute 'axis'"),
        (lambda m, add: setattr(add, "name", "onnx.Relu"), "wrong arity"),
        (lambda m, add: setattr(m.inputs[1], "type", TensorType("f32", (3, 4, 4))), "broadcast"),
        (lambda m, add: add.set_operand(1, m.body.ops[0].result), "used before it is defined"),
    ],
)
@pytest.mark.parametrize("verified_before", [False, True], ids=["fresh", "after-a-valid-run"])
def test_verifier_catches(mutate, message: str, verified_before: bool) -> None:
    """Also after the op passed a run: the verifier re-checks an op's own rules only when what they read changed
    (cimc.verifier), and every way of changing it must count."""
    module, add = graph_with_add()
    if verified_before:
        verify(module)
    mutate(module, add)
    with pytest.raises(VerifyError, match=message):
        verify(module)


def test_verifier_checks_attribute_kinds_and_choices() -> None:
    body = Block([TensorType("f32", (1, 2, 3))])
    x = body.args[0]
    softmax = body.append(Operation("onnx.Softmax", [x], [x.type], {"axis": "last"}))
    body.append(Operation("builtin.return", [softmax.result]))
    with pytest.raises(VerifyError, match="must be of kind int"):
        verify(Module("g", body))
    softmax.attributes["axis"] = -1
    verify(Module("g", body))
    softmax.attributes.pop("axis")
    softmax.attributes["axis"] = "first"
    with pytest.raises(VerifyError, match="must be of kind int"):
        verify(Module("g", body))
    del softmax.attributes["axis"]
    verify(Module("g", body))


def test_dominance_across_regions() -> None:
    """A loop body may read values defined before the loop, but not values defined after it."""
    module = loop_module()
    body = module.body.ops[0].regions[0].block
    later = const(module.body, np.ones((1, 4), np.float32))
    module.body.insert(1, later.detach())
    add = Operation("onnx.Add", [body.args[1], later.result], [F])
    body.insert(0, add)
    with pytest.raises(VerifyError, match="not dominated"):
        verify(module)
    module.body.insert(0, later.detach())
    verify(module)


def test_tensor_attribute_is_immutable_and_compares_by_content() -> None:
    a = Tensor(np.arange(4, dtype=np.float32), key="w")
    b = Tensor(np.arange(4, dtype=np.float32), key="other")
    assert a == b and hash(a) == hash(b)
    assert a != Tensor(np.arange(4, dtype=np.float64))
    with pytest.raises(ValueError):
        a.array[0] = 3


def crossbar_module(g_pos: np.ndarray, row_scale: np.ndarray | None = None) -> Module:
    body = Block([TensorType("f32", ("batch", 2))], ["x"])
    attrs = {"g_pos": Tensor(g_pos), "g_neg": Tensor(np.full_like(g_pos, 2.0)), "g_scale": Tensor(np.full(2, 98.0))}
    if row_scale is not None:
        attrs["row_scale"] = Tensor(row_scale)
    mvm = body.append(Operation("cim.crossbar_mvm", body.args, [TensorType("f32", ("batch", 2))], attrs))
    body.append(Operation("builtin.return", [mvm.result]))
    return Module("g", body)


@pytest.mark.parametrize("g_pos, row_scale, message", [
    (np.array([[2.0, -1e-9], [3.0, 4.0]]), None, "non-negative conductances"),
    (np.full((2, 2), 2.0), np.array([1.0, 0.0]), "row_scale must hold"),
    (np.full((2, 2), 2.0), np.array([1.0, 2.0]), "row_scale must hold"),
    (np.full((2, 2), 2.0), np.array([1.0, np.nan]), "row_scale must hold"),
])
def test_verifier_checks_conductance_and_row_scale_bounds(g_pos: np.ndarray, row_scale: np.ndarray | None, message: str) -> None:
    """The value rules read Tensor.extrema (computed once per tensor): the same answers as elementwise tests."""
    verify(crossbar_module(np.full((2, 2), 2.0), np.array([1.0, 0.5])))
    with pytest.raises(VerifyError, match=message):
        verify(crossbar_module(g_pos, row_scale))


def test_attribute_stamp_changes_with_every_change_but_annotations() -> None:
    """The verifier's record of an op (cimc.verifier) relies on this: a new stamp for any change an op definition
    can see, none for annotations (dotted names, which no definition declares)."""
    _, add = graph_with_add()
    stamps = [add.attributes.stamp]
    for change in (lambda a: a.__setitem__("x", 1), lambda a: a.update(y=2), lambda a: a.pop("x"),
                   lambda a: a.__delitem__("y"), lambda a: a.setdefault("z", 3), lambda a: a.popitem(),
                   lambda a: a.__ior__({"w": 1}), lambda a: a.clear()):
        change(add.attributes)
        stamps.append(add.attributes.stamp)
    assert len(set(stamps)) == len(stamps)
    add.attributes["sched.stage"] = 4
    del add.attributes["sched.stage"]
    assert add.attributes.stamp == stamps[-1]
    with pytest.raises(ValueError, match="dotted names are annotations"):
        define("test.dotted", "", attributes=attrs(**{"a.b": "int"}))


def test_adopt_takes_fresh_arrays_and_views_of_bytes_without_a_copy() -> None:
    """Tensor.adopt: an array nobody else can write (a fresh one, or a view of immutable bytes such as onnx's
    to_array of raw data) is used as is; a view of a writable array is copied, so later writes cannot reach it."""
    fresh = np.arange(6, dtype=np.float32)
    assert Tensor.adopt(fresh).array is fresh and not fresh.flags.writeable
    raw = np.arange(6, dtype=np.float32).tobytes()
    view = np.frombuffer(raw, np.float32).reshape(2, 3)
    assert np.shares_memory(Tensor.adopt(view).array, view)
    owner = np.arange(6, dtype=np.float32)
    adopted = Tensor.adopt(owner.reshape(2, 3))
    owner[0] = 99
    assert adopted.array[0, 0] == 0 and not np.shares_memory(adopted.array, owner)


def test_window_is_a_view_whose_bounds_come_from_its_tensor() -> None:
    """Tensor.window (tile's pieces of an MVM): no copy, read-only, the digest of the same elements copied; the
    tensor's known minimum bounds the window's, so any_below / all_above need no pass, and agree with minimum()."""
    whole = Tensor(np.array([[0.0, 3.0, 4.0], [5.0, 6.0, 7.0]], np.float32))
    part = whole.window((slice(0, 2), slice(1, 3)))
    assert np.shares_memory(part.array, whole.array) and not part.array.flags.writeable
    assert part.digest == Tensor(whole.array[:, 1:3]).digest and part == Tensor(whole.array[:, 1:3])
    assert part.all_above(0) and part._min == 3.0  # no bound known: the exact test, on the window's elements
    whole.minimum()  # 0.0: every window's elements are >= 0
    fresh = whole.window((slice(0, 2), slice(1, 3)))
    assert not fresh.any_below(0) and fresh._min is None  # decided by the bound alone
    assert fresh.any_below(3.5) is (fresh.minimum() < 3.5) is True  # beyond the bound: computed
    assert not whole.window((slice(0, 1), slice(0, 1))).all_above(0)  # [[0.0]]: the bound 0 does not decide > 0
    nan = Tensor(np.array([np.nan, 1.0]))
    assert np.isnan(nan.minimum())
    right = nan.window((slice(1, 2),))
    assert right.all_above(0.5) and right._min == 1.0  # a NaN minimum is no bound: computed
    assert not nan.window((slice(0, 1),)).all_above(-1.0) and not nan.window((slice(0, 1),)).any_below(1.0)


def test_contiguous_copies_a_window_and_keeps_its_bounds() -> None:
    """Tensor.contiguous (tile's one copy per column chunk): a C-contiguous array of its own, equal elements, the
    window's lower bound kept; a tensor that owns a C-contiguous array is returned as it is."""
    whole = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert whole.contiguous() is whole
    whole.minimum()
    chunk = whole.window((slice(None), slice(1, 3))).contiguous()
    assert chunk.array.flags.c_contiguous and chunk.array.flags.owndata and not chunk.array.flags.writeable
    np.testing.assert_array_equal(chunk.array, whole.array[:, 1:3])
    assert not chunk.any_below(0) and chunk._min is None and chunk.window((slice(0, 1), slice(None))).origin[0] is chunk
