"""map-defects: map a placed, scheduled module around the faults a tester measured on one chip.

The measurement (``cimc chip``, docs/faults.md) reaches the pass through the
PassContext (``cimc compile --defects``). Stuck devices are a property of the
chip's device positions, so the same placement meets the same faults; the pass
changes only what is programmed onto them:

- **Weights: the differential partner.** A weight column stores
  D = G+ - G- = w s. When one device of a pair is stuck at s0 (G_max or G_min),
  the partner is retargeted so the pair still realizes D: G- = s0 - D (G+
  stuck) or G+ = s0 + D (G- stuck), clipped to [G_min, G_max]. A stuck-on
  device can always be compensated where D >= 0 on its side (s0 - D lies in
  [G_min, G_max] for 0 <= D <= G_max - G_min), which is exactly the case of the
  positive device of a positive weight; the pair's weight is then as exact as
  the partner's level (tests/test_map_defects.py). Where the clip acts (a
  stuck-off positive device of a positive weight, or both devices stuck), the
  pair keeps the nearest weight it can realize.
- **Weights: columns onto bit-line pairs.** Before that, each tile's weight
  columns are permuted onto its bit-line pairs to minimize the squared
  conductance error the pairs leave after compensation (a stuck-off positive
  device hurts a large positive weight, not a negative or small one): an
  assignment problem over the tile's columns, solved exactly by
  scipy.optimize.linear_sum_assignment. The tile records the pair of each
  column (``column_pairs``, docs/image-format.md). Rows are not permuted: every
  tile of an array reads the same word lines, so a row permutation would have
  to be shared by all of them.
- **Ramps: skip the stuck rows and re-synthesize from the measured devices**
  (docs/faults.md, "closed loop"). Every stuck device of a ramp column becomes
  an unselected device (level -1: its word line is never driven, so a stuck
  device adds nothing) of the step it falls in; the step's devices move to the
  next rows. The levels are then chosen again by the cumulative error diffusion
  of ``cimc.ramp.synthesize_ramp``, fed with what each device measured: a
  healthy device's measured residual (its read minus its level's nominal
  conductance) is added to what its new level gives, so the error of one step
  is absorbed by the next. Where the column has no room to skip every stuck
  row, the rows stay and a stuck device counts at its rail in that diffusion.
  The ramp's INL before (the measured ramp) and after (the predicted one) is
  recorded for the compile summary.

Run it last (after schedule): placement, ramps and the step program are final.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.attributes import Tensor
from cimc.defects import ChipMeasurement
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.ir import Module, Operation
from cimc.pass_manager import ModulePass, PassContext, register_pass
from cimc.ramp import Ramp, ramp_from_op

SUMMARY_ATTR = "defects.summary"


def compensate_pair(g_pos: np.ndarray, g_neg: np.ndarray, stuck_pos: np.ndarray, stuck_neg: np.ndarray,
                    g_min: float, g_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Target (G+, G-) with the partner of every singly stuck device retargeted (see the module docstring).

    The partner gets clip(s0 - D) (G+ stuck at s0) or clip(s0 + D) (G- stuck);
    the stuck device's own target is set to keep the targets' difference D
    (it lies in [G_min, G_max] whatever the clip does, and the device holds s0
    anyway), so the reference weights, (G+ - G-) / s, stay the model's weights
    and the exact fidelity is unchanged.
    """
    diff = g_pos - g_neg
    rail_pos = np.where(stuck_pos > 0, g_max, g_min)
    rail_neg = np.where(stuck_neg > 0, g_max, g_min)
    only_pos = (stuck_pos != 0) & (stuck_neg == 0)
    only_neg = (stuck_neg != 0) & (stuck_pos == 0)
    partner_neg = np.clip(rail_pos - diff, g_min, g_max)
    partner_pos = np.clip(rail_neg + diff, g_min, g_max)
    new_pos = np.where(only_pos, partner_neg + diff, np.where(only_neg, partner_pos, g_pos))
    new_neg = np.where(only_pos, partner_neg, np.where(only_neg, partner_pos - diff, g_neg))
    return new_pos, new_neg


