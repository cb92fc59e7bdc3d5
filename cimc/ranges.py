"""Value ranges of every MVM's inputs and columns: observed on calibration data, or bounded analytically.

The DAC's full scale (input scale), the linear ADC's full scale and the
NL-ADC's conversion range all come from these ranges. With calibration data
the ranges are what the data reaches, so nothing clips where the data does
not. Without it, interval arithmetic over the IR bounds every value from an
assumed bound on the graph's float inputs; loop-carried state is iterated to
a fixed point, or for at most ``max_steps`` steps when it keeps growing (an
LSTM's cell state can grow by one per step), and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cimc.attributes import Tensor
from cimc.dialects.builtin import constant_array
from cimc.interpreter import Arrays, Interpreter, input_names
from cimc.ir import Block, Module, Operation, Value
from cimc.kernels.activations import Activation

INF = np.inf


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


@dataclass
class RangeReport:
    source: str
    unconverged_loops: int = 0


class IntervalAnalysis:
    """Propagates intervals through the IR; ``max_steps`` bounds loops whose state keeps growing."""

    def __init__(self, module: Module, input_bound: float, max_steps: int) -> None:
        self.module = module
        self.input_bound = input_bound
        self.max_steps = max_steps
        self.values: dict[int, Interval] = {}
        self.mvm_inputs: dict[int, list[Interval]] = {}
        self.unconverged = 0
        self._abs_weights: dict[int, np.ndarray] = {}
        self._weights64: dict[int, np.ndarray] = {}
        # Per MVM: its last input rows and result. A loop re-runs its body up to
        # max_steps times while only some state (an LSTM's c) still grows; an MVM
        # whose inputs did not change gives the same bound without a product.
        self._last_matvec: dict[int, tuple[np.ndarray, np.ndarray, Interval]] = {}

    def run(self) -> None:
        for arg in self.module.inputs:
            b = self.input_bound if arg.type.is_float else INF
            self.values[id(arg)] = Interval.of(-b, b)
        self.block(self.module.body)

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
            if name == "onnx.Add":
                return [Interval(*np.broadcast_arrays(a.lo + b.lo, a.hi + b.hi))]
            return [Interval(*np.broadcast_arrays(a.lo - b.hi, a.hi - b.lo))]
        if name == "onnx.Mul":
            return [_products(*args)]
        if name == "cim.activation":
            a = op.attributes
            act = Activation.create(str(a["function"]), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
            clip = a.get("clip")
            fn = act if clip is None else (lambda z, c=float(clip): act(np.clip(z, -c, c)))  # type: ignore[arg-type]
            return [function_range(fn, args[0]).width_for(args[0].lo.shape[0]) if args[0].lo.ndim == 1 else function_range(fn, args[0])]
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
            return Interval.of(np.exp(args[0].collapse().lo), np.exp(args[0].collapse().hi))
        if op.name in ("onnx.MatMul", "onnx.Gemm") and all(np.isfinite(a.abs_max()) for a in args[:2]):
            k = op.operands[0].type.shape[-1]  # type: ignore[union-attr]
            if isinstance(k, int):
                bound = k * args[0].abs_max() * args[1].abs_max() + (args[2].abs_max() if len(args) > 2 else 0.0)
                return Interval.of(-bound, bound)
        return Interval.unknown()

    def slice(self, op: Operation, data: Interval) -> Interval:
        if data.lo.ndim != 1:
            return data
        starts, ends = constant_array(op.operands[1]), constant_array(op.operands[2])
        axes = constant_array(op.operands[3]) if len(op.operands) > 3 and op.operands[3] is not None else None
        rank = op.operands[0].type.rank  # type: ignore[union-attr]
        if starts is None or ends is None or starts.size != 1 or (axes is not None and int(axes[0]) % rank != rank - 1):
            return data.collapse()
        n = data.lo.shape[0]
        sl = slice(*slice(int(starts[0]), int(ends[0])).indices(n)[:2])
        return Interval(data.lo[sl], data.hi[sl])

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
        result = self._matvec_bound(op, lo, hi)
        self._last_matvec[id(op)] = (lo, hi, result)
        return result

    def _matvec_bound(self, op: Operation, lo: np.ndarray, hi: np.ndarray) -> Interval:
        if id(op) not in self._weights64:
            self._weights64[id(op)] = op.attributes["weights"].array.astype(np.float64, copy=False)  # type: ignore[union-attr]
        weights = self._weights64[id(op)]
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            with np.errstate(invalid="ignore"):
                a, b = weights * lo[:, None], weights * hi[:, None]
            a = np.where(weights == 0, 0.0, a)
            b = np.where(weights == 0, 0.0, b)
            return Interval(np.minimum(a, b).sum(0), np.maximum(a, b).sum(0))
        # Midpoint-radius form: two matrix-vector products instead of four elementwise passes.
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        if id(op) not in self._abs_weights:
            self._abs_weights[id(op)] = np.abs(weights)
        center, spread = mid @ weights, rad @ self._abs_weights[id(op)]
        return Interval(center - spread, center + spread)

    def loop(self, op: Operation, args: list[Interval]) -> list[Interval]:
        body = op.regions[0].block
        carried = args[1:]
        scans: list[Interval] | None = None
        for _ in range(self.max_steps):
            self.values[id(body.args[0])] = Interval.of(0.0, INF)
            for arg, interval in zip(body.args[1:], carried):
                self.values[id(arg)] = interval
            out = self.block(body)
            new = [c.union(o) for c, o in zip(carried, out)]
            step_scans = out[len(carried):]
            scans = step_scans if scans is None else [s.union(t) for s, t in zip(scans, step_scans)]
            if all(n.close_to(c) for n, c in zip(new, carried)):
                carried = new
                break
            carried = new
        else:
            self.unconverged += 1
        return carried + (scans or [])


def analytic_ranges(module: Module, input_bound: float, max_steps: int) -> tuple[IntervalAnalysis, RangeReport]:
    analysis = IntervalAnalysis(module, input_bound, max_steps)
    analysis.run()
    note = f"analytic bounds: float graph inputs assumed within +-{input_bound:g}"
    if analysis.unconverged:
        note += f"; {analysis.unconverged} loops' state keeps growing, bounded for sequences of at most {max_steps} steps"
    return analysis, RangeReport(note, analysis.unconverged)


def observed_ranges(module: Module, inputs: Mapping[str, np.ndarray]) -> tuple[dict[int, list[Interval]], dict[int, Interval]]:
    """Per MVM: the ranges its input segments and its columns reach when the interpreter runs on ``inputs``."""
    seg: dict[int, list[Interval]] = {}
    cols: dict[int, Interval] = {}

    def observe(op: Operation, operands: Arrays, results: list[np.ndarray]) -> None:
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
        observed = Interval(y.min(0), y.max(0))
        key = id(op)
        cols[key] = cols[key].union(observed) if key in cols else observed
        seg[key] = [s.union(p) for s, p in zip(seg[key], parts)] if key in seg else parts

    Interpreter(module, observe).run({k: inputs[k] for k in input_names(module)})
    return seg, cols
