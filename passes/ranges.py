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
from cimc.interpreter import input_names
from cimc.ir import Module, Operation
from cimc.npz import load_npz
from cimc.pass_manager import ModulePass, from_hardware, register_pass
from cimc.passes.tile import slice_range
from cimc.ranges import CALIB_SEPARATOR, Interval, analytic_ranges, observed_ranges, parse_input_range


def calibration_files(spec: str) -> list[Path]:
    """The .npz files ``spec`` names: paths joined by ``CALIB_SEPARATOR``, a directory standing for its .npz files."""
    files: list[Path] = []
    for part in filter(None, spec.split(CALIB_SEPARATOR)):
        path = Path(part)
        if path.is_dir():
            found = sorted(path.glob("*.npz"))
            if not found:
                raise CimcError(f"calibration directory {part} holds no .npz files")
            files += found
        else:
            files.append(path)
    return files


def calibration_samples(spec: str, module: Module) -> list[dict[str, np.ndarray]]:
    """Every calibration sample, keyed by graph input name.

    A file holds one sample when each input has the model input's rank, or
    several stacked along a new leading axis when each has that rank + 1
    (the rank decides, so a batch axis is never taken for a sample axis).
    """
    names = input_names(module)
    ranks = {n: arg.type.rank for n, arg in zip(names, module.inputs)}
    samples: list[dict[str, np.ndarray]] = []
    for path in calibration_files(spec):
        try:
            data = load_npz(path)
        except (OSError, ValueError) as e:
            raise CimcError(f"cannot read calibration data {path}: {e}") from None
        missing = [n for n in names if n not in data]
        if missing:
            raise CimcError(f"calibration data {path} lacks inputs {missing} (it has {sorted(data)}; the model's inputs are {names})")
        stacked = {n for n in names if data[n].ndim == ranks[n] + 1}
        wrong_rank = any(data[n].ndim not in (ranks[n], ranks[n] + 1) for n in names)
        if wrong_rank or (stacked and stacked != set(names)) or len({data[n].shape[0] for n in stacked}) > 1:
            expected = ", ".join(f"{n} rank {ranks[n]}" for n in names)
            raise CimcError(f"calibration data {path} has {', '.join(f'{n} {list(data[n].shape)}' for n in names)}; the model "
                            f"wants {expected} for one sample, or every input with one more leading axis of the same "
                            "length for stacked samples")
        if stacked:
            samples += [{n: data[n][i] for n in names} for i in range(data[names[0]].shape[0])]
        else:
            samples.append({n: data[n] for n in names})
    if not samples:
        raise CimcError(f"calibration data '{spec}' holds no samples")
    return samples


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
    is_bias = np.zeros(len(widths), bool)
    if bias_rows:
        is_bias[-1] = True
    # r is constant over a segment, so the bound needs only per-segment reductions of |w|, taken once: its
    # sum, its column peaks and its count of formed devices per column (O(segments x columns) per trial).
    # r is a power of two, so max_i |w_ij| r_i = r_s max_(i in s) |w_ij| exactly. The sums run in another order than
    # a per-device sum would, which moves a cost by rounding only, far inside the 1e-12 margin of the comparisons.
    spans = [slice(a, a + n) for a, n in zip(np.cumsum([0, *widths[:-1]]), widths)]
    # |w| is exact in the weights' own type, so it is taken there, one segment at a time (a weights-sized copy,
    # float64 or not, would be the pass's memory peak); only the sum accumulates in float64.
    seg_sum = np.empty(len(spans))
    seg_peak, seg_used = np.empty((len(spans), weights.shape[1])), np.empty((len(spans), weights.shape[1]))
    for k, sl in enumerate(spans):
        magnitude = np.abs(weights[sl])
        seg_sum[k] = magnitude.sum(dtype=np.float64)
        seg_peak[k] = magnitude.max(axis=0, initial=0.0)
        seg_used[k] = np.count_nonzero(magnitude, axis=0)

    def bound(fractions: np.ndarray) -> float:
        r = fractions
        peak = (seg_peak * r[:, None]).max(axis=0, initial=0.0)
        dac = np.where(is_bias, np.abs(np.rint(steps / (reference * r)) * reference * r / steps - 1.0),
                       reference * r / (2 * steps))
        weight = peaks / r / (2 * (levels - 1))
        return float((seg_sum * dac).sum() + (weight * (seg_used * peak).sum(axis=1)).sum())

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