def realized_difference(diff: np.ndarray, stuck_pos: np.ndarray, stuck_neg: np.ndarray, g_min: float,
                        g_max: float) -> np.ndarray:
    """G+ - G- a pair realizes for the target difference ``diff`` after :func:`compensate_pair`, element-wise."""
    rail_pos = np.where(stuck_pos > 0, g_max, g_min)
    rail_neg = np.where(stuck_neg > 0, g_max, g_min)
    pos_stuck, neg_stuck = stuck_pos != 0, stuck_neg != 0
    return np.where(pos_stuck & neg_stuck, rail_pos - rail_neg,
                    np.where(pos_stuck, rail_pos - np.clip(rail_pos - diff, g_min, g_max),
                             np.where(neg_stuck, np.clip(rail_neg + diff, g_min, g_max) - rail_neg, diff)))


def column_cost(diff: np.ndarray, stuck_pos: np.ndarray, stuck_neg: np.ndarray, g_min: float,
                g_max: float) -> np.ndarray:
    """cost[j, q]: squared conductance error (uS^2, summed over rows) of weight column j on bit-line pair q.

    In uS rather than weight units, so that tiles sharing devices (with other
    column scales) choose the same placement.
    """
    d = diff[:, :, None]
    realized = realized_difference(d, stuck_pos[:, None, :], stuck_neg[:, None, :], g_min, g_max)
    return ((realized - d) ** 2).sum(axis=0)


def assign_columns(cost: np.ndarray) -> np.ndarray:
    """The pair q_j of each column j minimizing sum_j cost[j, q_j] (an assignment problem, solved exactly by
    scipy's linear_sum_assignment); the identity unless that lowers the cost, so a healthy tile keeps its layout."""
    from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize costs every compile ~0.3 s and 44 MB

    identity = np.arange(cost.shape[0])
    _, pairs = linear_sum_assignment(cost)
    if cost[identity, pairs].sum() < cost[identity, identity].sum():
        return pairs.astype(np.int64)
    return identity


def _nominal_us(hw: Hardware, level: np.ndarray) -> np.ndarray:
    d = hw.device
    return np.where(level >= 0, d.g_min_us + level * (d.g_max_us - d.g_min_us) / (d.levels - 1), 0.0)


def _column_levels(ramp: Ramp) -> np.ndarray:
    steps = [lv for s in ramp.steps for lv in s.device_levels]
    offset = list(ramp.offset_levels) + [-1] * (ramp.calibration_devices - len(ramp.offset_levels))
    return np.array(steps + offset, np.int64)


def _inl_lsb(ramp: Ramp, thresholds: np.ndarray) -> float:
    f = ramp.transfer
    return float(np.max(np.abs(f(thresholds) - f(ramp.thresholds))) / abs(ramp.lsb))


@dataclass(frozen=True)
class RampRepair:
    """A ramp column laid out again on a measured column: per step its device levels (-1: a skipped stuck row)."""

    step_levels: list[tuple[int, ...]]
    calibration_levels: tuple[int, ...]  # every calibration row, -1 where unused or stuck
    predicted_steps_us: np.ndarray
    skipped_rows: int  # 0 where the column had no room to skip: the stuck devices then count at their rails
    inl_before: float
    inl_after: float


class _NoRoom(Exception):
    """The column has too few rows to skip every stuck device of the ramp."""


def repair_ramp(ramp: Ramp, measured_us: np.ndarray, stuck: np.ndarray, hw: Hardware) -> RampRepair:
    """Skip the stuck rows of a ramp column and re-synthesize its levels from the measured devices.

    Where the column has too few rows to skip them all, the ramp keeps its rows:
    each stuck device then counts at its rail in its step, and the step's other
    devices and the steps after it absorb the difference.
    """
    try:
        return _repair(ramp, measured_us, stuck, hw, skip=True)
    except _NoRoom:
        return _repair(ramp, measured_us, stuck, hw, skip=False)


