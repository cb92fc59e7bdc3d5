"""NL-ADC codes of many columns at once, each column against its own ramp.

A ramp's code for a column value z is the number of its thresholds at or
below z (``searchsorted(thresholds, z, side="right")``), and its output is the
level of that code. Converting the columns of a whole read one ramp at a time
costs one numpy call per ramp; this does all columns in a fixed number of
vectorized passes, with the same result for every finite or infinite z:

- Thresholds are rounded *up* to the column's float type t' (the least value of
  that type >= t): for z of that type, z >= t exactly when z >= t', so every
  comparison can be made in the model's type.
- Each ramp gets a uniform grid of cells, cell(v) = trunc(min(max(v a + b, 0),
  n - 1)), evaluated by the same float operations for thresholds and for z.
  Every step of it is monotone non-decreasing in v, so cell(t) < cell(z)
  implies t < z and cell(t) > cell(z) implies t > z: the code is the number of
  thresholds in lower cells plus those of z's own cell at or below z. The grid
  is as fine as the smallest gap between thresholds (at most 4096 cells), so a
  cell holds one threshold, rarely two; ``depth`` comparisons settle it.

A NaN column value reads as the ramp's lowest code (max(NaN, 0) is 0 here).
"""

from __future__ import annotations

import numpy as np

MAX_CELLS = 4096


def round_up(t: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The least value of ``dtype`` at or above each float64 threshold."""
    near = t.astype(dtype)
    return np.where(near.astype(np.float64) < t, np.nextafter(near, np.array(np.inf, dtype)), near).astype(dtype)


class ColumnCodes:
    """Converts ``z[..., j]`` with ramp ``ramp_of[j]``: ``levels[code]`` in ``dtype``.

    ``ramps`` are (thresholds, output levels) pairs: non-decreasing float64
    thresholds and one more level than thresholds.
    """

    def __init__(self, ramps: list[tuple[np.ndarray, np.ndarray]], ramp_of: np.ndarray, dtype: np.dtype) -> None:
        ft = np.dtype(dtype)
        self.dtype = ft
        scales, offsets, tops, cell_starts = [], [], [], []
        level_base, cell_thresholds, levels = [], [], []
        cells_so_far = levels_so_far = 0
        for thresholds, out in ramps:
            t = round_up(np.asarray(thresholds, np.float64), ft)
            span = float(t[-1]) - float(t[0]) if t.size else 0.0
            gaps = np.diff(t.astype(np.float64))
            gap = float(gaps[gaps > 0].min()) if (gaps > 0).any() else span
            n = 1 if span <= 0 or not np.isfinite(span) else int(min(MAX_CELLS, np.ceil(span / gap) + 1))
            a = ft.type(n / span) if n > 1 else ft.type(0)
            b = ft.type(-t[0]) * a if n > 1 else ft.type(0)
            cells = self._cells(t, a, b, ft.type(n - 1)) if t.size else np.zeros(0, np.intp)
            base = np.searchsorted(cells, np.arange(n + 1), side="left")  # thresholds in cells below c
            scales.append(a)
            offsets.append(b)
            tops.append(ft.type(n - 1))
            cell_starts.append(cells_so_far)
            level_base.append(levels_so_far + base[:n])
            cell_thresholds.append([t[base[c]:base[c + 1]] for c in range(n)])
            levels.append(np.asarray(out, np.float64).astype(ft))
            cells_so_far += n
            levels_so_far += len(out)
        self.depth = max((len(c) for per_ramp in cell_thresholds for c in per_ramp), default=0)
        table = np.full((self.depth, cells_so_far), np.nan, ft)  # z >= NaN is false, even for z = inf
        c0 = 0
        for per_ramp in cell_thresholds:
            for c, ts in enumerate(per_ramp):
                table[:len(ts), c0 + c] = ts
            c0 += len(per_ramp)
        self._thresholds = [np.ascontiguousarray(row) for row in table]
        self._level_base = np.concatenate(level_base).astype(np.intp)
        self._levels = np.concatenate(levels)
        ramp_of = np.asarray(ramp_of, np.intp)
        self._a = np.array(scales, ft)[ramp_of]
        self._b = np.array(offsets, ft)[ramp_of]
        self._top = np.array(tops, ft)[ramp_of]
        self._start = np.array(cell_starts, np.intp)[ramp_of]

    @staticmethod
    def _cells(v: np.ndarray, a: np.ndarray, b: np.ndarray, top: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 for a one-cell ramp: NaN, then cell 0
            u = v * a
            u += b
        np.fmax(u, 0, out=u)
        np.fmin(u, top, out=u)
        return u.astype(np.intp)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        idx = self._cells(z, self._a, self._b, self._top)
        idx += self._start
        code = np.take(self._level_base, idx)
        for row in self._thresholds:
            code += np.greater_equal(z, np.take(row, idx))
        return np.take(self._levels, code)
