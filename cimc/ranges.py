"""Value ranges of every MVM's inputs and columns: observed on calibration data, or bounded analytically.

The DAC's full scale (input scale), the linear ADC's full scale and the
NL-ADC's conversion range all come from these ranges. With calibration data
the ranges are what the data reaches, so nothing clips where the data does
not. Without it, interval arithmetic over the IR bounds every value from an
assumed (or declared) bound on the graph's float inputs; loop-carried state is
iterated to a fixed point, or for at most ``max_steps`` steps when it keeps
growing, and the report says so.

Plain interval arithmetic loses the structure of the recurrent cell updates
and would let their state grow by about one per step. Two rules keep it:

- *Convex combinations* (:meth:`IntervalAnalysis.convex_combination`): the GRU
  update h_t = (1 - z) n + z h_(t-1), with z within [0, 1], lies between n and
  h_(t-1), so the state stays in the hull of the candidate's range and h_0.
- *Contracting state* (:meth:`IntervalAnalysis.invariant`): the LSTM
  cell c_t = f c_(t-1) + s with f within [0, F], F < 1, and s = i g within
  [a, b] never leaves hull(c_0, [min(a, a/(1-F)), max(b, b/(1-F))]) (the sum
  of a geometric series), for sequences of any length.

All bounds are in real arithmetic; float32 evaluation may exceed them by a few
units in the last place, far below any converter's step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cimc import fixed_order
from cimc.attributes import Tensor
from cimc.cim_kernels import apply_activation, mvm_input
from cimc.dialects.builtin import constant_array
from cimc.interpreter import Arrays, Interpreter, Kernel, input_names
from cimc.ir import Block, Module, OpResult, Operation, Value
from cimc.kernels import portable_math
from cimc.kernels.activations import Activation

INF = np.inf
CALIB_SEPARATOR = os.pathsep  # between several calibration paths in the ranges pass's ``calib`` option, as in PATH


@dataclass(frozen=True)
class Interval:
    """Bounds of a value, either one pair for all elements or one pair per position of the last axis."""

    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def of(lo: float | np.ndarray, hi: float | np.ndarray) -> Interval:
        return Interval(np.asarray(lo, np.float64), np.asarray(hi, np.float64))

    @staticmethod
    def unknown() -> Interval:
        return Interval.of(-INF, INF)

    def collapse(self) -> Interval:
        return Interval.of(self.lo.min(initial=INF), self.hi.max(initial=-INF))

    def union(self, other: Interval) -> Interval:
        if self.lo.shape != other.lo.shape:
            return Interval.of(min(self.lo.min(), other.lo.min()), max(self.hi.max(), other.hi.max()))
        return Interval(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def width_for(self, n: int) -> Interval:
        """This interval as one pair per position of a last axis of length ``n``."""
        if self.lo.ndim == 1 and self.lo.shape[0] == n:
            return self
        c = self.collapse()
        return Interval(np.full(n, c.lo), np.full(n, c.hi))

    def abs_max(self) -> float:
        return float(max(np.abs(self.lo).max(initial=0.0), np.abs(self.hi).max(initial=0.0)))

    def close_to(self, other: Interval) -> bool:
        return self.lo.shape == other.lo.shape and bool(np.allclose(self.lo, other.lo) and np.allclose(self.hi, other.hi))

    def contains(self, other: Interval) -> bool:
        return bool((self.lo <= other.lo).all() and (other.hi <= self.hi).all())

    def inflated(self, rel: float) -> Interval:
        """Widened by ``rel`` of its magnitude on each side (a margin for float64 rounding in a containment test)."""
        pad = rel * np.maximum(np.maximum(np.abs(self.lo), np.abs(self.hi)), 1.0)
        return Interval(self.lo - pad, self.hi + pad)


def _products(a: Interval, b: Interval) -> Interval:
    with np.errstate(invalid="ignore", over="ignore"):
        cands = np.stack(np.broadcast_arrays(a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi))
    cands = np.where(np.isnan(cands), INF, cands)  # 0 * inf: the bound is lost
    lo = np.where(np.isnan(cands).any(0), -INF, cands.min(0))
    return Interval(lo, cands.max(0))


def function_range(fn, interval: Interval) -> Interval:  # noqa: ANN001
    """Range of an elementwise ``fn`` over the interval, by dense sampling (robust to non-monotonic fn).

    An infinite bound is sampled at +-1e6; if ``fn`` still changes there, the
    extreme it reaches at that edge is unbounded.
    """
    c = interval.collapse()
    lo, hi = max(float(c.lo), -1e6), min(float(c.hi), 1e6)
    if lo > hi:
        return Interval.of(0.0, 0.0)
    grid = np.concatenate([np.linspace(lo, hi, 513), [0.0] if lo <= 0 <= hi else []])
    with np.errstate(all="ignore"):
        ys = np.asarray(fn(grid), np.float64)
        ys = ys[np.isfinite(ys)]
        if not ys.size:
            return Interval.unknown()
        out_lo, out_hi = float(ys.min()), float(ys.max())
        for bound, edge, inner in ((float(c.lo), lo, lo + 1.0), (float(c.hi), hi, hi - 1.0)):
            if np.isfinite(bound):
                continue
            y_edge, y_inner = (float(v) for v in np.asarray(fn(np.array([edge, inner])), np.float64))
            if abs(y_edge - y_inner) > 1e-9 * max(1.0, abs(y_edge)):
                out_hi = INF if y_edge >= out_hi else out_hi
                out_lo = -INF if y_edge <= out_lo else out_lo
    return Interval.of(out_lo, out_hi)


def _last_axis_span(op: Operation, n: int) -> tuple[int, int] | None:
    """[start, stop) of the last axis (length ``n``) that the Slice ``op`` takes, if it slices only that axis by constants."""
    starts, ends = constant_array(op.operands[1]), constant_array(op.operands[2])
    axes = constant_array(op.operands[3]) if len(op.operands) > 3 and op.operands[3] is not None else None
    rank = op.operands[0].type.rank  # type: ignore[union-attr]
    if starts is None or ends is None or starts.size != 1 or (axes is not None and int(axes[0]) % rank != rank - 1):
        return None
    start, stop = slice(int(starts[0]), int(ends[0])).indices(n)[:2]
    return start, stop


def _column_magnitudes(weights: np.ndarray) -> np.ndarray:
    """Column sums of |w| in float64 (|w| exact in the weights' own type), a bounded block of rows at a time."""
    total = np.zeros(weights.shape[1])
    for r0 in range(0, weights.shape[0], 256):
        total += np.abs(weights[r0:r0 + 256]).sum(axis=0, dtype=np.float64)
    return total


def _defining(value: Value | None, name: str) -> Operation | None:
    """The op named ``name`` that defines ``value``, if it is one."""
    return value.op if isinstance(value, OpResult) and value.op.name == name else None


def _is_one(value: Value | None) -> bool:
    array = constant_array(value)
    return array is not None and array.size > 0 and bool(np.all(array == 1))


@dataclass
class RangeReport:
    """Where the ranges come from, and what they rest on."""

    source: str
    unconverged_loops: int = 0
    assumed_inputs: tuple[str, ...] = ()  # float inputs bounded by the default assumption, not by data or a declaration


# The contracting bound is taken instead of the step-capped one when it is at most this much wider: it then
# holds for sequences of any length at the cost of at most one bit of converter resolution (a design choice).
CONTRACTING_BOUND_MAX_WIDENING = 2.0
EXTRAPOLATED_STEPS = 100  # see IntervalAnalysis.invariant
_MARGIN = 1e-6  # relative widening of a candidate invariant: absorbs float64 rounding in the containment test


def _extrapolated(now: Interval, before: Interval, steps: int) -> Interval:
    """``now`` pushed out by ``steps`` times its growth since ``before``."""
    if now.lo.shape != before.lo.shape or not steps:
        return now
    with np.errstate(invalid="ignore"):
        lo = now.lo - steps * np.nan_to_num(before.lo - now.lo, nan=0.0, posinf=0.0, neginf=0.0)
        hi = now.hi + steps * np.nan_to_num(now.hi - before.hi, nan=0.0, posinf=0.0, neginf=0.0)
    return Interval(lo, hi)


class IntervalAnalysis:
    """Propagates intervals through the IR; ``max_steps`` bounds loops whose state keeps growing.

    ``input_bounds`` gives (lo, hi) per graph input by name; other float inputs
    are assumed within +-``input_bound``, other integer inputs are unbounded.
    """

    def __init__(self, module: Module, input_bound: float, max_steps: int,
                 input_bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.module = module
        self.input_bound = input_bound
        self.input_bounds = dict(input_bounds or {})
        self.max_steps = max_steps
        self.values: dict[int, Interval] = {}
        self.mvm_inputs: dict[int, list[Interval]] = {}
        self.unconverged = 0
        # Per MVM: its last input rows and result. A loop re-runs its body up to
        # max_steps times while only some state (an LSTM's c) still grows; an MVM
        # whose inputs did not change gives the same bound without a product.
        self._last_matvec: dict[int, tuple[np.ndarray, np.ndarray, Interval]] = {}
        self._last_activation: dict[int, tuple[tuple[float, ...], Interval]] = {}  # per activation: its last hull and range
        self._partial_sums: dict[int, tuple] = {}  # per MVM: fixed_order.resumable_vecmat records of its two products
        # Inside loops, an MVM whose result only reaches activations (through last-axis slices) needs, per slice, only
        # the largest hi and the smallest lo: activation() takes the hull. See _matvec_hulls; ``_hull_reads`` holds
        # each MVM's slices (None: some reader needs every column), ``_inner`` the MVMs whose current result is exact
        # only where a hull can come from, with their inputs, made exact by run() at the end.
        self._hull_reads: dict[int, list[tuple[int, int]] | None] = {}
        self._segment_magnitudes: dict[int, np.ndarray] = {}  # per MVM: each input segment's column sums of |w|
        self._inner: dict[int, tuple[Operation, np.ndarray, np.ndarray]] = {}
        self._loops = 0  # loops being iterated

    def run(self) -> None:
        for name, arg in zip(input_names(self.module), self.module.inputs):
            b = self.input_bound if arg.type.is_float else INF
            self.values[id(arg)] = Interval.of(*self.input_bounds.get(name, (-b, b)))
        self.block(self.module.body)
        for op, lo, hi in self._inner.values():
            self.values[id(op.results[0])] = self._matvec_bound(op, lo, hi)
        self._inner.clear()

    def get(self, value: Value | None) -> Interval:
        return self.values.get(id(value), Interval.unknown()) if value is not None else Interval.unknown()

    def block(self, block: Block) -> list[Interval]:
        for op in block.ops:
            if op is block.terminator:
                return [self.get(v) for v in op.operands]
            for res, interval in zip(op.results, self.op(op)):
                self.values[id(res)] = interval
        return []

    def op(self, op: Operation) -> list[Interval]:
        name = op.name
        args = [self.get(v) for v in op.operands]
        if name == "builtin.constant":
            array = constant_array(op.results[0])
            assert array is not None
            if array.size == 0 or not np.issubdtype(array.dtype, np.number):
                return [Interval.of(0.0, 0.0)]
            data = array.astype(np.float64).reshape(-1, array.shape[-1]) if array.ndim else array.astype(np.float64).reshape(1, 1)
            return [Interval(data.min(0), data.max(0)) if array.ndim else Interval.of(data.min(), data.max())]
        if name == "cim.loop":
            return self.loop(op, args)
        if name == "cim.matvec":
            return [self.matvec(op, args)]
        if name in ("onnx.Add", "onnx.Sub"):
            a, b = args
            hull = self.convex_combination(op) if name == "onnx.Add" else None
            if hull is not None:
                return [hull]
            if name == "onnx.Add":
                return [Interval(*np.broadcast_arrays(a.lo + b.lo, a.hi + b.hi))]
            return [Interval(*np.broadcast_arrays(a.lo - b.hi, a.hi - b.lo))]
        if name == "onnx.Mul":
            return [_products(*args)]
        if name == "cim.activation":
            return [self.activation(op, args[0])]
        if name in ("onnx.Sigmoid", "onnx.Softmax"):
            return [Interval.of(0.0, 1.0)]
        if name == "onnx.Tanh":
            return [Interval.of(-1.0, 1.0)]
        if name == "onnx.Relu":
            return [Interval(np.maximum(args[0].lo, 0), np.maximum(args[0].hi, 0))]
        if name == "onnx.LogSoftmax":
            return [Interval.of(-INF, 0.0)]
        if name == "onnx.Where":
            return [args[1].union(args[2])]
        if name == "onnx.Slice":
            return [self.slice(op, args[0])]
        if name == "onnx.Concat":
            axis = int(op.attributes["axis"]) % op.results[0].type.rank  # type: ignore[arg-type]
            if axis == op.results[0].type.rank - 1:
                widths = [v.type.shape[-1] for v in op.operands if v is not None]
                if all(isinstance(w, int) for w in widths):
                    parts = [a.width_for(int(w)) for a, w in zip(args, widths)]  # type: ignore[arg-type]
                    return [Interval(np.concatenate([p.lo for p in parts]), np.concatenate([p.hi for p in parts]))]
            out = args[0]
            for a in args[1:]:
                out = out.union(a)
            return [out.collapse()]
        if name in ("onnx.Pow", "onnx.Div", "onnx.Exp", "onnx.MatMul", "onnx.Gemm", "onnx.Conv", "onnx.Log"):
            return [self.elementwise_fallback(op, args)]
        if not op.results or not op.results[0].type.is_float:
            return [Interval.unknown() for _ in op.results]
        floats = [a for v, a in zip(op.operands, args) if v is not None and v.type.is_float]
        out = floats[0].collapse() if floats else Interval.unknown()
        for a in floats[1:]:
            out = out.union(a.collapse())
        if name == "onnx.ConstantOfShape" and isinstance(op.attributes.get("value"), Tensor):
            v = float(op.attributes["value"].array.reshape(-1)[0])  # type: ignore[union-attr]
            out = Interval.of(v, v)
        return [out for _ in op.results]

    def activation(self, op: Operation, arg: Interval) -> Interval:
        """f's range over ``arg``, sampled (``function_range``) over its hull; a loop step whose input hull did not
        move (a gate whose MVM's inputs did not change) reuses the last step's samples."""
        hull = arg.collapse()
        key = (float(hull.lo), float(hull.hi), math.copysign(1.0, hull.lo), math.copysign(1.0, hull.hi))  # -0.0 apart
        last = self._last_activation.get(id(op))
        if last is not None and last[0] == key:
            out = last[1]
        else:
            a = op.attributes
            act = Activation.create(str(a["function"]), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
            clip = a.get("clip")
            fn = act.portable if clip is None else (lambda z, c=float(clip): act.portable(np.clip(z, -c, c)))  # type: ignore[arg-type]
            out = function_range(fn, arg)
            self._last_activation[id(op)] = (key, out)
        return out.width_for(arg.lo.shape[0]) if arg.lo.ndim == 1 else out

    def convex_combination(self, op: Operation) -> Interval | None:
        """hull(range(a), range(b)) if ``op`` is ``(1 - w) * a + w * b`` with w within [0, 1], else None.

        Sound because (1 - w) a + w b = a + w (b - a) lies between a and b
        elementwise whenever 0 <= w <= 1. This is the GRU update
        h_t = (1 - z) n + z h_(t-1) (z a sigmoid, or any gate function whose
        range the analysis finds inside [0, 1]) and LSTM's ``input_forget``
        cell. The match takes Add and both Muls in either operand order and
        needs the very same value w under ``Sub(1, w)`` and in the other Mul.
        """
        muls = [_defining(v, "onnx.Mul") for v in op.operands]
        if muls[0] is None or muls[1] is None:
            return None
        for first, second in ((muls[0], muls[1]), (muls[1], muls[0])):
            for i in (0, 1):
                complement = _defining(first.operands[i], "onnx.Sub")
                if complement is None or not _is_one(complement.operands[0]):
                    continue
                w = complement.operands[1]
                others = [v for v in second.operands if v is not w]
                if len(others) == len(second.operands):
                    continue
                weight = self.get(w)
                if not ((weight.lo >= 0).all() and (weight.hi <= 1).all()):
                    continue
                b = others[0] if others else w
                return self.get(first.operands[1 - i]).union(self.get(b))
        return None

    def elementwise_fallback(self, op: Operation, args: list[Interval]) -> Interval:
        """Ops whose range cannot be bounded from their operands' ranges alone by a simple rule."""
        if op.name == "onnx.Pow":
            exponent = constant_array(op.operands[1])
            if exponent is not None and exponent.size == 1:
                e = float(exponent.reshape(-1)[0])
                return function_range(lambda z: np.power(z, e), args[0])
        if op.name == "onnx.Div":
            a, b = args
            if (b.lo > 0).all() or (b.hi < 0).all():  # a divisor interval without 0: multiply by its reciprocal
                return _products(a, Interval(1.0 / b.hi, 1.0 / b.lo))
            return Interval.unknown()
        if op.name == "onnx.Exp":
            return Interval.of(portable_math.exp(args[0].collapse().lo), portable_math.exp(args[0].collapse().hi))
        if op.name in ("onnx.MatMul", "onnx.Gemm") and all(np.isfinite(a.abs_max()) for a in args[:2]):
            k = op.operands[0].type.shape[-1]  # type: ignore[union-attr]
            if isinstance(k, int):
                bound = k * args[0].abs_max() * args[1].abs_max() + (args[2].abs_max() if len(args) > 2 else 0.0)
                return Interval.of(-bound, bound)
        return Interval.unknown()

    def slice(self, op: Operation, data: Interval) -> Interval:
        if data.lo.ndim != 1:
            return data
        span = _last_axis_span(op, data.lo.shape[0])
        if span is None:
            return data.collapse()
        return Interval(data.lo[span[0]:span[1]], data.hi[span[0]:span[1]])

    def matvec(self, op: Operation, args: list[Interval]) -> Interval:
        rows = [a.width_for(int(v.type.shape[-1])) for a, v in zip(args, op.operands)]  # type: ignore[arg-type]
        if op.attributes.get("bias_rows", 0):
            rows.append(Interval.of(np.ones(1), np.ones(1)))
        self.mvm_inputs[id(op)] = rows
        lo = np.concatenate([r.lo for r in rows])
        hi = np.concatenate([r.hi for r in rows])
        last = self._last_matvec.get(id(op))
        if last is not None and np.array_equal(last[0], lo) and np.array_equal(last[1], hi):
            return last[2]
        result = self._matvec_hulls(op, lo, hi, [len(r.lo) for r in rows]) if self._loops else None
        if result is None:
            result = self._matvec_bound(op, lo, hi)
            self._inner.pop(id(op), None)
        else:
            self._inner[id(op)] = (op, lo, hi)
        self._last_matvec[id(op)] = (lo, hi, result)
        return result

    def _hull_spans(self, op: Operation) -> list[tuple[int, int]] | None:
        """The column spans through which ``op``'s result is read, if every reader is an activation (directly or
        through a last-axis Slice read only by activations); None if a reader needs every column."""
        if id(op) not in self._hull_reads:
            n = op.results[0].type.shape[-1]
            spans: list[tuple[int, int]] | None = [] if isinstance(n, int) and n >= 2 else None
            for use in op.results[0].uses:
                if spans is None:
                    break
                if use.op.name == "cim.activation":
                    spans.append((0, n))  # type: ignore[arg-type]
                    continue
                span = _last_axis_span(use.op, n) if use.op.name == "onnx.Slice" and use.index == 0 else None  # type: ignore[arg-type]
                readers = use.op.results[0].uses if span is not None else []
                if span is None or not readers or any(r.op.name != "cim.activation" for r in readers):
                    spans = None
                elif span[0] < span[1]:
                    spans.append(span)
            self._hull_reads[id(op)] = spans or None
        return self._hull_reads[id(op)]

    def _matvec_hulls(self, op: Operation, lo: np.ndarray, hi: np.ndarray, widths: list[int]) -> Interval | None:
        """The MVM's bound, exact (bit for bit ``_matvec_bound``'s) where each hull read through ``_hull_spans`` can
        come from, and inside the exact bound elsewhere; None where that does not pay (or does not apply).

        The center c = mid @ w is computed exactly (it resumes from its record: in a loop whose state interval is
        symmetric it does not change). The spread s = rad @ |w| is bracketed without a product over the weights:
        with rad_k within [a_j, b_j] on input segment j and S_j the column sums of |w| over it,
        sum_j a_j S_j <= s <= sum_j b_j S_j in real arithmetic, and the fixed-order float64 sum (and these float64
        brackets) differ from that by at most gamma_(K+1) = (K+1) u / (1 - (K+1) u) of the sum (u = 2^-53: K + 1
        roundings of non-negative terms), so ``eps`` = 4 (K + segments + 2) u covers both with room. Rounding is
        monotone, so hi = c + s lies within [c + s_lo, c + s_hi] and lo = c - s within [c - s_hi, c - s_lo]. A column
        can hold a span's largest hi only if its upper bracket reaches the largest lower bracket; only those
        columns (and those for the smallest lo) are summed exactly (``fixed_order.resumable_vecmat_columns``).
        Every other column gets its lower (for hi) or upper (for lo) bracket: strictly inside the span's extreme,
        so hulls over the spans are exact. While an LSTM's h still moves (about 20 steps at hidden 1024; after that
        the inputs repeat and ``matvec`` reuses the last result), a step sums a few columns instead of passing over
        the weights; the full product is taken once, at the end of ``run``, from the last inputs.
        """
        spans = self._hull_spans(op)
        if spans is None or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            return None
        weights = op.attributes["weights"].array  # type: ignore[union-attr]
        magnitudes = self._segment_magnitudes.get(id(op))
        if magnitudes is None:
            magnitudes = np.stack([_column_magnitudes(weights[a:a + w]) for a, w in zip(np.cumsum([0, *widths[:-1]]), widths)])
            self._segment_magnitudes[id(op)] = magnitudes
        if not np.isfinite(magnitudes).all():
            return None
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        records = self._partial_sums.get(id(op), (None, None))
        center, center_record = fixed_order.resumable_vecmat(mid, weights, records[0])
        self._partial_sums[id(op)] = (center_record, records[1])  # the spread's record stays that of its last full sum
        bounds = np.cumsum([0, *widths])
        rad_lo = np.array([rad[a:b].min() if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])])
        rad_hi = np.array([rad[a:b].max() if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])])
        eps = 4 * (weights.shape[0] + len(widths) + 2) * 2.0 ** -53
        tiny = 4 * (weights.shape[0] + len(widths) + 2) * np.finfo(np.float64).smallest_subnormal
        spread_lo = np.maximum((rad_lo @ magnitudes) * (1 - eps) - tiny, 0.0)
        spread_hi = (rad_hi @ magnitudes) * (1 + eps) + tiny
        if not (np.isfinite(center).all() and np.isfinite(spread_hi).all()):
            return None
        hi_low, hi_high = center + spread_lo, center + spread_hi
        lo_low, lo_high = center - spread_hi, center - spread_lo
        chosen = np.zeros(len(center), bool)
        for a, b in spans:
            chosen[a:b] |= hi_high[a:b] >= hi_low[a:b].max()
            chosen[a:b] |= lo_low[a:b] <= lo_high[a:b].min()
        columns = np.flatnonzero(chosen)
        if 4 * len(columns) > len(center):
            return None
        spread = fixed_order.resumable_vecmat_columns(rad, weights, columns, records[1], absolute=True)
        hi_low[columns] = center[columns] + spread
        lo_high[columns] = center[columns] - spread
        return Interval(lo_high, hi_low)

    def _matvec_bound(self, op: Operation, lo: np.ndarray, hi: np.ndarray) -> Interval:
        # The weights stay in their own (float32) type: every product below has a float64 operand, so numpy
        # widens each weight exactly and the results are those of a float64 copy, without the copy.
        weights = op.attributes["weights"].array  # type: ignore[union-attr]
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            with np.errstate(invalid="ignore"):
                a, b = weights * lo[:, None], weights * hi[:, None]
            a = np.where(weights == 0, 0.0, a)
            b = np.where(weights == 0, 0.0, b)
            return Interval(np.minimum(a, b).sum(0), np.maximum(a, b).sum(0))
        # Midpoint-radius form: two matrix-vector products instead of four elementwise passes, in a fixed order
        # (not BLAS's, which varies with the CPU) so the recorded bounds are the same on every machine.
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        records = self._partial_sums.get(id(op), (None, None))
        center, center_record = fixed_order.resumable_vecmat(mid, weights, records[0])
        spread, spread_record = fixed_order.resumable_vecmat(rad, weights, records[1], absolute=True)
        self._partial_sums[id(op)] = (center_record, spread_record)
        return Interval(center - spread, center + spread)

    def loop(self, op: Operation, args: list[Interval]) -> list[Interval]:
        """See :meth:`_iterate`; while it runs, MVMs may be bounded only where their hulls are read (``_matvec_hulls``)."""
        self._loops += 1
        try:
            return self._iterate(op, args)
        finally:
            self._loops -= 1

    def _iterate(self, op: Operation, args: list[Interval]) -> list[Interval]:
        """The carried state's bound: an invariant valid for any length, else the Kleene bound after ``max_steps`` steps.

        Kleene iteration (the union of the states after 1, 2, ... steps) stops
        when a step no longer moves the bound by more than ``close_to``'s
        tolerance; that is not yet a proof, since a slowly contracting state
        may still creep on. :meth:`invariant` turns the bound into one (or
        fails, and iteration continues: after k steps the Kleene bound holds
        for sequences of at most k steps, hence the step cap and the report).
        When the state keeps growing, a contracting bound replaces the
        step-capped one if it is at most ``CONTRACTING_BOUND_MAX_WIDENING``
        times as wide.
        """
        body = op.regions[0].block
        init = args[1:]
        carried, previous = list(init), list(init)
        scans: list[Interval] = []
        invariant = None
        attempted = False
        for _ in range(self.max_steps):
            out = self._step(body, carried)
            step_scans = out[len(carried):]
            scans = [s.union(t) for s, t in zip(scans, step_scans)] if scans else step_scans
            previous, carried = carried, [c.union(o) for c, o in zip(carried, out)]
            if not attempted and all(n.close_to(c) for n, c in zip(carried, previous)):
                attempted = True
                invariant = self.invariant(body, init, carried, previous)
                if invariant is not None:
                    break
        else:
            invariant = self.invariant(body, init, carried, previous)
            if invariant is not None and not all(b.abs_max() <= CONTRACTING_BOUND_MAX_WIDENING * c.abs_max()
                                                 for b, c in zip(invariant[0], carried)):
                invariant = None
        if invariant is None:
            self.unconverged += 1
            self._step(body, carried)  # leave the body's values at the step-capped state
            return carried + scans
        return invariant[0] + [s.union(t) for s, t in zip(scans, invariant[1])]

    def _step(self, body: Block, carried: list[Interval]) -> list[Interval]:
        """One abstract time step: the body's yielded intervals with the carried state bound to ``carried``."""
        self.values[id(body.args[0])] = Interval.of(0.0, INF)
        for arg, interval in zip(body.args[1:], carried):
            self.values[id(arg)] = interval
        return self.block(body)

    def invariant(self, body: Block, init: list[Interval], carried: list[Interval], previous: list[Interval],
                  rounds: int = 20) -> tuple[list[Interval], list[Interval]] | None:
        """(state bounds, scan bounds) such that one abstract step maps the state bounds into themselves; or None.

        Soundness does not rest on how the candidate is guessed: a set I that
        contains the initial state and that one step maps into I holds every
        reachable state, by induction over the steps, for any sequence length.

        The guess: a carried value whose next value is ``f * c + s`` (Add and
        Mul in either order, optionally under the ``sequence_lens`` mask
        ``Where(valid, new, c)``; the LSTM cell), with f within [0, F], F < 1,
        s within [a, b], satisfies c_t <= F max(c_(t-1), 0) + b, so it stays at
        or below max(b, b/(1-F)) once there, and likewise below: its candidate
        is hull(c_0, [min(a, a/(1-F)), max(b, b/(1-F))]), the sum of the
        geometric series. ONNX's ``clip`` bounds the gate pre-activations, so
        it keeps F below 1. F, a and b come from the step evaluated at the
        candidate itself (with peepholes, f depends on c), so the candidate is
        refined until it maps into itself. Every other carried value takes its
        Kleene bound plus a relative margin for float64 rounding, and if that
        fails, the bound pushed out by ``EXTRAPOLATED_STEPS`` times the last
        step's growth (a state contracting at rate r has r / (1 - r) times that
        growth still to come, so this covers r up to 0.99).
        """
        decaying = {k: m for k, m in ((k, self._decaying_state(body, k)) for k in range(len(init))) if m is not None}
        for steps, tries in ((0, 3), (EXTRAPOLATED_STEPS, rounds)):
            candidate = [init[k] if k in decaying else _extrapolated(c, p, steps).inflated(_MARGIN)
                         for k, (c, p) in enumerate(zip(carried, previous))]
            self._step(body, candidate)
            for _ in range(tries):
                for k, (forget, drive) in decaying.items():
                    f, s = self.get(forget), self.get(drive)
                    if not ((f.lo >= 0).all() and (f.hi < 1).all() and np.isfinite(s.lo).all() and np.isfinite(s.hi).all()):
                        return None
                    gain = 1.0 / (1.0 - f.hi)
                    series = Interval(*np.broadcast_arrays(np.minimum(s.lo, s.lo * gain), np.maximum(s.hi, s.hi * gain)))
                    candidate[k] = candidate[k].union(init[k]).union(series.inflated(_MARGIN))
                out = self._step(body, candidate)
                if all(c.contains(o) for c, o in zip(candidate, out)):
                    return candidate, out[len(candidate):]
                candidate = [c.union(o) for c, o in zip(candidate, out)]
        return None

    def _decaying_state(self, body: Block, k: int) -> tuple[Value, Value] | None:
        """(f, s) if carried value ``k`` steps as ``f * c + s``, else None."""
        state = body.args[1 + k]
        new = body.terminator.operands[k] if body.terminator is not None else None
        masked = _defining(new, "onnx.Where")
        if masked is not None and masked.operands[2] is state:
            new = masked.operands[1]
        add = _defining(new, "onnx.Add")
        if add is None or self.convex_combination(add) is not None:  # the hull bound is the tighter one there
            return None
        for decay, drive in ((add.operands[0], add.operands[1]), (add.operands[1], add.operands[0])):
            mul = _defining(decay, "onnx.Mul")
            if mul is not None and sum(v is state for v in mul.operands) == 1 and drive is not None:
                forget = mul.operands[1] if mul.operands[0] is state else mul.operands[0]
                assert forget is not None
                return forget, drive
        return None