def _repair(ramp: Ramp, measured_us: np.ndarray, stuck: np.ndarray, hw: Hardware, skip: bool) -> RampRepair:
    d = hw.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    old = _column_levels(ramp)
    rows = measured_us.shape[0]
    healthy_measured = (old >= 0) & (stuck[:old.size] == 0) & (measured_us[:old.size] > 0)  # 0: not read
    residual = np.zeros(rows)
    residual[:old.size] = np.where(healthy_measured, measured_us[:old.size] - _nominal_us(hw, old), 0.0)
    old_level = np.full(rows, -1)
    old_level[:old.size] = old
    rail = np.where(stuck > 0, d.g_max_us, d.g_min_us)
    ramp_g = ramp.ramp_g_per_z
    offset = ramp.offset_us  # the calibration devices are re-tuned on the chip against the ramp anyway
    # Before: the ramp as measured (stuck devices at their rails, every other device as read).
    counts = [len(s.device_levels) for s in ramp.steps]
    bounds = np.cumsum([0] + counts)
    before = offset + np.cumsum([measured_us[bounds[i]:bounds[i + 1]].sum() for i in range(len(counts))])
    cursor, level = 0, offset
    step_levels: list[tuple[int, ...]] = []
    realized: list[float] = []
    for k, step in enumerate(ramp.steps):
        n = len(step.device_levels)
        if n == 0:
            step_levels.append(())
            realized.append(0.0)
            continue
        rows_k: list[int] = []  # the step's rows; with skip, until n of them are healthy
        while len(rows_k) < n or (skip and sum(stuck[r] == 0 for r in rows_k) < n):
            if cursor >= rows:
                raise _NoRoom if skip else CimcError(f"internal error: a ramp column outgrew its {rows} rows")
            rows_k.append(cursor)
            cursor += 1
        healthy = [r for r in rows_k if stuck[r] == 0]
        fixed = 0.0 if skip else float(sum(rail[r] for r in rows_k if stuck[r] != 0))
        desired = ramp_g * float(ramp.thresholds[k]) - level
        h = len(healthy)
        total = fixed
        chosen: list[int] = []
        if h:
            res = float(residual[healthy].sum())
            total_levels = int(np.clip(round((desired - fixed - res - h * d.g_min_us) / delta), 0, h * (d.levels - 1)))
            base, extra = divmod(total_levels, h)
            chosen = [base + 1] * extra + [base] * (h - extra)
            total = fixed + h * d.g_min_us + total_levels * delta + res
            if n == 1 and h == 1 and not fixed and abs(desired) < abs(total - desired):
                chosen, total = [-1], 0.0  # unselected: nearer, and the next step catches up
        picks = iter(chosen)
        # A skipped stuck row is unselected (-1); a kept one keeps its level (it holds its rail whatever it is given).
        step_levels.append(tuple(next(picks) if stuck[r] == 0 else (-1 if skip else int(old_level[r])) for r in rows_k))
        realized.append(total)
        level += total
    after = offset + np.cumsum(realized)
    # The calibration devices follow the steps; with skip, a stuck row among them is left unselected too.
    calibration: list[int] = []
    offsets = list(ramp.offset_levels) + [-1] * (ramp.calibration_devices - len(ramp.offset_levels))
    while offsets:
        if cursor >= rows:
            raise _NoRoom if skip else CimcError(f"internal error: a ramp column outgrew its {rows} rows")
        calibration.append(-1 if skip and stuck[cursor] != 0 else offsets.pop(0))
        cursor += 1
    skipped = int((stuck[:cursor] != 0).sum()) if skip else 0
    return RampRepair(step_levels, tuple(calibration), np.array(realized), skipped,
                      _inl_lsb(ramp, before / ramp_g), _inl_lsb(ramp, after / ramp_g))


