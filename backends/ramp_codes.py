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
    """Converts ``z[j, ...]`` with ramp ``ramp_of[j]``: ``levels[code]`` in ``dtype`` (columns on the first axis,
    as the simulator stores reads: each column's values contiguous).

    ``ramps`` are (thresholds, output levels) pairs: non-decreasing float64
    thresholds and one more level than thresholds. The cells of all ramps are
    numbered consecutively; ramp r's cell map is cell(v) = trunc(min(max(v a_r +
    b_r, s_r), s_r + n_r - 1)) with its first cell s_r folded into b_r, one
    monotone map per ramp as above.
    """

    def __init__(self, ramps: list[tuple[np.ndarray, np.ndarray]], ramp_of: np.ndarray, dtype: np.dtype) -> None:
        ft = np.dtype(dtype)
        self.dtype = ft
        scales, offsets, firsts, lasts = [], [], [], []
        level_base, cell_thresholds, levels = [], [], []
        cells_so_far = levels_so_far = 0
        for thresholds, out in ramps:
            t = round_up(np.asarray(thresholds, np.float64), ft)
            span = float(t[-1]) - float(t[0]) if t.size else 0.0
            gaps = np.diff(t.astype(np.float64))
            gap = float(gaps[gaps > 0].min()) if (gaps > 0).any() else span
            n = 1 if span <= 0 or not np.isfinite(span) else int(min(MAX_CELLS, np.ceil(span / gap) + 1))
            a = ft.type(n / span) if n > 1 else ft.type(0)
            b = (ft.type(-t[0]) * a if n > 1 else ft.type(0)) + ft.type(cells_so_far)
            first, last = ft.type(cells_so_far), ft.type(cells_so_far + n - 1)
            cells = self._cells(t, a, b, first, last) - cells_so_far if t.size else np.zeros(0, np.intp)
            base = np.searchsorted(cells, np.arange(n + 1), side="left")  # thresholds in cells below c
            scales.append(a)
            offsets.append(b)
            firsts.append(first)
            lasts.append(last)
            level_base.append(levels_so_far + base[:n])
            cell_thresholds.append([t[base[c]:base[c + 1]] for c in range(n)])
            levels.append(np.asarray(out, np.float64).astype(ft))
            cells_so_far += n
            levels_so_far += len(out)
        if cells_so_far >= 2 ** (np.finfo(ft).nmant + 1):
            raise ValueError("too many ramp cells for exact cell numbers in this float type")
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
        if self.depth == 1:  # each cell's two possible outputs side by side: one gather of 2 cell + (z >= t)
            above = np.minimum(self._level_base + 1, np.repeat(np.cumsum([len(lv) for lv in levels]) - 1,
                                                               [len(p) for p in cell_thresholds]))
            self._pairs = np.stack([self._levels[self._level_base], self._levels[above]], axis=1).ravel()
        ramp_of = np.asarray(ramp_of, np.intp)[:, None]
        self._a = np.array(scales, ft)[ramp_of]
        self._b = np.array(offsets, ft)[ramp_of]
        self._first = np.array(firsts, ft)[ramp_of]
        self._last = np.array(lasts, ft)[ramp_of]

    @staticmethod
    def _cells(v: np.ndarray, a: np.ndarray, b: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 for a one-cell ramp: NaN, then its cell
            u = v * a
            u += b
        np.fmax(u, first, out=u)
        np.fmin(u, last, out=u)
        return u.astype(np.intp)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        idx = self._cells(z, self._a, self._b, self._first, self._last)
        if self.depth == 1:
            above = np.greater_equal(z, np.take(self._thresholds[0], idx))
            idx += idx
            idx += above
            return np.take(self._pairs, idx)
        code = np.take(self._level_base, idx)
        for row in self._thresholds:
            code += np.greater_equal(z, np.take(row, idx))
        return np.take(self._levels, code)