def analytic_ranges(module: Module, input_bound: float, max_steps: int,
                    input_bounds: Mapping[str, tuple[float, float]] | None = None) -> tuple[IntervalAnalysis, RangeReport]:
    """Interval bounds of every value; ``input_bounds`` declares (lo, hi) of some inputs, the rest are assumed."""
    declared = dict(input_bounds or {})
    analysis = IntervalAnalysis(module, input_bound, max_steps, declared)
    analysis.run()
    assumed = tuple(n for n, a in zip(input_names(module), module.inputs) if a.type.is_float and n not in declared)
    parts = [f"float input{'s' if len(assumed) > 1 else ''} {', '.join(assumed)} assumed within +-{input_bound:g}"] if assumed else []
    parts += [f"{n} declared within [{lo:g}, {hi:g}]" for n, (lo, hi) in declared.items()]
    note = "analytic bounds" + (": " + ", ".join(parts) if parts else "")
    if analysis.unconverged:
        note += f"; {analysis.unconverged} loops' state keeps growing, bounded for sequences of at most {max_steps} steps"
    return analysis, RangeReport(note, analysis.unconverged, assumed)


@dataclass
class ObservedRanges:
    """What the interpreter saw on calibration data, as the union over every sample."""

    segments: dict[int, list[Interval]]  # per cim.matvec: each input segment's range, per position (bias row last)
    columns: dict[int, Interval]  # per cim.matvec: each column's range
    activations: dict[int, Interval]  # per cim.activation: the range of its input


