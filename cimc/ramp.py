"""Ramp synthesis for the in-memory nonlinear ramp ADC (NL-ADC).

An N-bit NL-ADC (Yang et al., Nat. Commun. 2025; see ``docs/nl-adc.md`` §2-3)
compares a column's held output against a staircase ramp made of memristors in
the same array. If the ramp's k-th level sits where the activation f crosses the
midpoint between its (k-1)-th and k-th uniform output levels, the latched code is
a uniform quantisation of f(z): the ADC *is* the activation.

This module turns a monotonic function on a conversion range into that ramp:
ideal output levels and decision thresholds, then step conductances realised by
devices with a finite number of programmable levels, and measures what the
device quantisation costs (INL, DNL, output error in LSB). Units: conductances
in µS, ``g_per_z`` in µS per unit of the column value z, read voltages in V,
currents in µA.

Device model: a programmable device takes ``G_min + l * ΔG`` for level
``l = 0..levels-1``; in a 1T1R array a device can also be left disabled
(contributes nothing). A step of width w in z needs ``a * g_per_z * w`` µS,
made by ``n = max(1, ceil(target / G_max))`` devices (one row each); the
ramp's start ``a * g_per_z * z_lo`` is a signed offset made by the
calibration devices.

``a`` is the ramp gain: the fixed ratio by which the column's readout scales
its current before the comparator (a current-mirror ratio or a TIA feedback
ratio, set by transistor sizing; see ``docs/nl-adc.md`` §5, a design choice
beyond the paper). The comparator compares ``a * I_column`` with ``I_ramp``,
so the ramp devices realise ``a * g_per_z`` µS per unit of z. The ratio is
passive and both currents come from the same read voltage, so the comparison
stays ratiometric in Vread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.ir import Operation
from cimc.kernels.activations import Activation

QUANTIZATIONS: tuple[str, ...] = ("cumulative", "stepwise", "none")
GAIN_RULES: tuple[str, ...] = ("largest", "unity")

_MAX_BITS = 12
# Points of the dense grid on which monotonicity is checked.
_MONOTONIC_GRID = 20_001
# Differences of f below this many ulps of max|f| are float noise, not slope.
_NOISE_ULPS = 64.0
# Activations without parameters that are non-decreasing on R, whose portable float implementations fall nowhere by
# more than a few ulps (tests/test_ramp.py), far below the grid's noise: see _direction.
_NON_DECREASING = frozenset({"Relu", "Sigmoid", "Softplus", "Softsign", "Tanh"})
# Relative slack when checking that realised levels lie in their rounding window.
_ROUNDING_SLACK = 1e-9


def format_number(x: float) -> str:
    """Shortest exact decimal text of x without a trailing '.0', so names are stable and readable."""
    return np.format_float_positional(float(x), trim="-")


@dataclass(frozen=True)
class Transfer:
    """f(clip(z)) on the conversion range [z_lo, z_hi].

    ``clip`` is the recurrent op's cell clip (applied to the activation's input),
    kept here because it changes the function the ramp must realise: the ramp
    sees f(clip(z)), which is flat beyond ±clip.
    """

    activation: Activation
    clip: float | None
    z_lo: float
    z_hi: float

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Activation):
            raise CimcError(f"a transfer needs an Activation, got {type(self.activation).__name__}")
        if not (math.isfinite(self.z_lo) and math.isfinite(self.z_hi)) or not self.z_lo < self.z_hi:
            raise CimcError(
                f"conversion range of {self.activation.name} must be finite with z_lo < z_hi, "
                f"got [{self.z_lo}, {self.z_hi}]"
            )
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise CimcError(f"clip of {self.activation.name} must be a positive number, got {self.clip}")

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Evaluate in float64: the thresholds are found by bisection on these values, so they are computed
        with portable_math (the same bits on every CPU, see Activation.portable)."""
        z = np.asarray(z, dtype=np.float64)
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)
        return self.activation.portable(z)

    @property
    def name(self) -> str:
        """Human-readable, stable name, e.g. ``LeakyRelu(alpha=0.1)`` or ``Tanh∘clip(3)``."""
        act = self.activation
        params = [f"{label}={format_number(v)}" for label, v in (("alpha", act.alpha), ("beta", act.beta)) if v is not None]
        text = act.name + (f"({', '.join(params)})" if params else "")
        return text + (f"∘clip({format_number(self.clip)})" if self.clip is not None else "")

    def _range_text(self) -> str:
        return f"[{format_number(self.z_lo)}, {format_number(self.z_hi)}]"

    def _breakpoints(self) -> list[float]:
        """Where f may have a kink or a jump, so the monotonicity grid cannot step over one."""
        act = self.activation
        points = [0.0]
        if self.clip is not None:
            points += [-self.clip, self.clip]
        if act.name == "ThresholdedRelu":
            points += [act.alpha, float(np.nextafter(act.alpha, np.inf))]
        if act.name == "HardSigmoid" and act.alpha != 0:
            points += [-act.beta / act.alpha, (1 - act.beta) / act.alpha]
        return [p for p in points if self.z_lo < p < self.z_hi]

    def direction(self) -> int:
        """+1 if f is increasing on the range, -1 if decreasing.

        A ramp's steps are conductances, hence all of one sign, so only a
        monotonic f has a ramp; a constant f has no levels to quantise. The check
        runs on a dense grid plus the function's own breakpoints, ignoring
        differences at the level of float rounding. Cached per transfer (it is a
        pure function of it, and fuse-activation asks for it several times).
        """
        return _direction(self)


