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
- **Weights: rows and columns onto physical lines, spares included.** Before
  that, per array, the logical word lines and weight columns are assigned to
  physical ones to minimize the squared conductance error the pairs leave
  after compensation (a stuck-off positive device hurts a large positive
  weight, not a negative or small one). Every tile of an array reads the same
  word lines (one DAC each), so the rows are one assignment problem over the
  array's logical word lines and all its physical ones (unused main lines and
  the spare word lines), its cost summed over every tile; the columns are one
  problem over every tile's columns and its own pairs plus the array's spare
  pairs. Each is solved exactly by scipy.optimize.linear_sum_assignment given
  the other, alternately (:func:`map_array`). The tiles record the result
  (``word_lines``, ``column_pairs``, docs/image-format.md).
- **Ramps: skip the stuck rows and re-synthesize from the measured devices**
  (docs/faults.md, "closed loop"), or move to a spare ramp column. Every stuck device of a ramp column becomes
  an unselected device (level -1: its word line is never driven, so a stuck
  device adds nothing) of the step it falls in; the step's devices move to the
  next rows. The levels are then chosen again by the cumulative error diffusion
  of ``cimc.ramp.synthesize_ramp``, fed with what each device measured: a
  healthy device's measured residual (its read minus its level's nominal
  conductance) is added to what its new level gives, so the error of one step
  is absorbed by the next. Where the column has no room to skip every stuck
  row, the rows stay and a stuck device counts at its rail in that diffusion.
  Such a ramp moves to a free spare ramp column of its array whose stuck
  devices can all be skipped, if that predicts a smaller INL. The ramp's INL
  before (the measured ramp) and after (the predicted one) is recorded for
  the compile summary.

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
MOVE_PENALTY = 1e-9


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
    kept_stuck: bool = False  # stuck devices stayed in the ramp's rows (no room to skip them)


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
                      _inl_lsb(ramp, before / ramp_g), _inl_lsb(ramp, after / ramp_g),
                      kept_stuck=not skip and bool((stuck[:cursor] != 0).any()))


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
        shape = (hw.array.physical_rows, hw.array.physical_cols)
        for k, g in m.g_us.items():
            if g.shape != shape:
                raise CimcError(f"the chip measurement's array {k} is {g.shape[0]} x {g.shape[1]}; this hardware's arrays "
                                f"are {shape[0]} x {shape[1]} (spare lines included)")
        lines: list[str] = []
        by_array: dict[int, list[Operation]] = {}
        ramps: dict[int, list[Operation]] = {}
        for op in module.walk():
            if op.name == "cim.tile_mvm" and "array" in op.attributes and int(op.attributes["array"]) in m.stuck:  # type: ignore[arg-type]
                by_array.setdefault(int(op.attributes["array"]), []).append(op)  # type: ignore[arg-type]
            elif op.name == "cim.ramp":
                ramps.setdefault(int(op.attributes["array"]), []).append(op)  # type: ignore[arg-type]
        totals = np.zeros(4, np.int64)
        for k in sorted(by_array):
            totals += _map_tiles(by_array[k], m.stuck[k], hw)
        for k in sorted(ramps):
            taken = {int(op.attributes["array_col"]) for op in ramps[k]}  # type: ignore[arg-type]
            for op in ramps[k]:
                line = _map_ramp(op, m, hw, taken)
                if line:
                    lines.append(line)
        compensated, moved, onto_spare, spare_pairs = (int(v) for v in totals)
        lines.insert(0, f"defects: chip {m.seed}: {moved} word lines moved ({onto_spare} onto spare word lines), "
                        f"{spare_pairs} weight columns onto spare bit-line pairs, {compensated} singly stuck weight pairs "
                        f"retargeted on the partner")
        module.attributes[SUMMARY_ATTR] = "\n".join(lines) + "\n"
        return True