def _fixed_order_matvec(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    x = mvm_input(op, args)
    return [fixed_order.matmul(x, op.attributes["weights"].array)]  # type: ignore[union-attr]


def _fixed_order_matmul(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    a, b = args
    assert a is not None and b is not None
    return [fixed_order.matmul(a, b)]


def _portable_activation(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    assert args[0] is not None
    return [apply_activation(op, args[0], portable=True)]


def _portable_unary(fn) -> Kernel:  # noqa: ANN001
    def run(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        assert args[0] is not None
        return [np.asarray(fn(args[0].astype(np.float64))).astype(args[0].dtype, copy=False)]
    return run


# The calibration run's matrix products summed in an order that does not depend on the CPU (cimc.fixed_order),
# its activations evaluated by portable_math: a recurrent state carries a last-bit difference into every later
# step, and the recorded ranges would differ with it.
CALIBRATION_KERNELS: dict[str, Kernel] = {
    "cim.matvec": _fixed_order_matvec, "onnx.MatMul": _fixed_order_matmul, "cim.activation": _portable_activation,
    "onnx.Sigmoid": _portable_unary(Activation.create("Sigmoid").portable), "onnx.Tanh": _portable_unary(portable_math.tanh),
    "onnx.Exp": _portable_unary(portable_math.exp)}


def observed_ranges(module: Module, samples: Sequence[Mapping[str, np.ndarray]]) -> ObservedRanges:
    """Run the interpreter once per sample and record, per MVM and activation, the union of what they reach.

    One run per sample (not one batched run) lets samples differ in sequence
    length and lets a model whose batch is fixed at 1 be calibrated on many
    sequences. Matrix products and activations use ``CALIBRATION_KERNELS``,
    so the ranges are the same on every CPU.
    """
    seen = ObservedRanges({}, {}, {})

    def merge(table: dict[int, Interval], key: int, now: Interval) -> None:
        table[key] = table[key].union(now) if key in table else now

    def observe(op: Operation, operands: Arrays, results: list[np.ndarray]) -> None:
        if op.name == "cim.activation" and operands[0] is not None and operands[0].size:
            x = operands[0].astype(np.float64)
            merge(seen.activations, id(op), Interval.of(x.min(), x.max()))
        if op.name != "cim.matvec":
            return
        parts = []
        for a in operands:
            assert a is not None
            flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
            parts.append(Interval(flat.min(0), flat.max(0)) if flat.size else Interval.of(np.zeros(a.shape[-1]), np.zeros(a.shape[-1])))
        if op.attributes.get("bias_rows", 0):
            parts.append(Interval.of(np.ones(1), np.ones(1)))
        y = results[0].reshape(-1, results[0].shape[-1]).astype(np.float64)
        if not y.size:
            return
        key = id(op)
        merge(seen.columns, key, Interval(y.min(0), y.max(0)))
        seen.segments[key] = [s.union(p) for s, p in zip(seen.segments[key], parts)] if key in seen.segments else parts

    names = input_names(module)
    for sample in samples:
        Interpreter(module, observe, CALIBRATION_KERNELS).run({k: sample[k] for k in names})
    return seen


def parse_input_range(text: str) -> tuple[str, float, float]:
    """``NAME=LO,HI`` as (name, lo, hi): finite numbers with LO < HI; a ValueError says what is wrong."""
    name, sep, bounds = text.rpartition("=")
    parts = bounds.split(",")
    if not sep or not name.strip() or len(parts) != 2:
        raise ValueError(f"expected NAME=LO,HI, got '{text}'")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"bounds in '{text}' are not numbers") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"bounds in '{text}' must be finite")
    if lo >= hi:
        raise ValueError(f"'{text}' needs LO < HI")
    return name.strip(), lo, hi


def range_warning(module: Module) -> str:
    """The warning ``compile`` gives when converter ranges rest on assumptions (the ranges pass's
    ``range_assumptions``), or "" when they rest on data and declared bounds only."""
    assumptions = module.attributes.get("range_assumptions")
    if not isinstance(assumptions, tuple) or not assumptions:
        return ""
    lines = ["warning: converter ranges rest on assumptions; inputs beyond them clip silently (cimc run/verify count it):"]
    return "\n".join(lines + [f"  - {a}" for a in assumptions])