@lru_cache(maxsize=4096)
def _direction(transfer: Transfer) -> int:
    """Transfer.direction, uncached.

    A non-decreasing f (``_NON_DECREASING``, also under a clip) whose ends differ by more than twice the grid's
    points times the noise gets the grid's answer, +1, without the grid (541 distinct transfers of a 2-layer
    LSTM-1024 took 0.4 s on it): max - min of the grid is at least f(z_hi) - f(z_lo), so it is not constant; the
    grid's steps add up to that difference, so one of them rises by more than the noise; and no step falls by more
    than the noise, since the implementation's falls are a few ulps. Near the threshold the grid decides.
    """
    if transfer.activation.name in _NON_DECREASING:
        y_lo, y_hi = transfer(np.array([transfer.z_lo, transfer.z_hi], np.float64))
        if _rises_clearly(transfer, float(y_lo), float(y_hi)):
            return 1
    z = _with_points(np.linspace(transfer.z_lo, transfer.z_hi, _MONOTONIC_GRID), transfer._breakpoints())
    y = transfer(z)
    noise = _NOISE_ULPS * np.finfo(np.float64).eps * float(np.max(np.abs(y)))
    if float(np.max(y) - np.min(y)) <= noise:
        raise CimcError(
            f"{transfer.name} is constant ({float(y[0]):.6g}) on {transfer._range_text()}: an NL-ADC needs "
            f"a function that changes over its conversion range; widen or move the range"
        )
    d = np.diff(y)
    rises, falls = d > noise, d < -noise
    if rises.any() and falls.any():
        i, j = int(np.argmax(rises)), int(np.argmax(falls))
        raise CimcError(
            f"{transfer.name} is not monotonic on {transfer._range_text()}: it rises near z = {z[i]:.4g} "
            f"and falls near z = {z[j]:.4g}; a ramp's steps are all positive conductances, so "
            f"the NL-ADC can only realise a monotonic function; restrict the range or use a "
            f"linear ADC and a digital activation"
        )
    if rises.any() or falls.any():
        return 1 if rises.any() else -1
    # Not constant, yet no single step beyond the noise (a flat tail, e.g. Sigmoid on [30, 40]): the steps still
    # add up to the net change, which says the direction.
    return 1 if y[-1] > y[0] else -1


def _rises_clearly(transfer: Transfer, y_lo: float, y_hi: float) -> bool:
    """Whether f(z_lo) = ``y_lo`` and f(z_hi) = ``y_hi`` settle ``transfer``'s direction as +1 without the grid (_direction)."""
    noise = _NOISE_ULPS * np.finfo(np.float64).eps * max(abs(y_lo), abs(y_hi))
    return transfer.activation.name in _NON_DECREASING and y_hi - y_lo > 2 * _MONOTONIC_GRID * noise


def _with_points(grid: np.ndarray, points: list[float]) -> np.ndarray:
    """``np.union1d(grid, points)`` for a sorted ``grid`` and a few points: merged in place of union1d's sort of both."""
    if not (np.diff(grid) > 0).all():
        return np.union1d(grid, points)
    extra = np.unique(np.asarray(points, np.float64))
    at = np.searchsorted(grid, extra)
    present = (at < grid.size) & (grid[np.minimum(at, grid.size - 1)] == extra)
    return np.insert(grid, at[~present], extra[~present])


@dataclass(frozen=True)
class RampStep:
    """One ramp step: the conductance added to the ramp line at one clock.

    ``target_us`` is the ideal width ``g_per_z * (T_k - T_(k-1))``. A step of
    zero width (two thresholds at the same jump of f) uses no device. With
    ``quantization='none'`` the devices are ideal and ``device_levels`` is empty.
    """

    target_us: float
    device_levels: tuple[int, ...]
    device_us: tuple[float, ...]
    feasible: bool

    @property
    def conductance_us(self) -> float:
        """What the step adds to the ramp line."""
        return float(sum(self.device_us))


