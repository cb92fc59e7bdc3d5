"""Interval analysis of recurrent cells: the GRU hull rule and the LSTM cell's contracting bound.

Soundness is checked against what the reference interpreter (equal to
onnxruntime, see test_lowering.py) computes on long random sequences: every
MVM input segment, MVM column and activation input it observes must lie inside
the analytic bound. The analysis works in real arithmetic, the interpreter in
float32: a dot product of K <= 64 terms is off by at most K u sum|w x|
(u = 2^-24, Higham's bound), about 4e-6 of the bound's magnitude, and the
convex combination (1 - z) n + z h by a few u; so observed values may exceed a
bound b by 1e-5 * max(1, |b|), a margin 2.5x over the worst case yet far below
any growth the old rule allowed (about 1 per step).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.importer import import_model
from cimc.ir import Module
from cimc.pass_manager import PassManager, parse_pipeline
from cimc.ranges import Interval, IntervalAnalysis, analytic_ranges, observed_ranges
from range_models import recurrent_model

LOWER = "decompose-rnn,form-mvm,canonicalize,cse"


def _tolerance(bound: np.ndarray) -> np.ndarray:
    return 1e-5 * np.maximum(1.0, np.abs(bound))


def lowered(model) -> Module:  # noqa: ANN001
    module = import_model(model, "cell.onnx")
    PassManager(parse_pipeline(LOWER)).run(module)
    return module


def random_feeds(module: Module, steps: int, batch: int, seed: int, lens: bool) -> dict[str, np.ndarray]:
    """Inputs within [-1, 1], half of them at +-1 exactly (the extremes the bounds must cover)."""
    rng = np.random.default_rng(seed)
    width = module.inputs[0].type.shape[-1]
    x = rng.uniform(-1, 1, (steps, batch, width))
    x = np.where(rng.random(x.shape) < 0.5, np.sign(x), x).astype(np.float32)
    feeds = {"X": x}
    if lens:
        feeds["lens"] = rng.integers(1, steps + 1, batch).astype(np.int32)
    return feeds


def assert_sound(module: Module, analysis: IntervalAnalysis, feeds: dict[str, np.ndarray]) -> float:
    """Every observed MVM segment/column and activation input within its bound; returns the largest |h or c| seen."""
    seen = observed_ranges(module, [feeds])
    largest = 0.0
    for op in module.walk():
        if op.name == "cim.matvec":
            width = int(op.results[0].type.shape[-1])
            bound = analysis.get(op.results[0]).width_for(width)
            got = seen.columns[id(op)]
            assert (got.lo >= bound.lo - _tolerance(bound.lo)).all() and (got.hi <= bound.hi + _tolerance(bound.hi)).all(), op.attributes["block"]
            for b, g in zip(analysis.mvm_inputs[id(op)], seen.segments[id(op)]):
                assert (g.lo >= b.lo - _tolerance(b.lo)).all() and (g.hi <= b.hi + _tolerance(b.hi)).all(), op.attributes["block"]
        elif op.name == "cim.activation":
            bound = analysis.get(op.operands[0]).collapse()
            got = seen.activations[id(op)]
            assert bound.lo - _tolerance(bound.lo) <= got.lo and got.hi <= bound.hi + _tolerance(bound.hi), op.attributes["function"]
            largest = max(largest, got.abs_max())
    return largest


GRU_CASES = [
    dict(lbr=0, direction="forward", lens=False, scale=0.18),
    dict(lbr=1, direction="forward", lens=False, scale=0.18),
    dict(lbr=0, direction="reverse", lens=True, scale=0.5),
    dict(lbr=1, direction="bidirectional", lens=True, scale=1.0),
]


@pytest.mark.parametrize("case", GRU_CASES, ids=[f"lbr{c['lbr']}-{c['direction']}-lens{int(c['lens'])}-w{c['scale']}" for c in GRU_CASES])
def test_gru_hull_rule_is_sound_and_does_not_grow(case: dict) -> None:
    """h stays in hull([-1, 1], h0 = 0): the h rows of every MVM are bounded by 1 whatever the sequence length."""
    module = lowered(recurrent_model("GRU", 8, 32, 11, case["scale"], case["direction"], case["lens"],
                                     linear_before_reset=case["lbr"]))
    short, report = analytic_ranges(module, 1.0, 5)
    long, long_report = analytic_ranges(module, 1.0, 1000)
    assert report.unconverged_loops == 0 and long_report.unconverged_loops == 0
    for op in module.walk():
        if op.name == "cim.matvec":
            for a, b in zip(short.mvm_inputs[id(op)], long.mvm_inputs[id(op)]):
                assert a.close_to(b)  # a fixed point: the step budget does not matter
            assert max(s.abs_max() for s in long.mvm_inputs[id(op)]) <= 1.0 + 1e-5  # x, h (or r*h), the bias row; 1e-5: the invariant's margin
    assert_sound(module, long, random_feeds(module, 300, 8, 5, case["lens"]))


LSTM_CASES = [
    dict(clip=3.0, peepholes=False),
    dict(clip=2.0, peepholes=True),
    dict(clip=None, peepholes=False),
]


@pytest.mark.parametrize("case", LSTM_CASES, ids=[f"clip{c['clip']}-peep{int(c['peepholes'])}" for c in LSTM_CASES])
def test_lstm_cell_bound_is_sound_and_holds_for_any_length(case: dict) -> None:
    """c_t = f c_(t-1) + i g with f <= F < 1: |c| <= max|i g| / (1 - F) for every length.

    Gate biases drive f towards F and i g towards +1, so the observed c climbs
    most of the way to the bound (it is not only sound but near tight). With
    clip, F <= sigmoid(clip) and |i g| <= 1, so the bound is at most
    1 / (1 - sigmoid(clip)) = 1 + e^clip.
    """
    attrs = {} if case["clip"] is None else {"clip": case["clip"]}
    # ONNX LSTM gate order i, o, f, c: i and f and g pushed up.
    model = recurrent_model("LSTM", 6, 16, 3, 0.1, bias=(3.0, 0.0, 3.0, 3.0), peepholes=case["peepholes"], **attrs)
    module = lowered(model)
    analysis, report = analytic_ranges(module, 1.0, 100)
    assert report.unconverged_loops == 0
    tanh_c = [op for op in module.walk() if op.name == "cim.activation" and "clip" not in op.attributes
              and op.attributes["function"] == "Tanh" and op.operands[0].op.name == "onnx.Add"]  # type: ignore[union-attr]
    assert len(tanh_c) == 1
    bound = analysis.get(tanh_c[0].operands[0]).abs_max()
    if case["clip"] is not None:
        assert bound <= 1 + np.exp(case["clip"])
    observed = assert_sound(module, analysis, random_feeds(module, 400, 8, 2, False))
    assert observed >= 0.5 * bound, (observed, bound)


def test_contracting_bound_is_refused_when_f_can_reach_one() -> None:
    """Without clip and with large weights f reaches 1 in float64: no finite geometric bound, the step cap applies."""
    module = lowered(recurrent_model("LSTM", 6, 16, 3, 3.0))
    analysis, report = analytic_ranges(module, 1.0, 50)
    assert report.unconverged_loops == 1
    assert "at most 50 steps" in report.source


def test_convex_rule_needs_the_weight_within_zero_and_one() -> None:
    """A GRU whose gate function is Tanh (z in [-1, 1]) is not a convex combination: the rule must not apply."""
    module = lowered(recurrent_model("GRU", 4, 8, 1, 0.5, activations=["Tanh", "Tanh"]))
    analysis = IntervalAnalysis(module, 1.0, 30)
    analysis.run()
    adds = [op for op in module.walk() if op.name == "onnx.Add" and analysis.convex_combination(op) is not None]
    assert not adds
    assert_sound(module, analysis, random_feeds(module, 25, 4, 0, False))


def test_convex_rule_operand_orders() -> None:
    """(1 - w) a + w b matched in all eight operand orders, and not when the two weights differ."""
    from cimc.builder import Builder
    from cimc.ir import Block
    from cimc.types import TensorType

    t = TensorType("f32", (2,))
    for order in range(8):
        body = Block([t, t, t, t])
        w, a, b, other = body.args
        build = Builder(body)
        one = build.const(np.array(1.0, np.float32))
        complement = build.value("onnx.Sub", [one, w], t)
        left = build.value("onnx.Mul", [complement, a] if order & 1 else [a, complement], t)
        right = build.value("onnx.Mul", [w, b] if order & 2 else [b, w], t)
        total = build.value("onnx.Add", [left, right] if order & 4 else [right, left], t)
        wrong = build.value("onnx.Add", [left, build.value("onnx.Mul", [other, b], t)], t)
        analysis = IntervalAnalysis(Module("m", Block()), 1.0, 1)
        analysis.values.update({id(w): Interval.of(0.0, 1.0), id(a): Interval.of(-3.0, 2.0), id(b): Interval.of(1.0, 5.0),
                                id(other): Interval.of(0.0, 1.0)})
        for op in body.ops:
            for res, interval in zip(op.results, analysis.op(op)):
                analysis.values[id(res)] = interval
        got = analysis.get(total)
        assert float(got.lo) == -3.0 and float(got.hi) == 5.0, order
        assert float(analysis.get(wrong).hi) > 5.0  # plain products: 2 * 1 + 5 * 1 = 7


def test_analytic_bounds_hold_on_the_whole_corpus() -> None:
    """Every corpus model (every cell option, stacks, surrounding ops), bounds declared from its own inputs.

    With each input declared within [min, max] of the case's feeds, what the
    interpreter computes on those feeds must lie inside the analytic bounds:
    a sweep of the soundness of every rule, including loops whose state keeps
    growing (their step-capped bound must still hold for the corpus's short
    sequences, far below the 100-step cap).
    """
    from cimc.interpreter import input_names
    from onnx_corpus import all_cases

    checked = 0
    for case in all_cases():
        module = import_model(case.model, f"{case.name}.onnx")
        PassManager(parse_pipeline(LOWER)).run(module)
        if not any(op.name == "cim.matvec" for op in module.walk()):
            continue
        declared = {n: (float(case.feeds[n].min()), float(case.feeds[n].max()) + (1.0 if case.feeds[n].min() == case.feeds[n].max() else 0.0))
                    for n in input_names(module) if case.feeds[n].size}
        analysis, _ = analytic_ranges(module, 1.0, 100, declared)
        try:
            assert_sound(module, analysis, {n: case.feeds[n] for n in input_names(module)})
        except AssertionError as e:
            raise AssertionError(f"{case.name}: {e}") from None
        checked += 1
    assert checked >= 140


def _relu_rnn(hidden: int, seed: int) -> onnx.ModelProto:
    """One ONNX RNN node with Relu and positive recurrent weights (row sums about 0.85): its state's bound grows on
    every step, by a factor of about 0.85 less each time, so it is still moving after 60 steps (at about 160; the
    relative change left, about 0.85^60 = 6e-5, is above the convergence test's tolerance)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.uniform(0.0, 0.3, (1, hidden, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(0.0, 1.7 / hidden, (1, hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.uniform(-0.1, 0.1, (1, 2 * hidden)).astype(np.float32), "B")]
    node = helper.make_node("RNN", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, activations=["Relu"], name="cell")
    graph = helper.make_graph([node], "cell", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", 4])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _every_bound(module: Module, analysis: IntervalAnalysis) -> list[bytes]:
    """The bits of every bound the ranges pass reads: MVM results and input segments, activation inputs, loop results."""
    out = []
    for op in module.walk():
        if op.name == "cim.matvec":
            out += [b.lo.tobytes() + b.hi.tobytes() for b in [analysis.get(op.results[0]), *analysis.mvm_inputs[id(op)]]]
        elif op.name == "cim.activation":
            hull = analysis.get(op.operands[0]).collapse()
            out.append(hull.lo.tobytes() + hull.hi.tobytes())
        elif op.name == "cim.loop":
            out += [b.lo.tobytes() + b.hi.tobytes() for b in map(analysis.get, op.results)]
    return out


@pytest.mark.parametrize("name", ["lstm-h-settles", "relu-rnn-h-grows"])
def test_hull_only_mvm_bounds_give_the_full_products_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside loops, an MVM read only by activations is summed exactly only at the columns a hull can come from
    (IntervalAnalysis._matvec_hulls); every bound the ranges pass reads must have the bits of the full products,
    both where h settles after some steps (an LSTM: o tanh(c) within [-1, 1]) and where it never does (a Relu RNN
    with positive weights, whose bound still grows at the step cap)."""
    model = recurrent_model("LSTM", 8, 48, 4, 1 / np.sqrt(48)) if name.startswith("lstm") else _relu_rnn(40, 6)
    module = lowered(model)
    used = []
    hulls = IntervalAnalysis._matvec_hulls

    def counted(self, *args):  # noqa: ANN001, ANN002, ANN202
        result = hulls(self, *args)
        used.append(result is not None)
        return result

    monkeypatch.setattr(IntervalAnalysis, "_matvec_hulls", counted)
    fast, fast_report = analytic_ranges(module, 1.0, 60)
    monkeypatch.setattr(IntervalAnalysis, "_matvec_hulls", lambda self, *args: None)
    full, full_report = analytic_ranges(module, 1.0, 60)
    assert sum(used) >= (15 if name.startswith("lstm") else 40), used  # partial products on the steps whose h moved
    assert fast_report == full_report and fast_report.unconverged_loops == 1  # the LSTM's c, the RNN's h
    assert _every_bound(module, fast) == _every_bound(module, full)
