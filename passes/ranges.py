"""ranges: record every MVM's input scale and column ranges, from calibration data or analytic bounds.

Each ``cim.matvec`` gets ``input_scale`` (the DAC full scale: the largest
input magnitude over its rows, the bias row's 1 included) and ``z_lo``/``z_hi``
(the range of each column's dot product). Each ``cim.activation`` gets
``range.lo``/``range.hi``, the range of its input, which an identity column
needs. The module's ``ranges`` attribute says where the numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.attributes import Tensor
from cimc.diagnostics import CimcError
from cimc.interpreter import Arrays, Interpreter, input_names
from cimc.ir import Module, Operation
from cimc.npz import load_npz
from cimc.pass_manager import ModulePass, register_pass
from cimc.ranges import Interval, analytic_ranges, observed_ranges


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
                scale = max(s.abs_max() for s in segments[id(op)])
                cols = columns[id(op)].width_for(int(op.results[0].type.shape[-1]))  # type: ignore[arg-type]
                if not np.isfinite(scale) or not np.isfinite(cols.lo).all() or not np.isfinite(cols.hi).all():
                    raise CimcError(f"{op.location or op.name}: cannot bound the values of block '{op.attributes.get('block')}' "
                                    f"({source}); give calibration data with --calib")
                block = str(op.attributes.get("block", "mvm"))
                op.attributes["input_scale"] = float(max(scale, np.finfo(np.float32).tiny))
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