@register_pass
@dataclass(frozen=True)
class MapDefects(ModulePass):
    """Map placed tiles and ramps around a measured chip's stuck devices (cimc compile --defects)."""

    name = "map-defects"

    def bind(self, context: PassContext) -> ModulePass:
        bound = super().bind(context)
        object.__setattr__(bound, "_context", context)  # the measurement is data, not a pipeline option
        return bound

    def needs_context(self) -> bool:
        return True

    def apply(self, module: Module) -> bool:
        context: PassContext | None = getattr(self, "_context", None)
        if context is None or context.defects is None:
            raise CimcError("map-defects needs a chip measurement: cimc compile --defects MEASURED.npz (from cimc chip)")
        hw, m = context.hardware, context.defects
        shape = (hw.array.rows, hw.array.cols)
        for k, g in m.g_us.items():
            if g.shape != shape:
                raise CimcError(f"the chip measurement's array {k} is {g.shape[0]} x {g.shape[1]}; this hardware's arrays "
                                f"are {shape[0]} x {shape[1]}")
        lines: list[str] = []
        compensated = permuted = 0
        for op in module.walk():
            if op.name == "cim.tile_mvm" and "array" in op.attributes:
                singly, moved = _map_tile(op, m, hw)
                compensated += singly
                permuted += moved
            elif op.name == "cim.ramp":
                line = _map_ramp(op, m, hw)
                if line:
                    lines.append(line)
        lines.insert(0, f"defects: chip {m.seed}: {permuted} tiles' columns moved to other bit-line pairs, {compensated} "
                        f"singly stuck weight pairs retargeted on the partner")
        module.attributes[SUMMARY_ATTR] = "\n".join(lines) + "\n"
        return True


def _map_tile(op: Operation, m: ChipMeasurement, hw: Hardware) -> tuple[int, bool]:
    """Place the tile's columns on the pairs that suit them best, then retarget partners: (pairs retargeted, moved)."""
    k, r, c = (int(op.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
    if k not in m.stuck:
        return 0, False
    g_min, g_max = hw.device.g_min_us, hw.device.g_max_us
    g_pos, g_neg = (op.attributes[n].array for n in ("g_pos", "g_neg"))  # type: ignore[union-attr]
    rows, width = g_pos.shape
    region = m.stuck[k][r:r + rows, c:c + 2 * width]
    if not region.any():
        return 0, False
    pairs = assign_columns(column_cost(g_pos - g_neg, region[:, 0::2], region[:, 1::2], g_min, g_max))
    moved = bool(np.any(pairs != np.arange(width)))
    if moved:
        op.attributes["column_pairs"] = tuple(int(q) for q in pairs)
    stuck_pos, stuck_neg = region[:, 2 * pairs], region[:, 2 * pairs + 1]
    singly = int(((stuck_pos != 0) ^ (stuck_neg != 0)).sum())
    new_pos, new_neg = compensate_pair(g_pos, g_neg, stuck_pos, stuck_neg, g_min, g_max)
    key = str(op.attributes.get("block", "tile"))
    op.attributes["g_pos"] = Tensor.adopt(new_pos, key=f"{key}.defects.g_pos")
    op.attributes["g_neg"] = Tensor.adopt(new_neg, key=f"{key}.defects.g_neg")
    return singly, moved


def _map_ramp(op: Operation, m: ChipMeasurement, hw: Hardware) -> str:
    k, c = int(op.attributes["array"]), int(op.attributes["array_col"])  # type: ignore[arg-type]
    if k not in m.stuck or op.attributes.get("quantization") == "none" or "device_levels" not in op.attributes:
        return ""  # ideal devices, or none recorded: nothing to lay out again
    ramp = ramp_from_op(op, hw)
    repair = repair_ramp(ramp, m.g_us[k][:, c], m.stuck[k][:, c], hw)
    step_devices = tuple(len(levels) for levels in repair.step_levels)
    op.attributes["step_devices"] = step_devices
    op.attributes["device_levels"] = tuple(lv for levels in repair.step_levels for lv in levels)
    op.attributes["steps_us"] = Tensor(repair.predicted_steps_us, key=f"ramp{k}.{c}.defects.steps_us")
    op.attributes["offset_levels"] = repair.calibration_levels
    op.attributes["calibration_devices"] = len(repair.calibration_levels)
    op.attributes["rows"] = sum(step_devices) + len(repair.calibration_levels)
    op.attributes["inl_lsb"] = repair.inl_after
    return (f"  ramp at array {k} bit line {c}: |INL| {repair.inl_before:.3f} LSB measured -> {repair.inl_after:.3f} "
            f"LSB re-synthesized ({repair.skipped_rows} stuck rows skipped)")