@dataclass
class LineUnit:
    """Tiles programmed onto the same devices (one tile, or every tile that shares its weights)."""

    tiles: list[Operation]
    diff: np.ndarray  # [rows, width] target G+ - G- (uS)
    row: int  # array_row: the tile's row i is logical word line row + i
    col: int  # array_col: pair q is bit lines col + 2q, col + 2q + 1

    @property
    def width(self) -> int:
        return self.diff.shape[1]


@dataclass(frozen=True)
class ArrayMapping:
    """Where one array's logical lines go: ``word_line[l]`` for logical word line l, ``pairs[u]`` per unit."""

    word_line: np.ndarray
    pairs: list[np.ndarray]
    cost: float  # the summed squared pair error left (uS^2)


def _stuck_pairs(stuck: np.ndarray, unit: LineUnit, lines: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stuck marks of (G+, G-) of pairs ``pairs`` of ``unit`` on word lines ``lines``."""
    bit = unit.col + 2 * pairs
    return stuck[np.ix_(lines, bit)], stuck[np.ix_(lines, bit + 1)]


def _candidate_pairs(unit: LineUnit, hw: Hardware) -> np.ndarray:
    """The unit's own pairs, then the array's spare pairs (bit lines cols + 2s), as pair offsets from its bit line."""
    own = np.arange(unit.width)
    if (hw.array.cols - unit.col) % 2:
        return own  # an odd main width leaves the spare pairs off this unit's pair grid
    spare = (hw.array.cols - unit.col) // 2 + np.arange(hw.array.spare_cols // 2)
    return np.concatenate([own, spare])


def assign(cost: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The column (of ``cost``) of each row minimizing the summed cost, each column used at most once: an
    assignment problem, solved exactly by scipy's linear_sum_assignment (rectangular: more columns than rows
    leaves some unused, which is how spare lines enter). ``current`` is kept unless the optimum is lower, and
    ties go to the layout that moves the fewest lines, so a healthy array keeps its layout and the alternation
    in :func:`map_array` never increases the cost."""
    from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize costs every compile ~0.3 s and 44 MB

    index = np.arange(cost.shape[0])
    moving = np.ones(cost.shape)
    moving[index, current] = 0.0
    # Among equally good layouts the one that moves the fewest lines: MOVE_PENALTY (uS^2) is far below any
    # error a level step makes ((dG / 2)^2 ~ 0.6 uS^2 at the defaults), so it decides only ties.
    rows, cols = linear_sum_assignment(cost + MOVE_PENALTY * moving)
    best = np.empty(cost.shape[0], np.int64)
    best[rows] = cols
    return best if cost[index, best].sum() < cost[index, current].sum() else current


def _column_step(units: list[LineUnit], stuck: np.ndarray, word_line: np.ndarray, hw: Hardware,
                 current: list[np.ndarray]) -> list[np.ndarray]:
    """Every weight column of the array onto its own tile's pairs or the spare pairs, given the word lines."""
    g_min, g_max = hw.device.g_min_us, hw.device.g_max_us
    spare = hw.array.spare_cols // 2
    own_total = sum(u.width for u in units)
    # Columns: every unit's own pairs, then the spare pairs (shared by the array's units).
    big = np.inf
    cost = np.full((own_total, own_total + spare), big)
    first = 0
    for u in units:
        lines = word_line[u.row:u.row + u.diff.shape[0]]
        candidates = _candidate_pairs(u, hw)
        sp, sn = _stuck_pairs(stuck, u, lines, candidates)
        c = column_cost(u.diff, sp, sn, g_min, g_max)  # [width, candidates]
        cost[first:first + u.width, first:first + u.width] = c[:, :u.width]
        cost[first:first + u.width, own_total:own_total + candidates.size - u.width] = c[:, u.width:]
        first += u.width
    finite = np.where(np.isfinite(cost), cost, 1e30)  # linear_sum_assignment refuses inf; no real cost comes near
    index, first = [], 0
    for u, q in zip(units, current):
        index.append(np.where(q < u.width, first + q, own_total + q - (hw.array.cols - u.col) // 2))
        first += u.width
    chosen = assign(finite, np.concatenate(index) if index else np.zeros(0, np.int64))
    out, first = [], 0
    for u in units:
        picked = chosen[first:first + u.width]
        out.append(np.where(picked < own_total, picked - first, (hw.array.cols - u.col) // 2 + picked - own_total))
        first += u.width
    return out


def row_cost(units: list[LineUnit], stuck: np.ndarray, pairs: list[np.ndarray], lines: int, hw: Hardware) -> np.ndarray:
    """cost[l, p]: squared pair error (uS^2) of logical word line l on physical word line p, summed over every
    weight column of every unit on the array (each at its pair), i.e. over all the tiles that share the word line."""
    g_min, g_max = hw.device.g_min_us, hw.device.g_max_us
    physical = stuck.shape[0]
    cost = np.zeros((lines, physical))
    every = np.arange(physical)
    for u, q in zip(units, pairs):
        sp, sn = _stuck_pairs(stuck, u, every, q)  # [physical, width]
        d = u.diff[:, None, :]
        err = (realized_difference(d, sp[None], sn[None], g_min, g_max) - d) ** 2
        cost[u.row:u.row + u.diff.shape[0]] += err.sum(axis=2)
    return cost


def map_array(units: list[LineUnit], stuck: np.ndarray, hw: Hardware, rounds: int = 4) -> ArrayMapping:
    """Word lines and bit-line pairs of one array's units minimizing the summed squared pair error.

    The word lines are common to every tile of the array (one DAC drives each),
    so the row assignment is one problem over the array's logical word lines and
    all its physical ones (spares included), its cost summed over every tile;
    the columns are one problem over every tile's columns and its own pairs plus
    the array's spare pairs. Each is solved exactly given the other, alternately
    (block coordinate descent: the cost never increases), until neither moves.
    """
    lines = max(u.row + u.diff.shape[0] for u in units)
    word_line = np.arange(lines)
    pairs = [np.arange(u.width) for u in units]
    for _ in range(rounds):
        new_pairs = _column_step(units, stuck, word_line, hw, pairs)
        new_lines = assign(row_cost(units, stuck, new_pairs, lines, hw), word_line)
        moved = not np.array_equal(new_lines, word_line) or any(not np.array_equal(a, b) for a, b in zip(new_pairs, pairs))
        word_line, pairs = new_lines, new_pairs
        if not moved:
            break
    total = float(row_cost(units, stuck, pairs, lines, hw)[np.arange(lines), word_line].sum())
    return ArrayMapping(word_line, pairs, total)


def _units(tiles: list[Operation]) -> list[LineUnit]:
    """The array's tiles grouped by the devices they occupy (tiles sharing weights are programmed once)."""
    groups: dict[tuple[int, int, int, int], LineUnit] = {}
    for op in tiles:
        r, c = int(op.attributes["array_row"]), int(op.attributes["array_col"])  # type: ignore[arg-type]
        g_pos, g_neg = (op.attributes[n].array.astype(np.float64) for n in ("g_pos", "g_neg"))  # type: ignore[union-attr]
        key = (r, c, *g_pos.shape)
        if key in groups:
            groups[key].tiles.append(op)
        else:
            groups[key] = LineUnit([op], g_pos - g_neg, r, c)
    return list(groups.values())


def _map_tiles(tiles: list[Operation], stuck: np.ndarray, hw: Hardware) -> tuple[int, int, int, int]:
    """Move one array's tiles onto the lines that suit them, then retarget partners.

    Returns (pairs retargeted, word lines moved, word lines onto spares, columns onto spare pairs)."""
    g_min, g_max = hw.device.g_min_us, hw.device.g_max_us
    units = _units(tiles)
    mapping = map_array(units, stuck, hw)
    compensated = 0
    for u, q in zip(units, mapping.pairs):
        lines = mapping.word_line[u.row:u.row + u.diff.shape[0]]
        sp, sn = _stuck_pairs(stuck, u, lines, q)
        for op in u.tiles:
            if not np.array_equal(q, np.arange(u.width)):
                op.attributes["column_pairs"] = tuple(int(v) for v in q)
            if not np.array_equal(lines, u.row + np.arange(lines.size)):
                op.attributes["word_lines"] = tuple(int(v) for v in lines)
            g_pos, g_neg = (op.attributes[n].array for n in ("g_pos", "g_neg"))  # type: ignore[union-attr]
            new_pos, new_neg = compensate_pair(g_pos, g_neg, sp, sn, g_min, g_max)
            key = str(op.attributes.get("block", "tile"))
            op.attributes["g_pos"] = Tensor.adopt(new_pos, key=f"{key}.defects.g_pos")
            op.attributes["g_neg"] = Tensor.adopt(new_neg, key=f"{key}.defects.g_neg")
        compensated += int(((sp != 0) ^ (sn != 0)).sum())
    lines = mapping.word_line
    spare_pairs = sum(int((q >= u.width).sum()) for u, q in zip(units, mapping.pairs))
    return (compensated, int((lines != np.arange(lines.size)).sum()), int((lines >= hw.array.rows).sum()), spare_pairs)


def _map_ramp(op: Operation, m: ChipMeasurement, hw: Hardware, taken: set[int]) -> str:
    """Lay a ramp out again on its measured column, or on a free spare ramp column of its array if that column
    leaves a smaller INL; ``taken`` holds the bit lines of the array's ramps (updated on a move)."""
    k, c = int(op.attributes["array"]), int(op.attributes["array_col"])  # type: ignore[arg-type]
    if k not in m.stuck or op.attributes.get("quantization") == "none" or "device_levels" not in op.attributes:
        return ""  # ideal devices, or none recorded: nothing to lay out again
    ramp = ramp_from_op(op, hw)
    a = hw.array
    own = repair_ramp(ramp, m.g_us[k][:, c], m.stuck[k][:, c], hw)
    repair, line = own, c
    if own.kept_stuck:
        # The column had no room to skip its stuck rows: a free spare ramp column does better if its own stuck
        # devices (measured by the march test) can all be skipped. Its devices were unformed, so its prediction
        # has no residuals to use; it is taken only for a strictly smaller predicted INL.
        spares = [b for b in range(a.cols + a.spare_cols, a.physical_cols) if b not in taken]
        for b in spares:
            candidate = repair_ramp(ramp, m.g_us[k][:, b], m.stuck[k][:, b], hw)
            if not candidate.kept_stuck and candidate.inl_after < repair.inl_after:
                repair, line = candidate, b
    if line != c:
        taken.discard(c)
        taken.add(line)
        op.attributes["array_col"] = line
    step_devices = tuple(len(levels) for levels in repair.step_levels)
    op.attributes["step_devices"] = step_devices
    op.attributes["device_levels"] = tuple(lv for levels in repair.step_levels for lv in levels)
    op.attributes["steps_us"] = Tensor(repair.predicted_steps_us, key=f"ramp{k}.{line}.defects.steps_us")
    op.attributes["offset_levels"] = repair.calibration_levels
    op.attributes["calibration_devices"] = len(repair.calibration_levels)
    op.attributes["rows"] = sum(step_devices) + len(repair.calibration_levels)
    op.attributes["inl_lsb"] = repair.inl_after
    moved = f", moved to spare bit line {line}" if line != c else ""
    return (f"  ramp at array {k} bit line {c}: |INL| {own.inl_before:.3f} LSB measured -> {repair.inl_after:.3f} "
            f"LSB re-synthesized ({repair.skipped_rows} stuck rows skipped{moved})")
