"""Teacher-forced (per-step) runs of a program's recurrences.

Why: the error of a recurrence's step is local (a DAC step, a device level,
an ADC code, float32 rounding of that step), but a worst-case bound carried
through many steps multiplies by |Jacobian| every step and grows
geometrically even where the signed dynamics contract: on a 49-step LSTM it
says nothing. Long-horizon divergence is the model's own sensitivity, which
no compiler can bound tightly. So verification checks each step on its own:
a reference run records every ``cim.loop``'s carried values step by step,
and the run under test starts every step (after the first) from the
reference's carried values instead of its own. Each step's yields then
differ from the reference's only by what that one step did, and the bound of
``cimc.error_bound.step_bounds`` (carried bounds reset at every step) bounds
exactly that.

The hook is the interpreter's ``carried_override``; with it unset the
simulator's loop is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cimc.backends.simulator import Simulator
from cimc.interpreter import Arrays
from cimc.ir import Operation


@dataclass
class LoopRun:
    """One execution of a ``cim.loop``: per step, the values its body yielded (carried values, then scan outputs)."""

    loop: Operation
    index: int  # execution order among the run's loop executions (the same in every run of one program)
    entering: list[list[np.ndarray]] = field(default_factory=list)  # carried values entering steps 0, 1, ... (run's own)
    steps: list[list[np.ndarray]] = field(default_factory=list)

    @property
    def n_carried(self) -> int:
        return len(self.loop.operands) - 1

    def label(self, j: int) -> str:
        where = str(self.loop.location or self.loop.name).rsplit(":", 1)[-1]
        kind = "carried" if j < self.n_carried else "scan"
        return f"{where} {kind} #{j if j < self.n_carried else j - self.n_carried}"


class Trajectory:
    """Records every loop execution of one run; given a reference, replaces carried values by the reference's."""

    def __init__(self, reference: Trajectory | None = None) -> None:
        self.reference = reference
        self.runs: list[LoopRun] = []
        self._open: dict[int, LoopRun] = {}

    def override(self, loop: Operation, step: int, values: list[np.ndarray]) -> list[np.ndarray]:
        if step == 0:
            self._open[id(loop)] = LoopRun(loop, len(self.runs))
            self.runs.append(self._open[id(loop)])
        run = self._open[id(loop)]
        run.entering.append(list(values))
        if self.reference is None or step == 0:  # the first step starts from the run's own initial values
            return values
        return self.reference.runs[run.index].entering[step]

    def observe(self, op: Operation, operands: Arrays, results: list[np.ndarray]) -> None:
        if op.name != "cim.loop" or id(op) not in self._open:
            return
        run = self._open.pop(id(op))
        n, trip = run.n_carried, len(run.entering)
        carried = run.entering[1:] + [list(results[:n])]
        run.steps = [carried[t] + [scan[t] for scan in results[n:]] for t in range(trip)]


def run_trajectory(simulator: Simulator, inputs: Mapping[str, np.ndarray], reference: Trajectory | None = None
                   ) -> tuple[dict[str, np.ndarray], Trajectory]:
    """Run ``simulator``, recording every loop step; with ``reference``, teacher-forced on its carried values."""
    trajectory = Trajectory(reference)
    outputs = simulator.run(inputs, trajectory.observe, carried_override=trajectory.override)
    return outputs, trajectory