@dataclass(frozen=True, eq=False)
class Ramp:
    """A synthesised NL-ADC ramp column and its ideal reference.

    Compared by identity (``eq=False``) since it holds arrays. ``calibration_devices``
    is the number of calibration rows reserved in the column whatever the offset uses.
    ``g_per_z`` is the MAC columns' conductance per unit of z; ``gain`` the ramp
    gain a, so the ramp's own devices realise ``ramp_g_per_z = a * g_per_z``.
    """

    transfer: Transfer
    bits: int
    g_per_z: float
    g_min_us: float
    g_max_us: float
    levels: int
    levels_y: np.ndarray
    thresholds: np.ndarray
    steps: tuple[RampStep, ...]
    offset_target_us: float
    offset_levels: tuple[int, ...]
    offset_us: float
    quantization: str
    calibration_devices: int
    gain: float = 1.0

    @property
    def ramp_g_per_z(self) -> float:
        """Ramp conductance per unit of z: the column's ``g_per_z`` times the ramp gain."""
        return self.gain * self.g_per_z

    @property
    def lsb(self) -> float:
        """Signed output step D (negative for a decreasing f)."""
        return float(self.levels_y[1] - self.levels_y[0])

    @property
    def delta_g_us(self) -> float:
        """Conductance between adjacent programmable levels."""
        return (self.g_max_us - self.g_min_us) / (self.levels - 1)

    @cached_property
    def ramp_levels_us(self) -> np.ndarray:
        """Realised ramp level after each step, ``offset + S_k`` (µS), k = 1..M-1."""
        levels = self.offset_us + np.cumsum([s.conductance_us for s in self.steps])
        levels.setflags(write=False)
        return levels

    @property
    def realized_thresholds(self) -> np.ndarray:
        """The z at which the comparator flips to each code with the realised devices."""
        return self.ramp_levels_us / self.ramp_g_per_z

    @property
    def rows(self) -> int:
        """Rows of the ramp column: step devices plus every reserved calibration device."""
        return sum(len(s.device_us) for s in self.steps) + self.calibration_devices

    @property
    def two_device_steps(self) -> int:
        """Steps wider than G_max, which need two or more devices (rows)."""
        return sum(len(s.device_us) >= 2 for s in self.steps)

    @property
    def infeasible_steps(self) -> int:
        """Steps narrower than G_min, which no device can realise at their width."""
        return sum(not s.feasible for s in self.steps)

    @cached_property
    def inl_lsb(self) -> np.ndarray:
        """Integral nonlinearity per threshold: how far each realised threshold moves the output, in LSB.

        Computed once (read-only): the gain choice and the ramp's op both ask for it.
        """
        f = self.transfer
        inl = (f(self.realized_thresholds) - f(self.thresholds)) / abs(self.lsb)
        inl.setflags(write=False)
        return inl

    @property
    def dnl_lsb(self) -> np.ndarray:
        """Differential nonlinearity: error of each realised code width measured in output units, in LSB."""
        f = self.transfer
        return (np.diff(f(self.realized_thresholds)) - np.diff(f(self.thresholds))) / abs(self.lsb)

    def max_output_error_lsb(self, points: int = 200_001) -> float:
        """Largest |y_code(z) - f(z)| over a dense grid of the range, in LSB (0.5 is the ideal)."""
        z = np.linspace(self.transfer.z_lo, self.transfer.z_hi, points)
        return float(np.max(np.abs(self.outputs(self.codes(z)) - self.transfer(z))) / abs(self.lsb))

    def codes(self, z: np.ndarray, vread: float = 0.2, ramp_vread: float | None = None) -> np.ndarray:
        """Codes as the comparators latch them, from currents.

        The column carries ``vread * g_per_z * z`` µA, which its readout scales
        by the gain a before the comparator, and the ramp after k steps carries
        ``ramp_vread * (offset + S_k)`` µA; the code is the number of ramp levels
        at or below the scaled column current. With one supply for both
        (``ramp_vread=None``) a drift of Vread scales both sides and cancels; the
        gain is a fixed ratio and does not depend on Vread.
        """
        vread = _positive("vread", vread)
        ramp_vread = vread if ramp_vread is None else _positive("ramp_vread", ramp_vread)
        current = self.gain * (vread * self.g_per_z * np.asarray(z, dtype=np.float64))
        # Steps are non-negative conductances, so the ramp currents are sorted.
        return np.searchsorted(ramp_vread * self.ramp_levels_us, current, side="right").astype(np.int64)

    def outputs(self, codes: np.ndarray) -> np.ndarray:
        """The output level y_code of each code."""
        return self.levels_y[np.asarray(codes)]

    def ideal_codes(self, z: np.ndarray) -> np.ndarray:
        """Codes against the ideal thresholds (the best N-bit uniform-output quantiser of f)."""
        return np.searchsorted(self.thresholds, np.asarray(z, dtype=np.float64), side="right").astype(np.int64)


