"""ranges: record every MVM's input scale and column ranges, from calibration data or analytic bounds.

Each ``cim.matvec`` gets ``input_scale`` (the reference DAC full scale s_ref:
the largest input magnitude over its rows, the bias row's 1 included),
``row_scale`` (per row r_i in (0, 1]: row i's DAC full scale is s_ref r_i, one
value per input segment and for the bias row, see ``segment_row_scales``) and
``z_lo``/``z_hi`` (the range of each column's dot product). Each ``cim.activation`` gets
``range.lo``/``range.hi``, the range of its input, which an identity column
needs. The module's ``ranges`` attribute says where the numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.attributes import Tensor
from cimc.diagnostics import CimcError
from cimc.hardware import load_hardware
from cimc.interpreter import Arrays, Interpreter, input_names
from cimc.ir import Module, Operation
from cimc.npz import load_npz
from cimc.pass_manager import ModulePass, register_pass
from cimc.passes.tile import slice_range
from cimc.ranges import Interval, analytic_ranges, observed_ranges

_DEFAULT = load_hardware()


def _load_calibration(path: str, module: Module) -> dict[str, np.ndarray]:
    try:
        data = load_npz(path)
    except (OSError, ValueError) as e:
        raise CimcError(f"cannot read calibration data {path}: {e}") from None
    names = input_names(module)
    missing = [n for n in names if n not in data]
    if missing:
        raise CimcError(f"calibration data {path} lacks inputs {missing} (it has {sorted(data)}; the model's inputs are {names})")
    return {n: data[n] for n in names}


def segment_row_scales(segments: list[Interval], widths: list[int], weights: np.ndarray, bias_rows: int,
                       dac_bits: int, levels: int) -> tuple[float, np.ndarray]:
    """(s_ref, r): the reference DAC full scale and each row's fraction of it, constant over each segment.

    A segment is one input of the MVM (x, h, c_(t-1)) or the bias row. The
    crossbar stores w_i r_i and the DAC drives x_i / r_i over [-s_ref, s_ref],
    so shrinking r_i trades DAC error for weight error in the column sum z_j:

        DAC:     |w_ij| s_ref r_i / (2 L)              (L = 2^(dac_bits-1) - 1 steps)
        weight:  [w_ij != 0] dG / (2 g_j) * p_i / r_i   (one device of a pair rounds by dG/2;
                                                         g_j = span / max_i |w_ij r_i|, p_i = segment peak)

    Each segment's r is the power of two 2^-k (never below p / s_ref: no
    clipping) that minimizes the sum over columns of this worst-case bound,
    by coordinate descent from the shared full scale (r = 1, a candidate, so
    the choice never does worse than one full scale for the whole vector).
    The bias row's DAC error is computed exactly (it always drives 1).
    Powers of two keep w r and x / r exact in binary floating point, so the
    exact fidelity stays the model's; in hardware they are a shift of the
    digital input code ahead of the one DAC reference.
    """
    peaks = np.array([s.abs_max() for s in segments], np.float64)
    reference = max(float(peaks.max(initial=0.0)), float(np.finfo(np.float32).tiny))
    if not np.isfinite(reference):
        return reference, np.ones(sum(widths))
    owner = np.repeat(np.arange(len(widths)), widths)
    steps = (1 << (dac_bits - 1)) - 1
    w = np.abs(weights.astype(np.float64))
    used = w > 0
    is_bias = np.zeros(len(widths), bool)
    if bias_rows:
        is_bias[-1] = True

    def bound(fractions: np.ndarray) -> float:
        r = fractions[owner]
        stored = w * r[:, None]
        peak = stored.max(axis=0, initial=0.0)
        dac_row = np.where(is_bias[owner], np.abs(np.rint(steps / (reference * r)) * reference * r / steps - 1.0),
                           reference * r / (2 * steps))
        weight_row = peaks[owner] / r / (2 * (levels - 1))
        return float((w * dac_row[:, None]).sum() + (used * weight_row[:, None] * peak[None, :]).sum())

    candidates = [2.0 ** -np.arange(0, int(np.floor(np.log2(reference / p))) + 1 if p > 0 else 1) for p in peaks]
    fractions = np.ones(len(widths))
    best = bound(fractions)
    for _ in range(3):
        improved = False
        for k, options in enumerate(candidates):
            for value in options:
                trial = fractions.copy()
                trial[k] = value
                cost = bound(trial)
                if cost < best * (1 - 1e-12):
                    best, fractions, improved = cost, trial, True
        if not improved:
            break
    return reference, fractions[owner]


def clipped_columns(op: Operation) -> list[tuple[int, int, float]]:
    """Column spans [lo, hi) of an MVM that only a clipped activation f(clip(z, c)) reads, with their c.

    Outside [-c, c] such a column's value does not matter, so its converter
    range is narrowed to it: a linear ADC then spends its codes where f
    changes (an LSTM with clip whose state grows to 1000s otherwise gets a
    code step wider than the whole clip window).
    """
    result = op.results[0]
    cols = result.type.shape[-1]
    spans = []
    for use in result.uses:
        span = (0, cols) if use.op.name == "cim.activation" else \
            slice_range(use.op, result) if use.op.name == "onnx.Slice" and use.index == 0 else None
        readers = [use.op] if use.op.name == "cim.activation" else [u.op for u in use.op.results[0].uses] if span else []
        if span is None or not readers or any(r.name != "cim.activation" or "clip" not in r.attributes for r in readers):
            continue
        spans.append((span[0], span[1], min(float(r.attributes["clip"]) for r in readers)))  # type: ignore[arg-type]
    return spans if isinstance(cols, int) else []


def _activation_ranges(module: Module, inputs: dict[str, np.ndarray]) -> dict[int, Interval]:
    seen: dict[int, Interval] = {}

    def observe(op: Operation, operands: Arrays, results: list[np.ndarray]) -> None:
        if op.name == "cim.activation" and operands[0] is not None and operands[0].size:
            x = operands[0].astype(np.float64)
            now = Interval.of(x.min(), x.max())
            seen[id(op)] = seen[id(op)].union(now) if id(op) in seen else now

    Interpreter(module, observe).run(inputs)
    return seen


@register_pass
@dataclass(frozen=True)
class Ranges(ModulePass):
    """Record MVM input scales and column ranges (calibration data if ``calib`` names an .npz, else analytic bounds)."""

    name = "ranges"
    calib: str = ""
    input_bound: float = 1.0
    max_steps: int = 100
    dac_bits: int = _DEFAULT.converters.dac_bits
    levels: int = _DEFAULT.device.levels

    def apply(self, module: Module) -> bool:
        analysis, report = analytic_ranges(module, self.input_bound, self.max_steps)
        segments = analysis.mvm_inputs
        columns = {id(op): analysis.get(op.results[0]) for op in module.walk() if op.name == "cim.matvec"}
        activations = {id(op): analysis.get(op.operands[0]).collapse() for op in module.walk() if op.name == "cim.activation"}
        source = report.source
        if self.calib:
            inputs = _load_calibration(self.calib, module)
            seen_segments, seen_columns = observed_ranges(module, inputs)
            segments.update(seen_segments)
            columns.update(seen_columns)
            activations.update(_activation_ranges(module, inputs))
            batch = next(iter(inputs.values())).shape
            source = f"calibration data {Path(self.calib).name} (input shape {list(batch)})"
        for op in module.walk():
            if op.name == "cim.matvec":
                bias_rows = int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]
                widths = [int(v.type.shape[-1]) for v in op.operands if v is not None] + ([bias_rows] if bias_rows else [])  # type: ignore[arg-type]
                weights = op.attributes["weights"].array  # type: ignore[union-attr]
                scale, row_scale = segment_row_scales(segments[id(op)], widths, weights, bias_rows, self.dac_bits, self.levels)
                cols = columns[id(op)].width_for(int(op.results[0].type.shape[-1]))  # type: ignore[arg-type]
                if not np.isfinite(scale) or not np.isfinite(cols.lo).all() or not np.isfinite(cols.hi).all():
                    raise CimcError(f"{op.location or op.name}: cannot bound the values of block '{op.attributes.get('block')}' "
                                    f"({source}); give calibration data with --calib")
                for c0, c1, clip in clipped_columns(op):
                    cols = Interval(cols.lo.copy(), cols.hi.copy())
                    cols.lo[c0:c1] = np.clip(cols.lo[c0:c1], -clip, clip)
                    cols.hi[c0:c1] = np.clip(cols.hi[c0:c1], -clip, clip)
                block = str(op.attributes.get("block", "mvm"))
                op.attributes["input_scale"] = scale
                op.attributes["row_scale"] = Tensor(row_scale, key=f"{block}.row_scale")
                op.attributes["z_lo"] = Tensor(cols.lo.astype(np.float64), key=f"{block}.z_lo")
                op.attributes["z_hi"] = Tensor(cols.hi.astype(np.float64), key=f"{block}.z_hi")
            elif op.name == "cim.activation" and id(op) in activations:
                r = activations[id(op)]
                op.attributes["range.lo"] = float(r.lo)
                op.attributes["range.hi"] = float(r.hi)
        module.attributes["ranges"] = source
        module.attributes["input_ranges"] = tuple(self._input_ranges(module))
        return True

    def _input_ranges(self, module: Module) -> list[tuple[float, float]]:
        """Per graph input: the range verification draws random inputs from (calibrated, or the analytic assumption)."""
        data = _load_calibration(self.calib, module) if self.calib else {}
        out = []
        for name, arg in zip(input_names(module), module.inputs):
            if name in data and data[name].size:
                out.append((float(data[name].min()), float(data[name].max())))
            elif arg.type.is_float:
                out.append((-self.input_bound, self.input_bound))
            else:
                out.append((0.0, 0.0))
        return out