def parse_input_ranges(spec: str, module: Module) -> dict[str, tuple[float, float]]:
    """``NAME=LO,HI`` entries joined by ';' (the ``input_ranges`` option), checked against the graph's inputs."""
    names = input_names(module)
    out: dict[str, tuple[float, float]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        try:
            name, lo, hi = parse_input_range(entry)
        except ValueError as e:
            raise CimcError(f"--input-range: {e}") from None
        if name not in names:
            raise CimcError(f"--input-range: the model has no input '{name}' (its inputs are {names})")
        out[name] = (lo, hi)
    return out


@register_pass
@dataclass(frozen=True)
class Ranges(ModulePass):
    """Record MVM input scales and column ranges (calibration data if ``calib`` names .npz files, else analytic bounds).

    ``calib``: .npz files or directories of them joined by ``os.pathsep``
    (see :func:`calibration_samples`); ranges are the union over the samples.
    ``input_ranges``: ``NAME=LO,HI`` entries joined by ';', declared bounds that
    replace the assumed +-``input_bound`` of those inputs in the analytic bounds.
    """

    name = "ranges"
    calib: str = ""
    input_bound: float = 1.0
    max_steps: int = 100
    dac_bits: int | None = from_hardware(lambda hw: hw.converters.dac_bits, "converters.dac_bits")
    levels: int | None = from_hardware(lambda hw: hw.device.levels, "device.levels")
    input_ranges: str = ""

    def apply(self, module: Module) -> bool:
        declared = parse_input_ranges(self.input_ranges, module)
        analysis, report = analytic_ranges(module, self.input_bound, self.max_steps, declared)
        segments = analysis.mvm_inputs
        columns = {id(op): analysis.get(op.results[0]) for op in module.walk() if op.name == "cim.matvec"}
        activations = {id(op): analysis.get(op.operands[0]).collapse() for op in module.walk() if op.name == "cim.activation"}
        source = report.source
        samples: list[dict[str, np.ndarray]] = []
        assumptions: list[str] = []
        if self.calib:
            samples = calibration_samples(self.calib, module)
            seen = observed_ranges(module, samples)
            segments.update(seen.segments)
            columns.update(seen.columns)
            activations.update(seen.activations)
            files = calibration_files(self.calib)
            shapes = list(dict.fromkeys(str(list(a.shape)) for sample in samples for a in sample.values()))
            source = (f"calibration data {', '.join(f.name for f in files[:3])}{' ...' if len(files) > 3 else ''} "
                      f"({len(samples)} sample{'s' if len(samples) > 1 else ''}, input shape{'s' if len(shapes) > 1 else ''} "
                      f"{', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''})")
        else:
            assumptions += [f"float input '{n}' assumed within [-{self.input_bound:g}, {self.input_bound:g}]: values beyond "
                            f"saturate the converters (declare --input-range {n}=LO,HI or give --calib DATA.npz)"
                            for n in report.assumed_inputs]
            if report.unconverged_loops:
                assumptions.append(f"{report.unconverged_loops} loop(s) carry state that keeps growing: its bounds hold for "
                                   f"sequences of at most {self.max_steps} steps (give --calib DATA.npz measured on sequences as long as yours)")
        row_scales = self._shared_row_scales(module, segments)
        for op in module.walk():
            if op.name == "cim.matvec":
                scale, row_scale = row_scales[id(op)]
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
        if assumptions:
            module.attributes["range_assumptions"] = tuple(assumptions)
        module.attributes["input_ranges"] = tuple(self._input_ranges(module, samples, declared))
        return True

    def _shared_row_scales(self, module: Module, segments: dict[int, list[Interval]]) -> dict[int, tuple[float, np.ndarray]]:
        """Per MVM: (s_ref, r) from ``segment_row_scales``, chosen once for every MVM over the same weights.

        The crossbar stores w r, so MVMs that could share one physical copy of
        their weights (an unrolled decoder's steps, see share-weights) must
        also agree on r: their segments' ranges are joined and one choice
        serves them all.
        """
        probes: dict[tuple, list[Operation]] = {}
        for op in module.walk():
            if op.name == "cim.matvec":
                bias_rows = int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]
                widths = tuple(int(v.type.shape[-1]) for v in op.operands if v is not None) + ((bias_rows,) if bias_rows else ())  # type: ignore[arg-type]
                w = op.attributes["weights"].array  # type: ignore[union-attr]
                probes.setdefault((widths, bias_rows, w.shape, w.dtype.str, w[:1].tobytes()), []).append(op)
        # Equal weights agree on the probe (their shape and first row), so only MVMs that agree on it are hashed whole.
        groups: dict[tuple, list[Operation]] = {}
        for (widths, bias_rows, *_), candidates in probes.items():
            for op in candidates:
                digest = op.attributes["weights"].digest if len(candidates) > 1 else b""  # type: ignore[union-attr]
                groups.setdefault((digest, widths, bias_rows, id(candidates)), []).append(op)
        chosen: dict[int, tuple[float, np.ndarray]] = {}
        for (_, widths, bias_rows, _), members in groups.items():
            joined = segments[id(members[0])]
            for op in members[1:]:
                joined = [a.union(b) for a, b in zip(joined, segments[id(op)])]
            weights = members[0].attributes["weights"].array  # type: ignore[union-attr]
            choice = segment_row_scales(joined, list(widths), weights, bias_rows, self.dac_bits, self.levels)  # type: ignore[arg-type]
            chosen.update({id(op): choice for op in members})
        return chosen

    def _input_ranges(self, module: Module, samples: list[dict[str, np.ndarray]],
                      declared: dict[str, tuple[float, float]]) -> list[tuple[float, float]]:
        """Per graph input: the range verification draws random inputs from (declared, calibrated, or assumed)."""
        out = []
        for name, arg in zip(input_names(module), module.inputs):
            seen = [s[name] for s in samples if s[name].size]
            if name in declared:
                out.append(declared[name])
            elif seen:
                out.append((float(min(a.min() for a in seen)), float(max(a.max() for a in seen))))
            elif arg.type.is_float:
                out.append((-self.input_bound, self.input_bound))
            else:
                out.append((0.0, 0.0))
        return out