def _positive(label: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise CimcError(f"{label} must be a positive number, got {value}")
    return float(value)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= _MAX_BITS:
        raise CimcError(f"NL-ADC bits must be an integer in 1..{_MAX_BITS}, got {bits!r}")
    return int(bits)


def _thresholds(jobs: list[tuple[Transfer, np.ndarray, int]]) -> list[np.ndarray]:
    """T_k = inf{z in [z_lo, z_hi] : f(z) has crossed midpoint k}, by vectorised bisection, for each (transfer, midpoints, direction).

    Bisection needs only the crossing predicate, not continuity, so it finds the
    jump of ThresholdedRelu or the edge of a flat part as exactly as a smooth
    crossing. Invariant: the predicate is false at ``lo`` (f(z_lo) = y_0 lies
    before every midpoint) and true at ``hi``; ``hi`` is returned, so f(T_k) has
    crossed. All thresholds at one jump follow the same bisection path and come
    out bit-identical.

    Every job must have the same function f∘clip (its range may differ). The jobs
    are bisected together, each until its own thresholds are within its own
    tolerance and not one step further, and f is evaluated elementwise: each
    job's thresholds are bit for bit those of bisecting it alone, at one numpy
    call per step for all of them instead of one per job.
    """
    counts = np.array([m.size for _, m, _ in jobs])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    midpoints = np.concatenate([m for _, m, _ in jobs])
    lo = np.repeat(np.array([t.z_lo for t, _, _ in jobs], np.float64), counts)
    hi = np.repeat(np.array([t.z_hi for t, _, _ in jobs], np.float64), counts)
    direction = np.repeat(np.array([d for _, _, d in jobs], np.float64), counts)
    info = np.finfo(np.float64)
    tolerance = np.repeat(np.array([max(2 * info.eps * max(abs(t.z_lo), abs(t.z_hi)), info.smallest_subnormal)
                                    for t, _, _ in jobs]), counts)
    f = jobs[0][0]
    while True:
        active = np.logical_or.reduceat(hi - lo > tolerance, starts)
        if not active.any():
            break
        moving = np.repeat(active, counts)
        mid = lo + (hi - lo) / 2
        crossed = direction * (f(mid) - midpoints) >= 0
        hi = np.where(moving & crossed, mid, hi)
        lo = np.where(moving & ~crossed, mid, lo)
    # Float noise in f could leave T_k a hair below T_(k-1); a ramp cannot step back.
    return [np.maximum.accumulate(hi[s:s + c]) for s, c in zip(starts, counts)]


_IDEAL_LEVELS: dict[tuple[Transfer, int], tuple[np.ndarray, np.ndarray]] = {}
_IDEAL_LEVELS_MAX = 4096  # cached entries; the cache starts afresh beyond


def ideal_levels(transfer: Transfer, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The ideal output levels y_k [2^bits] and decision thresholds T_k [2^bits - 1] of ``transfer``.

    Cached (the arrays are read-only): fuse-activation synthesizes one transfer at several ramp gains,
    and computes many transfers' levels at once with :func:`prepare_ideal_levels`.
    """
    if (transfer, bits) not in _IDEAL_LEVELS:
        prepare_ideal_levels([transfer], bits, strict=True)
    return _IDEAL_LEVELS[(transfer, bits)]


def prepare_ideal_levels(transfers: list[Transfer], bits: int, strict: bool = False) -> None:
    """Compute and cache :func:`ideal_levels` of many transfers together: one bisection per function for all.

    The results are bit for bit those of one transfer at a time (see
    :func:`_thresholds`). A transfer that has no ramp (not monotonic, or
    constant) is left out, and ``ideal_levels`` of it raises the reason, unless
    ``strict``, which raises here.
    """
    count = 2**bits
    pending = [t for t in dict.fromkeys(transfers) if (t, bits) not in _IDEAL_LEVELS]
    ends: dict[Transfer, tuple[float, float]] = {}
    by_function: dict[tuple[Activation, float | None], list[Transfer]] = {}
    for transfer in pending:
        by_function.setdefault((transfer.activation, transfer.clip), []).append(transfer)
    for group in by_function.values():  # f(z_lo), f(z_hi) of a function's transfers in one (elementwise) call
        y = group[0](np.array([z for t in group for z in (t.z_lo, t.z_hi)], np.float64))
        ends.update((t, (float(y[2 * i]), float(y[2 * i + 1]))) for i, t in enumerate(group))
    jobs: dict[tuple[Activation, float | None], list[tuple[Transfer, np.ndarray, np.ndarray, int]]] = {}
    for transfer in pending:
        y0, y_end = ends[transfer]
        try:
            direction = 1 if _rises_clearly(transfer, y0, y_end) else transfer.direction()
        except CimcError:
            if strict:
                raise
            continue
        lsb = (y_end - y0) / (count - 1)
        midpoints = y0 + (np.arange(1, count) - 0.5) * lsb
        jobs.setdefault((transfer.activation, transfer.clip), []).append(
            (transfer, y0 + np.arange(count) * lsb, midpoints, direction))
    if len(_IDEAL_LEVELS) + sum(map(len, jobs.values())) > _IDEAL_LEVELS_MAX:
        _IDEAL_LEVELS.clear()
    for group in jobs.values():
        for (transfer, levels_y, _, _), thresholds in zip(group, _thresholds([(t, m, d) for t, _, m, d in group])):
            levels_y.setflags(write=False)
            thresholds.setflags(write=False)
            _IDEAL_LEVELS[(transfer, bits)] = (levels_y, thresholds)


def informative_range(transfer: Transfer, bits: int) -> Transfer:
    """``transfer`` on the part of its range where codes change, plus one code width at each end.

    Beyond it f moves by less than half a level, so a conversion range (and,
    for an identity column, a DAC full scale) that wide gives the thresholds
    the whole resolution; a saturating f fed values from +-100 then still
    resolves its steps near 0.
    """
    _, t = ideal_levels(transfer, bits)
    if t.size < 2:
        return transfer
    lo = max(transfer.z_lo, float(t[0] - (t[1] - t[0])))
    hi = min(transfer.z_hi, float(t[-1] + (t[-1] - t[-2])))
    return transfer if not lo < hi else Transfer(transfer.activation, transfer.clip, lo, hi)


def _round_devices(desired: float, n: int, g_min: float, delta_g: float, levels: int) -> tuple[tuple[int, ...], float]:
    """Nearest sum ``n*G_min + L*ΔG`` to ``desired``, with L spread evenly over the n devices.

    Spreading evenly gives each device of the step an equal share (levels
    differ by at most one) and makes the split deterministic.
    """
    total_levels = round((desired - n * g_min) / delta_g)
    total_levels = min(max(total_levels, 0), n * (levels - 1))
    base, extra = divmod(total_levels, n)
    device_levels = tuple([base + 1] * extra + [base] * (n - extra))
    return device_levels, float(sum(g_min + lv * delta_g for lv in device_levels))


def synthesize_ramp(
    transfer: Transfer,
    bits: int,
    g_per_z: float,
    g_min_us: float,
    g_max_us: float,
    levels: int,
    calibration_devices: int = 5,
    quantization: str = "cumulative",
    gain: float = 1.0,
) -> Ramp:
    """Build the ramp column of an N-bit NL-ADC for ``transfer``, its devices at ``gain * g_per_z`` µS per unit of z.

    ``quantization`` chooses how targets become device levels:

    * ``cumulative``: each step is chosen so the realised absolute level tracks
      ``a * g_per_z * T_k``; every level stays within ΔG/2 of its target as long as
      every step is feasible, and the offset's rounding is absorbed by step 1. A
      step narrower than G_min may leave its device unselected (0 µS) where that
      is nearer; the levels then stay within max(ΔG, G_min)/2 of their targets.
    * ``stepwise``: each step and the offset are rounded on their own, so the
      errors add up along the ramp (the baseline cumulative must beat).
    * ``none``: ideal devices at exactly the targets (the device counts and
      feasibility flags are still reported, so rows compare across strategies).

    A step narrower than G_min is flagged infeasible and gets the nearest
    achievable sum, which is level 0 unless cumulative tracking is catching up.
    """
    bits = _check_bits(bits)
    g_per_z = _positive("g_per_z", g_per_z)
    gain = _positive("ramp gain", gain)
    ramp_g = gain * g_per_z
    if not (math.isfinite(g_min_us) and math.isfinite(g_max_us) and 0 <= g_min_us < g_max_us):
        raise CimcError(f"device conductances need 0 <= G_min < G_max, got G_min={g_min_us}, G_max={g_max_us} µS")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise CimcError(f"devices need at least 2 programmable levels, got {levels!r}")
    if isinstance(calibration_devices, bool) or not isinstance(calibration_devices, (int, np.integer)) \
            or calibration_devices < 0:
        raise CimcError(f"calibration_devices must be a non-negative integer, got {calibration_devices!r}")
    if quantization not in QUANTIZATIONS:
        raise CimcError(f"unknown ramp quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    levels, calibration_devices = int(levels), int(calibration_devices)

    levels_y, thresholds = ideal_levels(transfer, bits)

    delta_g = (g_max_us - g_min_us) / (levels - 1)
    offset_target = ramp_g * transfer.z_lo
    offset_devices = math.ceil(abs(offset_target) / g_max_us)
    if offset_devices > calibration_devices:
        raise CimcError(
            f"the {transfer.name} ramp starts at {offset_target:.4g} µS (gain {format_number(gain)} x g_per_z={g_per_z:.4g} µS x "
            f"z_lo={format_number(transfer.z_lo)}), which needs {offset_devices} calibration devices of at most "
            f"{format_number(g_max_us)} µS, but only {calibration_devices} are available; raise "
            f"calibration_devices or narrow the range"
        )
    if quantization == "none" or offset_devices == 0:
        offset_levels: tuple[int, ...] = ()
        offset_us = offset_target
    else:
        offset_levels, magnitude = _round_devices(abs(offset_target), offset_devices, g_min_us, delta_g, levels)
        # Calibration devices are 1T1R too: all disabled is a valid (and here nearer) offset.
        if abs(offset_target) < abs(magnitude - abs(offset_target)):
            offset_levels, magnitude = (), 0.0
        offset_us = math.copysign(magnitude, offset_target)

    widths = np.diff(thresholds, prepend=transfer.z_lo)
    steps = []
    level = offset_us
    for k in range(len(thresholds)):
        target = ramp_g * float(widths[k])
        if widths[k] == 0:
            # Coinciding thresholds (f jumps by more than one level): the ramp holds for a clock.
            steps.append(RampStep(0.0, (), (), True))
            continue
        n = max(1, math.ceil(target / g_max_us))
        if quantization == "none":
            device_levels, device_us = (), (target / n,) * n
        else:
            desired = ramp_g * float(thresholds[k]) - level if quantization == "cumulative" else target
            device_levels, total = _round_devices(desired, n, g_min_us, delta_g, levels)
            if quantization == "cumulative" and n == 1 and abs(desired) < abs(total - desired):
                # Nearer to leave the step's device unselected (1T1R: it adds nothing; the ramp holds for a clock)
                # and catch up at a later step: a step narrower than G_min then costs at most G_min/2 of level.
                device_levels = ()
            device_us = tuple(g_min_us + lv * delta_g for lv in device_levels)
        steps.append(RampStep(target, device_levels, device_us, target >= g_min_us))
        level += steps[-1].conductance_us

    return Ramp(
        transfer=transfer, bits=bits, g_per_z=g_per_z, g_min_us=float(g_min_us), g_max_us=float(g_max_us),
        levels=levels, levels_y=levels_y, thresholds=thresholds, steps=tuple(steps),
        offset_target_us=offset_target, offset_levels=offset_levels, offset_us=offset_us,
        quantization=quantization, calibration_devices=calibration_devices, gain=gain,
    )


def synthesize_with_gain(
    transfer: Transfer,
    bits: int,
    g_per_z: float,
    g_min_us: float,
    g_max_us: float,
    levels: int,
    calibration_devices: int,
    quantization: str,
    gains: tuple[float, ...],
    rows: int,
    max_inl: float,
    prefer: str = "largest",
) -> Ramp:
    """The ramp at the ramp gain, among ``gains``, that a circuit designer would pick; a CimcError says why none works.

    Rule: the *largest* gain whose ramp has every step at least G_min wide, fits
    ``rows`` word lines and has its start within the calibration devices' reach
    (and then worst |INL| <= ``max_inl``). Largest, because device errors are
    absolute: rounding (ΔG/2) and programming noise (about 1 µS after
    write-verify) move a threshold by error / (a * g) in z, so the widest steps
    that the calibration devices and the rows allow give the least INL, ideal
    and noisy (KWS at 5 bits, 10 programmed chips: 82.1 ± 5.4 % with the largest
    gain, 70.5 ± 24.8 % with the gain closest to 1; ``bench/accuracy.py --gain-rule``). The price is the mirror branch's current,
    proportional to a, which the cost model does not price. With every step
    realizable, cumulative tracking keeps every level within ΔG/2 of its target,
    so worst |INL| <= ΔG / (2 G_min) LSB. If no gain realizes every step, the
    gain with the least worst |INL| within ``max_inl`` is used (the larger of
    two equal). The range is never narrowed to what the calibration devices
    reach: the columns would clip where f still changes. ``prefer="unity"`` takes the
    realizable gain closest to 1 instead (least mirror current).
    """
    fitting: list[tuple[float, float, Ramp]] = []  # (worst INL, |log gain|, ramp)
    too_tall: Ramp | None = None
    unreachable: list[float] = []
    if prefer not in GAIN_RULES:
        raise CimcError(f"unknown ramp gain rule {prefer!r}; choose one of {', '.join(GAIN_RULES)}")
    order = sorted(gains, reverse=True) if prefer == "largest" else sorted(gains, key=lambda a: (abs(math.log(a)), a))
    for gain in order:
        if math.ceil(gain * g_per_z * abs(transfer.z_lo) / g_max_us) > calibration_devices:
            unreachable.append(gain)  # the calibration devices cannot place the ramp's start
            continue
        ramp = synthesize_ramp(transfer, bits, g_per_z, g_min_us, g_max_us, levels, calibration_devices, quantization, gain)
        if ramp.rows > rows:
            too_tall = ramp if too_tall is None or ramp.rows < too_tall.rows else too_tall
            continue
        worst = float(np.abs(ramp.inl_lsb).max())
        if ramp.infeasible_steps == 0 and worst <= max_inl:
            return ramp
        fitting.append((worst, order.index(gain), ramp))
    accepted = [f for f in fitting if f[0] <= max_inl]
    if accepted:
        return min(accepted, key=lambda f: f[:2])[2]
    listed = "/".join(format_number(a) for a in sorted(gains))
    if fitting:
        worst, _, ramp = min(fitting, key=lambda f: f[:2])
        gain = ramp.gain
        narrow = (f"; {ramp.infeasible_steps} steps are narrower than G_min = {format_number(g_min_us)} uS at "
                  f"{gain * g_per_z:.3g} uS per unit of z" if ramp.infeasible_steps else "")
        reach = (f"; gains from {format_number(min(unreachable))} up would start the ramp beyond the {calibration_devices} "
                 f"calibration devices" if unreachable else "")
        raise CimcError(f"no ramp gain in {listed} realizes the {bits}-bit ramp within max_inl = {max_inl:g}: the best "
                        f"(gain {format_number(gain)}) has worst |INL| {worst:.2f} LSB{narrow}{reach} (fewer NL-ADC bits, a lower "
                        "G_min or more calibration devices would make it)")
    if too_tall is not None:
        raise CimcError(f"the {bits}-bit ramp needs {too_tall.rows} rows; the array has {rows}")
    raise CimcError(f"no ramp gain in {listed} puts the start of the {bits}-bit ramp within the calibration devices' reach")


def linear_adc_codes(
    z: np.ndarray, bits: int, z_lo: float, z_hi: float, vread: float, nominal_vread: float, g_per_z: float
) -> np.ndarray:
    """A conventional ramp ADC whose reference currents are fixed at the nominal read voltage.

    Its thresholds are uniform, midway between the levels ``z_lo + k*Δ``; the
    references are ``nominal_vread * g_per_z * t_k`` while the column carries
    ``vread * g_per_z * z``, so its codes shift when Vread drifts (the contrast
    of the paper's Fig. 3b with the ratiometric NL-ADC).
    """
    bits = _check_bits(bits)
    if not (math.isfinite(z_lo) and math.isfinite(z_hi)) or not z_lo < z_hi:
        raise CimcError(f"linear ADC range must be finite with z_lo < z_hi, got [{z_lo}, {z_hi}]")
    vread, nominal_vread = _positive("vread", vread), _positive("nominal_vread", nominal_vread)
    g_per_z = _positive("g_per_z", g_per_z)
    count = 2**bits
    references = nominal_vread * g_per_z * (z_lo + (np.arange(1, count) - 0.5) * (z_hi - z_lo) / (count - 1))
    current = vread * g_per_z * np.asarray(z, dtype=np.float64)
    return np.searchsorted(references, current, side="right").astype(np.int64)


def output_error_bound_lsb(ramp: Ramp) -> float:
    """Worst-case output error in LSB that conductance quantisation alone allows.

    The ideal quantiser is off by at most 0.5 LSB. Rounding to a ΔG grid moves
    each ramp level by at most a radius ``r_k`` (µS): ΔG/2 with cumulative
    tracking (max(ΔG, G_min)/2 if some step is narrower than G_min, since a
    step then adds 0 or at least G_min), ``j * ΔG/2`` after j independent roundings with stepwise, 0 for
    ideal devices. A threshold then moves by at most ``r_k / (a * g_per_z)``, and a
    code can only be wrong for z within that distance of T_k, where the output
    moves by at most how far f gets from the crossed midpoint within it:
    ``max(|f(T_k + r) - m_k|, |m_k - f(T_k - r)|)``. That is at most
    ``max|f'| near T_k * r`` for smooth f, and stays finite (the jump) where f
    jumps. The bound is returned as 0.5 plus the largest of these over k, in LSB.

    The radii hold only if every rounding landed in its window (every step
    feasible, no clipping at n*G_min or n*G_max); the ramp's own levels are
    checked, and a CimcError says which level breaks the premise.
    """
    if ramp.quantization == "none":
        return 0.5
    half = ramp.delta_g_us / 2
    if ramp.quantization == "cumulative":
        radius = np.full(len(ramp.steps), half if ramp.infeasible_steps == 0 else max(half, ramp.g_min_us / 2))
    else:
        roundings = int(ramp.offset_target_us != 0) + np.cumsum([bool(s.device_levels) for s in ramp.steps])
        radius = roundings * half
    targets = ramp.ramp_g_per_z * ramp.thresholds
    deviation = np.abs(ramp.ramp_levels_us - targets)
    broken = deviation > radius * (1 + _ROUNDING_SLACK) + _ROUNDING_SLACK * np.abs(targets)
    if broken.any():
        k = int(np.argmax(broken))
        raise CimcError(
            f"no quantisation bound for the {ramp.transfer.name} ramp: level {k + 1} is {deviation[k]:.4g} µS "
            f"from its target, beyond the {radius[k]:.4g} µS that {ramp.quantization} rounding to "
            f"ΔG = {ramp.delta_g_us:.4g} µS guarantees ({ramp.infeasible_steps} steps are narrower than G_min)"
        )
    f = ramp.transfer
    r = radius / ramp.ramp_g_per_z
    midpoints = (ramp.levels_y[:-1] + ramp.levels_y[1:]) / 2
    above = np.abs(f(np.minimum(ramp.thresholds + r, f.z_hi)) - midpoints)
    below = np.abs(midpoints - f(np.maximum(ramp.thresholds - r, f.z_lo)))
    moved = np.where(r > 0, np.maximum(above, below), 0.0)
    return 0.5 + float(np.max(moved)) / abs(ramp.lsb)


def ramp_from_op(op: Operation, hw: Hardware) -> Ramp:
    """The ramp a ``cim.ramp`` op records, rebuilt from its devices (no new synthesis) on hardware ``hw``.

    fuse-activation decides a ramp once (gain, range, device levels) and records
    it on the op; the image, the plots and the tests read that decision back, so
    none of them can disagree with what the compiler chose.
    """
    a = op.attributes
    activation = Activation.create(str(a["function"]), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
    clip = float(a["clip"]) if "clip" in a else None  # type: ignore[arg-type]
    transfer = Transfer(activation, clip, float(a["z_lo"]), float(a["z_hi"]))  # type: ignore[arg-type]
    bits, gain, g_per_z = int(a["bits"]), float(a.get("gain", 1.0)), float(a["g_per_z"])  # type: ignore[arg-type]
    d = hw.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    thresholds = np.array(a["thresholds"].array, dtype=np.float64)  # type: ignore[union-attr]
    steps_us = a["steps_us"].array  # type: ignore[union-attr]
    counts = [int(n) for n in a["step_devices"]]  # type: ignore[union-attr]
    device_levels = [int(v) for v in a.get("device_levels", ())]  # type: ignore[union-attr]
    quantization = str(a["quantization"])
    widths = np.diff(thresholds, prepend=transfer.z_lo)
    steps, cursor = [], 0
    for k, n in enumerate(counts):
        target = gain * g_per_z * float(widths[k])
        if quantization == "none" or n == 0:
            levels_k: tuple[int, ...] = ()
            device_us = (float(steps_us[k]) / n,) * n if n else ()
        else:
            levels_k = tuple(device_levels[cursor:cursor + n])
            cursor += n
            # Level -1: a device left unselected (a stuck row that map-defects skips) adds nothing.
            device_us = tuple(d.g_min_us + lv * delta_g if lv >= 0 else 0.0 for lv in levels_k)
        steps.append(RampStep(target, levels_k, device_us, target == 0 or target >= d.g_min_us))
    y0, y1 = (float(transfer(np.float64(z))) for z in (transfer.z_lo, transfer.z_hi))
    levels_y = y0 + np.arange(1 << bits) * ((y1 - y0) / ((1 << bits) - 1))
    levels_y.setflags(write=False)
    thresholds.setflags(write=False)
    offset_target = gain * g_per_z * transfer.z_lo
    return Ramp(
        transfer=transfer, bits=bits, g_per_z=g_per_z, g_min_us=d.g_min_us, g_max_us=d.g_max_us, levels=d.levels,
        levels_y=levels_y, thresholds=thresholds, steps=tuple(steps), offset_target_us=offset_target,
        offset_levels=tuple(int(v) for v in a.get("offset_levels", ())), offset_us=float(a["offset_us"]),  # type: ignore[union-attr, arg-type]
        quantization=quantization, calibration_devices=int(a["calibration_devices"]), gain=gain,  # type: ignore[arg-type]
    )
