"""Elementwise error bounds of a simulated image against the model it was compiled from.

Why: a fixed relative tolerance either hides broken converters (too loose)
or fails sound models (too tight). Instead, the program of the image is run
once at ``exact`` fidelity and, alongside every value v, a bound e(v) on
|v_simulated - v_model| is carried, from the image's own converter scales,
device levels and ramps. The bound is a worst-case (interval) argument around
the exact trajectory, not a first-order estimate: every rule below holds for
any error within the bounds of the operands, so it holds through the cell
update and the recurrence, step after step. It is computed per element and
per sample, so a value far from an activation's threshold or saturated by a
clip gets the small bound it deserves. See ``cimc/verification.py`` for how
verification uses it and README ("The programming image and the simulator").

Free-running (``output_bounds``), the bound is sound but compounds: each step
multiplies the carried bound by |Jacobian|, which grows geometrically over a
long sequence even where the signed dynamics contract. ``step_bounds`` is the
bound of a teacher-forced run (``cimc.stepwise``): every step after the first
starts from the reference's carried values, so the carried bound is reset to
zero there and each step's bound covers that step alone. That is the bound
verification enforces on recurrences.

Sources of error (each can be switched off, which gives the breakdown
``cimc verify`` prints):

- ``dac``: row i of a tile is driven with x_i / r_i, quantized to
  L = 2^(dac_bits-1) - 1 steps over [-s_ref, s_ref]. For an input known to
  within e, the quantized value q lies within max(|q(x-e) - x|, |q(x+e) - x|)
  of x (q is monotone), which covers rounding (half a step of that segment,
  s_ref r_i / (2L)), clipping and the incoming error at once.
- ``weights``: the programmed level of every device instead of its target
  conductance: dW = (G+_level - G-_level - G+_target + G-_target) / g_scale,
  read from the image (|dW| <= dG / (2 g_scale)). Column j:
  |dz_j| <= sum_i |W_ij| m_i + sum_i |dW_ij| (|x_i / r_i| + m_i), m_i the DAC bound.
- ``adc``: a linear ADC is monotone, so its output is within
  max(|Q(z-e) - z|, |Q(z+e) - z|) of z: half a code step (hi - lo) / (2 (2^bits - 1))
  plus clipping plus the incoming error.
- ``nl_adc``: the code against the ramp's *realized* thresholds (programmed
  levels), levels[searchsorted(T, z)], is monotone in z, so the output is
  within max(|Q(z-e) - f(z)|, |Q(z+e) - f(z)|) of f(clip(z)): half an output
  LSB, the realized INL and the incoming error together.
- ``float32``: both this simulator and onnxruntime round. A dot product of n
  terms is within gamma_n sum |w x| (gamma_n = n u / (1 - n u), u = 2^-24) of
  the real one, an elementwise +, -, *, / within u |result|, a transcendental
  activation within 4 u max(|y|, 1) (libm and onnxruntime's vectorized
  approximations are accurate to a few ulp); each term counts twice (two
  implementations). At ``exact`` fidelity this is the whole bound.
- ``noise`` (``noisy`` only): programming noise sigma_p per device and read
  noise sigma_r G per device and read give column j a Gaussian error of std
  sqrt(sum_i (2 sigma_p^2 + sigma_r^2 (G+^2 + G-^2)) (x_i / r_i)^2) / g_scale_j;
  it enters the bound at ``sigmas`` standard deviations (verification takes
  ``tail_sigmas`` of the run's number of draws: the union bound makes an
  element outside its bound have probability <= 1e-3) and is then carried
  like any other error (conservative: independent terms would add in
  quadrature). Ramp devices are programmed with the same noise and their
  calibration devices then re-tuned; the residual threshold error is taken
  at sigmas * sigma_p sqrt(devices of the ramp) / g_per_z.
- ``gain`` (``noisy`` only): drift G(t) = G(t0) (t/t0)^-nu scales every
  conductance, and a read-voltage deviation every current. The NL-ADC is
  ratiometric to the read voltage (its ramp is read with the columns), a
  linear ADC with fixed references is not: |dz| <= |k - 1| |z| with
  k = (t/t0)^-nu (1 +- sigmas sigma_v). The ramp drifts with the columns, but
  its calibration devices are re-tuned to undrifted targets, so an NL-ADC's
  input gets |(t/t0)^-nu - 1| |z| too.

- ``faults`` (``noisy`` only, :class:`FaultModel`): stuck devices are not an
  RMS term (one moves its pair by up to the whole range), so they enter as a
  count with a confidence. A device position is stuck with probability
  p = stuck_on_rate + stuck_off_rate, independently (backends/chip.py), so the
  stuck devices among the n used devices of one weight column (both lines of
  its pairs) are Binomial(n, p); k is the least count with
  C * P(Binomial(n, p) > k) <= 1e-3 over the C columns and ramp columns of the
  image (union bound). With probability >= 1 - 1e-3 no column holds more than
  k stuck devices, and then column j is off by at most the sum of its k
  largest (|x_i / r_i| + m_i) b_d / g_scale_j, b_d = max(G_max - g_d, g_d -
  G_min) the most device d's pair can move (its level to the far rail). A
  ramp's thresholds move by at most twice the sum of its k largest b_d over
  (gain g_per_z) (a stuck step shifts the thresholds above it, and the
  re-tuned calibration devices can follow the median shift). With the chip's
  measurement (``cimc verify --defects``: what map-defects repaired), the
  devices the tester saw stuck are known: each contributes exactly its rail
  minus its programmed level, and every other device is stuck only if the
  tester missed it, with probability p * q_miss, q_miss the chance that a
  stuck device's march-test read falls outside the tester's rail window
  (tolerance + 4 read sigmas: erfc of that over sigma_r G / sqrt 2 at the
  rail), which makes k 0 on every column at the defaults.

Every op of the program has a rule: structural ops (Gather, Slice, Concat,
Transpose, Reshape, Where...) move the bounds as they move the values;
Add/Sub add them; Mul uses |a| e_b + |b| e_a + e_a e_b; monotone (or
piecewise-monotone) functions are evaluated at the ends of [v - e, v + e]
and at their breakpoints; Softmax s_i within min(s_i (exp(e_i + max e) - 1), max(s_i, 1 - s_i)) (both lie in [0, 1]);
ArgMax is certain only where the top value beats every other by more than
their bounds (else the bound is infinite: the index may differ). An op
without a rule whose operands carry error gets an infinite bound, never a
silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from cimc.backends.simulator import Simulator, SimulatorOptions, adc_quantize, dac_quantize
from cimc.backends.tester import RAIL_MARGIN_SIGMAS
from cimc.cim_kernels import apply_activation, driven_input, mvm_input, row_scales
from cimc.defects import ChipMeasurement
from cimc.hardware import Hardware
from cimc.image import Image, tile_devices, tile_levels, tile_weights
from cimc.interpreter import Arrays, Interpreter
from cimc.ir import Operation
from cimc.kernels.activations import Activation

U32 = 2.0 ** -24  # unit roundoff of float32
ACTIVATION_ULPS = 4.0
Bound = np.ndarray | None  # None: exact (no error)


@dataclass(frozen=True)
class Sources:
    """Which effects the bound covers; ``sigmas`` > 0 adds the random device effects at that many std devs."""

    dac: bool = True
    weights: bool = True
    adc: bool = True
    nl_adc: bool = True
    float32: bool = True
    sigmas: float = 0.0
    gain: float = 0.0  # |k - 1| of the linear ADC's gain (drift and read voltage)
    saturate: bool = True  # converters clip to their ranges (not at exact fidelity, whose conversions are the identity)
    ramp_gain: float = 0.0  # |k - 1| of drift left on an NL-ADC: its calibration devices are re-tuned to undrifted targets
    faults: FaultModel | None = None  # stuck devices at a confidence (noisy only)

    @staticmethod
    def for_fidelity(fidelity: str, image: Image, sigmas: float = 3.0, drift_time_s: float | None = None,
                     defects: ChipMeasurement | None = None) -> Sources:
        if fidelity == "exact":
            return Sources(dac=False, weights=False, adc=False, nl_adc=False, saturate=False)
        if fidelity == "ideal":
            return Sources()
        n = image.hardware.nonideality
        drift = (max(drift_time_s, n.drift_t0_s) / n.drift_t0_s) ** (-n.drift_nu) if drift_time_s is not None else 1.0
        gain = max(abs(drift * (1 + sigmas * n.vread_rel_std) - 1), abs(drift * (1 - sigmas * n.vread_rel_std) - 1))
        return Sources(sigmas=sigmas, gain=gain, ramp_gain=abs(drift - 1), faults=FaultModel.of(image, defects))


FAULT_FALSE_ALARM = 1e-3  # P(some column holds more stuck devices than the bound counts), union bound over columns


@dataclass(frozen=True)
class FaultModel:
    """What the bound assumes of a chip's stuck devices (see the module docstring, ``faults``)."""

    rate: float  # probability that a device the bound does not know about is stuck
    columns: int  # C: weight columns and ramp columns of the image (the union bound's count)
    measurement: ChipMeasurement | None = None  # the tester's view of this chip: its stuck devices are known

    @staticmethod
    def of(image: Image, measurement: ChipMeasurement | None) -> FaultModel | None:
        hw = image.hardware
        n = hw.nonideality
        p = n.stuck_on_rate + n.stuck_off_rate
        if p == 0:
            return None
        placed: dict[tuple[int, int, int], int] = {}  # tiles sharing devices count once
        for op in image.program().walk():
            if op.name == "cim.tile_mvm":
                k, rows, pos, _ = tile_devices(op)
                placed[(k, int(rows[0]) if rows.size else 0, int(pos[0]) if pos.size else 0)] = pos.size
        columns = sum(placed.values()) + len(image.manifest["ramps"])
        if measurement is not None:
            p *= _miss_probability(hw)
        return FaultModel(p, max(columns, 1), measurement)

    def count(self, devices: int) -> int:
        """k: the most stuck devices among ``devices`` at the model's confidence (binomial, union over columns)."""
        if devices == 0 or self.rate == 0:
            return 0
        from scipy.stats import binom  # here: scipy.stats adds ~0.7 s to every verify; only stuck devices need it

        k = int(binom.isf(FAULT_FALSE_ALARM / self.columns, devices, self.rate))
        while k < devices and self.columns * binom.sf(k, devices, self.rate) > FAULT_FALSE_ALARM:
            k += 1
        while k > 0 and self.columns * binom.sf(k - 1, devices, self.rate) <= FAULT_FALSE_ALARM:
            k -= 1
        return k

    def known(self, array: int) -> np.ndarray | None:
        """The measured stuck marks (+1/-1/0) of one array, or None without a measurement of it."""
        if self.measurement is None:
            return None
        return self.measurement.stuck.get(array)


def _miss_probability(hw: Hardware) -> float:
    """q_miss: the chance that the tester's march test (every device at the middle level) reports a stuck device
    healthy, i.e. reads it outside its rail window (verify tolerance + RAIL_MARGIN_SIGMAS read sigmas of the rail;
    backends/tester.py), the larger of the two rails. Read noise is sigma_r G, so at rail G the read leaves the
    window with probability erfc(window / (sigma_r G sqrt 2))."""
    d, n = hw.device, hw.nonideality
    worst = 0.0
    for rail in (d.g_max_us, d.g_min_us):
        sigma = n.read_noise_rel * rail
        if sigma > 0:  # without read noise a stuck device reads exactly its rail, inside the window
            worst = max(worst, math.erfc((n.verify_tolerance_us + RAIL_MARGIN_SIGMAS * sigma) / (sigma * math.sqrt(2))))
    return worst


def _abs(b: Bound, like: np.ndarray) -> np.ndarray:
    return np.zeros(like.shape) if b is None else b


class _BoundRun:
    """Runs the image's program at exact fidelity with a bound next to every value."""

    def __init__(self, image: Image, sources: Sources, per_step: bool = False) -> None:
        self.image = image
        self.per_step = per_step
        self.steps: list[list[list[np.ndarray]]] = []  # per_step: per loop execution, per step, the yields' bounds
        self.draws = 0  # Gaussian draws the noise term covers: one per column read, and per threshold of each ramp
        self._ramps_drawn: set[int] = set()
        self.sources = sources
        self.hw = image.hardware
        self.exact = Simulator(image, SimulatorOptions("exact"))
        self.ideal = Simulator(image, SimulatorOptions("ideal"))
        self.bounds: dict[int, Bound] = {}
        self._tiles: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._fault_tiles: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._fault_ramps: dict[int, float] = {}
        self._loop_bounds: dict[int, list[Bound]] = {}
        self.interpreter = Interpreter(self.exact.program, overrides=self.exact.kernels(), check_types=False)
        self._base = dict(self.interpreter.kernels)
        self.interpreter.kernels = {name: self._wrap(self._loop if name == "cim.loop" else fn) for name, fn in self._base.items()}

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        with np.errstate(invalid="ignore", over="ignore"):
            outputs = self.interpreter.run(inputs)
        body = self.exact.program.body
        final = [v for v in body.terminator.operands if v is not None]  # type: ignore[union-attr]
        bounds = {name: _abs(self.bounds.get(id(v)), outputs[name]) for name, v in zip(outputs, final)}
        return outputs, bounds

    def _wrap(self, fn: Callable) -> Callable:
        def run(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
            results = [np.asarray(r) for r in fn(op, args, it)]
            ins = [None if v is None else self.bounds.get(id(v)) for v in op.operands]
            out = self._loop_bounds.pop(id(op)) if op.name == "cim.loop" else self._rule(op, args, ins, results)
            for res, b in zip(op.results, out):
                self.bounds[id(res)] = None if b is None else np.where(np.isnan(b), np.inf, b)  # 0 * inf: unbounded
            return results
        return run

    # ---- rules --------------------------------------------------------------------------------------------

    def _rule(self, op: Operation, args: Arrays, ins: list[Bound], results: list[np.ndarray]) -> list[Bound]:
        name = op.name
        if name == "cim.tile_mvm":
            return [self._tile(op, args, ins)]
        if name == "cim.adc":
            return [self._adc(op, args[0], ins[0])]  # type: ignore[arg-type]
        if name == "cim.nl_adc":
            return [self._nl_adc(op, args[0], ins[0], results[0])]  # type: ignore[arg-type]
        y = results[0]
        if all(b is None for b in ins) and y.dtype.kind != "f":
            return [None for _ in results]  # integer ops on exact operands are exact
        if name == "cim.activation" or name in _MONOTONE:
            fn, points = _function_of(op, args)
            e = _abs(ins[0], args[0])  # type: ignore[arg-type]
            return [_monotone(fn, args[0].astype(np.float64), e, points) + self._approximation(y)]  # type: ignore[union-attr]
        if name in ("onnx.Softmax", "onnx.LogSoftmax"):
            axis = int(op.attributes.get("axis", -1))  # type: ignore[arg-type]
            e = _abs(ins[0], args[0])  # type: ignore[arg-type]
            worst = e.max(axis=axis, keepdims=True)
            if name == "onnx.Softmax":
                s = np.abs(y.astype(np.float64))
                # Both the exact and the perturbed softmax lie in [0, 1], so they differ by at most max(s, 1 - s):
                # finite where the relative form overflows (large logit bounds).
                out = np.minimum(s * np.expm1(e + worst), np.maximum(s, 1.0 - s))
            else:
                out = e + worst
            return [out + self._approximation(y)]
        if all(b is None for b in ins) or name in _SHAPE_ONLY:
            return [None for _ in results]  # correctly rounded ops on identical inputs give identical results
        if name in ("onnx.Add", "onnx.Sub", "cim.analog_sum"):
            total = sum(np.broadcast_to(_abs(b, a), y.shape) for a, b in zip(args, ins) if a is not None)
            return [total + self._round(np.abs(y))]
        if name == "onnx.Mul":
            (a, b), (ea, eb) = args, ins
            ea, eb = _abs(ea, a), _abs(eb, b)  # type: ignore[arg-type]
            return [np.abs(a) * eb + np.abs(b) * ea + ea * eb + self._round(np.abs(y))]
        if name == "onnx.Div":
            (a, b), (ea, eb) = args, ins
            ea, eb = _abs(ea, a), _abs(eb, b)  # type: ignore[arg-type]
            margin = np.abs(b) - eb
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(margin > 0, (ea + np.abs(y) * eb) / margin, np.inf)
            return [out + self._round(np.abs(y))]
        if name in _STRUCTURAL:
            data = _STRUCTURAL[name]
            if any(b is not None and np.any(b) for i, b in enumerate(ins) if i not in data):
                return [np.full(y.shape, np.inf)]
            moved = [(_abs(b, a) if i in data else a) for i, (a, b) in enumerate(zip(args, ins))]
            if name == "onnx.Where":
                return [np.where(args[0], *np.broadcast_arrays(moved[1], moved[2]))]
            return [np.asarray(self._base[name](op, moved, self.interpreter)[0], np.float64)]
        if name in ("onnx.ReduceMean", "cim.im2col") and all(b is None for b in ins[1:]):
            moved = [_abs(ins[0], args[0])] + list(args[1:])  # type: ignore[arg-type]
            return [np.asarray(self._base[name](op, moved, self.interpreter)[0], np.float64) + self._round(np.abs(y))]
        if name == "onnx.ArgMax":
            return [self._argmax(op, args[0], _abs(ins[0], args[0]))]  # type: ignore[arg-type]
        if name == "onnx.Cast":
            e = _abs(ins[0], args[0])  # type: ignore[arg-type]
            return [e if y.dtype.kind == "f" else np.where(e > 0, np.inf, 0.0)]
        return [np.full(r.shape, np.inf) for r in results]

    def _round(self, magnitude: np.ndarray) -> np.ndarray | float:
        """Both implementations round a correctly rounded op's result once."""
        return 2 * U32 * magnitude if self.sources.float32 else 0.0

    def _approximation(self, y: np.ndarray) -> np.ndarray | float:
        """Both implementations' transcendental functions are within a few ulp of max(|y|, 1)."""
        return 2 * ACTIVATION_ULPS * U32 * np.maximum(np.abs(y.astype(np.float64)), 1.0) if self.sources.float32 else 0.0

    def _weights(self, op: Operation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W as the exact run uses it, dW of the programmed levels, per-device noise variance numerator)."""
        key = int(op.attributes["image.tile"])  # type: ignore[arg-type]
        if key not in self._tiles:
            scale = op.attributes["g_scale"].array  # type: ignore[union-attr]
            exact = tile_weights(self.image, op).astype(np.float32).astype(np.float64)
            lv_pos, lv_neg = self.ideal.tile_conductances(op)
            level = ((lv_pos - lv_neg) / scale).astype(np.float32).astype(np.float64)
            n = self.hw.nonideality
            variance = (2 * n.program_noise_us ** 2 + n.read_noise_rel ** 2 * (lv_pos ** 2 + lv_neg ** 2)) / scale ** 2
            self._tiles[key] = (exact, level - exact, variance)
        return self._tiles[key]

    def _tile_faults(self, op: Operation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(b [rows, width, 2]: the most each device not known to be stuck moves its pair, in weight units;
        k [width]: how many of them the bound counts per column; |dW| of the devices known to be stuck)."""
        key = int(op.attributes["image.tile"])  # type: ignore[arg-type]
        if key not in self._fault_tiles:
            faults, d = self.sources.faults, self.hw.device
            assert faults is not None
            scale = op.attributes["g_scale"].array  # type: ignore[union-attr]
            g = np.stack(self.ideal.tile_conductances(op), axis=-1)  # [rows, width, 2]: G+, G- at their levels
            used = g > 0
            reach = np.where(used, np.maximum(d.g_max_us - g, g - d.g_min_us), 0.0)
            k, rows, pos, neg = tile_devices(op)
            marks = faults.known(k)
            known = np.zeros(g.shape, np.int8) if marks is None else \
                np.stack([marks[np.ix_(rows, pos)], marks[np.ix_(rows, neg)]], axis=-1) * used
            rail = np.where(known > 0, d.g_max_us, d.g_min_us)
            moved = np.where(known != 0, rail - g, 0.0)
            known_dw = np.abs(moved[..., 0] - moved[..., 1]) / scale
            reach = np.where(known != 0, 0.0, reach) / scale[None, :, None]
            counts = np.array([faults.count(int(n)) for n in ((used & (known == 0)).sum(axis=(0, 2)))], np.int64)
            self._fault_tiles[key] = (reach, counts, known_dw)
        return self._fault_tiles[key]

    def _fault_term(self, op: Operation, driven: np.ndarray) -> np.ndarray:
        """Column j off by at most the sum of its k_j largest driven |input| x reach, plus the known stuck devices."""
        reach, counts, known_dw = self._tile_faults(op)
        out = driven @ known_dw
        top = int(counts.max(initial=0))
        if top:
            rows, width, _ = reach.shape
            lead = driven.shape[:-1]
            v = np.moveaxis(driven[..., :, None, None] * reach, -3, -1).reshape(*lead, width, 2 * rows)  # [..., col, device]
            if top < v.shape[-1]:
                v = -np.partition(-v, top - 1, axis=-1)[..., :top]
            largest = -np.sort(-v, axis=-1)
            sums = np.concatenate([np.zeros((*largest.shape[:-1], 1)), np.cumsum(largest, axis=-1)], axis=-1)
            out = out + np.take_along_axis(sums, np.broadcast_to(counts, sums.shape[:-1])[..., None], axis=-1)[..., 0]
        return out

    def _ramp_faults(self, ramp_id: int) -> float:
        """How far (in z) the stuck devices of a ramp column can move its thresholds: twice (steps, then the
        re-tuned calibration following the median) the k largest reaches plus the known stuck devices' moves."""
        if ramp_id not in self._fault_ramps:
            faults, d = self.sources.faults, self.hw.device
            assert faults is not None
            ramp = self.ideal.ramps[ramp_id]
            g = self.ideal.devices[ramp["array"]][:, ramp["bit_line"]]
            used = g > 0
            marks = faults.known(ramp["array"])
            known = np.zeros(g.shape, np.int8) if marks is None else marks[:g.size, ramp["bit_line"]] * used
            moved = float(np.abs(np.where(known > 0, d.g_max_us, d.g_min_us) - g)[known != 0].sum())
            reach = np.sort(np.maximum(d.g_max_us - g, g - d.g_min_us)[used & (known == 0)])[::-1]
            k = faults.count(int(reach.size))
            self._fault_ramps[ramp_id] = 2 * (float(reach[:k].sum()) + moved) / (ramp.get("gain", 1.0) * ramp["g_per_z"])
        return self._fault_ramps[ramp_id]

    def _tile(self, op: Operation, args: Arrays, ins: list[Bound]) -> np.ndarray:
        r0, r1 = op.attributes["rows"]  # type: ignore[misc]
        d = driven_input(op, mvm_input(op, args)[..., r0:r1]).astype(np.float64)
        e = mvm_input(op, [None if a is None else _abs(b, a) for a, b in zip(args, ins)])
        bias_rows = int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]
        if bias_rows:
            e[..., -bias_rows:] = 0.0  # the bias rows drive an exact 1
        e = e[..., r0:r1] / row_scales(op, r1 - r0)
        scale, bits = float(op.attributes.get("input_scale", 1.0)), self.hw.converters.dac_bits  # type: ignore[arg-type]
        w, dw, variance = self._weights(op)
        m = (np.maximum(np.abs(dac_quantize(d - e, scale, bits) - d), np.abs(dac_quantize(d + e, scale, bits) - d))
             if self.sources.dac else e)
        out = m @ np.abs(w)
        if self.sources.weights:
            out = out + (np.abs(d) + m) @ np.abs(dw)
        if self.sources.float32:
            n = d.shape[-1]
            gamma = n * U32 / (1 - n * U32)
            out = out + 2 * gamma * ((np.abs(d) + m) @ (np.abs(w) + np.abs(dw)))
        if self.sources.sigmas:
            out = out + self.sources.sigmas * np.sqrt(((np.abs(d) + m) ** 2) @ variance)
            self.draws += out.size
        if self.sources.faults is not None:
            out = out + self._fault_term(op, np.abs(d) + m)
        return out

    def _adc(self, op: Operation, z: np.ndarray, e: Bound) -> np.ndarray:
        """Monotone in z: the ends of [z - e, z + e] bound it. Without the ``adc`` source the ADC still clips to its range."""
        z64, e = z.astype(np.float64), _abs(e, z)
        tile = _first_tile(op.operands[0].op)  # type: ignore[union-attr]
        lo, hi = tile.attributes["z_lo"].array, tile.attributes["z_hi"].array  # type: ignore[union-attr]
        bits = int(op.attributes["bits"])  # type: ignore[arg-type]
        convert = (lambda v: adc_quantize(v, lo, hi, bits)) if self.sources.adc else \
            (lambda v: np.clip(v, lo, hi)) if self.sources.saturate else (lambda v: v)
        reach = e + self.sources.gain * (np.abs(z64) + e)
        return np.maximum(np.abs(convert(z64 - reach) - z64), np.abs(convert(z64 + reach) - z64))

    def _nl_adc(self, op: Operation, analog: np.ndarray, e: Bound, y: np.ndarray) -> np.ndarray:
        c0, c1 = op.attributes["cols"]  # type: ignore[misc]
        z = analog[..., c0:c1].astype(np.float64)
        e = _abs(e, analog)[..., c0:c1]
        ramp_id = int(op.operands[1].op.attributes["image.ramp"])  # type: ignore[union-attr, arg-type]
        ramp = self.ideal.ramps[ramp_id]
        if self.sources.sigmas:
            e = e + self.sources.sigmas * self.hw.nonideality.program_noise_us * np.sqrt(sum(ramp["step_devices"])) / ramp["g_per_z"]
            if ramp_id not in self._ramps_drawn:  # a ramp's devices are programmed once per chip
                self._ramps_drawn.add(ramp_id)
                self.draws += len(ramp["step_devices"])
        if self.sources.faults is not None:
            e = e + self._ramp_faults(ramp_id)
        e = e + self.sources.ramp_gain * (np.abs(z) + e)
        if not self.sources.nl_adc:  # the ideal f, still saturating at the ends of the ramp's range
            fn, points = _function_of(op, [])
            if self.sources.saturate:
                lo, hi = ramp["z_lo"], ramp["z_hi"]
                fn, points = (lambda u, f=fn: f(np.clip(u, lo, hi))), points + [lo, hi]
            return _monotone(fn, z, e, points, y.astype(np.float64)) + self._approximation(y)
        thresholds = self.ideal.realized_thresholds(ramp_id)
        levels = np.asarray(ramp["output_levels"])
        exact = y.astype(np.float64)
        low = levels[np.searchsorted(thresholds, z - e, side="right")]
        high = levels[np.searchsorted(thresholds, z + e, side="right")]
        return np.maximum(np.abs(low - exact), np.abs(high - exact)) + self._approximation(y)

    def _argmax(self, op: Operation, data: np.ndarray, e: np.ndarray) -> np.ndarray:
        axis = int(op.attributes.get("axis", 0)) % data.ndim  # type: ignore[arg-type]
        keep = bool(op.attributes.get("keepdims", 1))
        v = data.astype(np.float64)
        top = np.argmax(v, axis=axis)
        top_v = np.take_along_axis(v, np.expand_dims(top, axis), axis)
        top_e = np.take_along_axis(e, np.expand_dims(top, axis), axis)
        others = v + e
        np.put_along_axis(others, np.expand_dims(top, axis), -np.inf, axis)
        certain = (top_v - top_e > others.max(axis=axis, keepdims=True))
        certain = certain if keep else np.squeeze(certain, axis)
        return np.where(certain, 0.0, np.inf)

    def _loop(self, op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        trip, *carried = args
        body = op.regions[0].block
        n_carried = len(carried)
        state = [a for a in carried if a is not None]
        state_bounds = [self.bounds.get(id(v)) for v in op.operands[1:] if v is not None]
        scans: list[list[np.ndarray]] = [[] for _ in op.results[n_carried:]]
        scan_bounds: list[list[np.ndarray]] = [[] for _ in op.results[n_carried:]]
        yields = [v for v in body.terminator.operands if v is not None]  # type: ignore[union-attr]
        steps: list[list[np.ndarray]] = []
        if self.per_step and int(trip) > 0:  # type: ignore[arg-type]
            self.steps.append(steps)
        for t in range(int(trip)):  # type: ignore[arg-type]
            if self.per_step and t > 0:
                state_bounds = [None] * len(state_bounds)  # teacher forcing: this step starts from the reference's values
            self.bounds[id(body.args[0])] = None
            for arg, b in zip(body.args[1:], state_bounds):
                self.bounds[id(arg)] = b
            out = it.run_block(body, [np.array(t, dtype=np.int64), *state])
            out_bounds = [_abs(self.bounds.get(id(v)), a) for v, a in zip(yields, out)]
            state, state_bounds = out[:n_carried], out_bounds[:n_carried]  # type: ignore[assignment]
            steps.append(out_bounds)
            for acc, accb, value, b in zip(scans, scan_bounds, out[n_carried:], out_bounds[n_carried:]):
                acc.append(value)
                accb.append(b)
        stacked, stacked_bounds = [], []
        for acc, accb, res in zip(scans, scan_bounds, op.results[n_carried:]):
            if acc:
                stacked.append(np.stack(acc))
                stacked_bounds.append(np.stack(accb))
            else:
                shape = [0] + [d if isinstance(d, int) else it.symbols.get(str(d), 0) for d in res.type.shape[1:]]
                stacked.append(np.zeros(shape, res.type.np_dtype))
                stacked_bounds.append(np.zeros(shape))
        self._loop_bounds[id(op)] = list(state_bounds) + stacked_bounds
        return state + stacked


# Ops that move values without arithmetic: indices of their data operands (the others must be exact).
_STRUCTURAL: dict[str, set[int]] = {
    "onnx.Gather": {0}, "onnx.Slice": {0}, "onnx.Unsqueeze": {0}, "onnx.Squeeze": {0}, "onnx.Transpose": {0},
    "onnx.Reshape": {0}, "onnx.Expand": {0}, "onnx.Identity": {0}, "onnx.Pad": {0, 2},
    "onnx.Concat": set(range(64)), "onnx.Where": {1, 2},
}
_SHAPE_ONLY = ("onnx.Shape", "onnx.ConstantOfShape")  # results depend on shapes only
_MONOTONE = ("onnx.Sigmoid", "onnx.Tanh", "onnx.Relu", "onnx.Sqrt", "onnx.Exp", "onnx.Log", "onnx.Neg", "onnx.Abs", "onnx.Pow")


def _first_tile(op: Operation) -> Operation:
    return op if op.name == "cim.tile_mvm" else op.operands[0].op  # type: ignore[union-attr, return-value]


def _function_of(op: Operation, args: Arrays) -> tuple[Callable[[np.ndarray], np.ndarray], list[float]]:
    """The elementwise function an op applies (float64) and its breakpoints (kinks, jumps, clip ends)."""
    if op.name in ("cim.activation", "cim.nl_adc"):
        a = op.attributes
        name = str(a["function"])
        act = Activation.create(name, a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
        alpha = float(a["alpha"]) if "alpha" in a else float(getattr(act, "alpha", 0.0) or 0.0)  # type: ignore[arg-type]
        beta = float(a["beta"]) if "beta" in a else float(getattr(act, "beta", 0.0) or 0.0)  # type: ignore[arg-type]
        points = [0.0]
        if name == "ThresholdedRelu":
            points.append(alpha)
        if name == "HardSigmoid" and alpha:
            points += [-beta / alpha, (1 - beta) / alpha]
        if "clip" in a:
            points += [-float(a["clip"]), float(a["clip"])]  # type: ignore[arg-type]
        return (lambda z: apply_activation(op, z)), points
    if op.name == "onnx.Pow":
        exponent = args[1]
        return (lambda z: np.power(z, np.asarray(exponent, np.float64))), [0.0]
    fns = {"onnx.Sigmoid": lambda z: 1 / (1 + np.exp(-z)), "onnx.Tanh": np.tanh, "onnx.Relu": lambda z: np.maximum(z, 0),
           "onnx.Sqrt": lambda z: np.sqrt(np.maximum(z, 0)), "onnx.Exp": np.exp, "onnx.Log": lambda z: np.log(np.maximum(z, 0)),
           "onnx.Neg": np.negative, "onnx.Abs": np.abs}
    return fns[op.name], [0.0]


def _monotone(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, e: np.ndarray, points: list[float],
              reference: np.ndarray | None = None) -> np.ndarray:
    """sup over u in [x - e, x + e] of |fn(u) - reference| (default fn(x)), for fn monotone between its ``points``."""
    with np.errstate(all="ignore"):
        y = fn(x) if reference is None else reference
        out = np.maximum(np.abs(fn(x - e) - y), np.abs(fn(x + e) - y))
        for p in points:
            for q in (np.nextafter(p, -np.inf), p, np.nextafter(p, np.inf)):
                inside = (x - e <= q) & (q <= x + e)
                if inside.any():
                    out = np.where(inside, np.maximum(out, np.abs(fn(np.full_like(x, q)) - y)), out)
    return np.where(np.isnan(out), np.inf, out)


def output_bounds(image: Image, inputs: Mapping[str, np.ndarray], sources: Sources) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(exact outputs, elementwise bounds on |simulated - model|) per ONNX output name."""
    return _BoundRun(image, sources).run(inputs)


@dataclass
class StepBounds:
    outputs: dict[str, np.ndarray]  # bounds of the ONNX outputs of the teacher-forced run
    loops: list[list[list[np.ndarray]]]  # per loop execution, per step, bounds of the yielded values
    draws: int  # Gaussian draws under the noise term (0 without sigmas)


def tail_sigmas(draws: int, false_alarm: float = 1e-3) -> float:
    """The s with draws * P(|N(0,1)| > s) = false_alarm: the union bound over every Gaussian draw of a run.

    If no draw exceeds s of its standard deviations, every element lies within
    its bound at s (the propagation is worst-case), so an element outside it
    has probability at most ``false_alarm`` without a stuck device.
    """
    lo, hi = 0.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if max(draws, 1) * math.erfc(mid / math.sqrt(2)) > false_alarm else (lo, mid)
    return hi


def step_bounds(image: Image, inputs: Mapping[str, np.ndarray], sources: Sources) -> StepBounds:
    """Bounds of a teacher-forced run (``cimc.stepwise``): every loop step restarts from the reference's carried values.

    The bounds of the ONNX outputs and, per ``cim.loop`` execution (in
    execution order), per step, the bounds of the values its body yields
    (carried values, then scan outputs). The carried bound is reset to zero at
    every step after the first, because the run under test is given the very
    values the reference carries: what remains is the error one step makes.
    """
    run = _BoundRun(image, sources, per_step=True)
    _, bounds = run.run(inputs)
    return StepBounds(bounds, run.steps, run.draws)


def _free_running(image: Image, inputs: Mapping[str, np.ndarray], sources: Sources) -> dict[str, np.ndarray]:
    return output_bounds(image, inputs, sources)[1]


def breakdown(image: Image, inputs: Mapping[str, np.ndarray], sources: Sources,
              bound: Callable[[Image, Mapping[str, np.ndarray], Sources], object] = _free_running) -> list[tuple[str, object]]:
    """The bound with one source at a time (what each effect alone contributes), then with all of them.

    ``bound`` gives one part: the free-running output bounds (default) or ``step_bounds`` (teacher-forced).
    """
    parts = []
    flags = [("DAC", "dac"), ("device levels", "weights"), ("linear ADC", "adc"), ("NL-ADC", "nl_adc"), ("float32", "float32")]
    alone = Sources(dac=False, weights=False, adc=False, nl_adc=False, float32=False)
    for label, flag in flags:
        if getattr(sources, flag):
            parts.append((label, bound(image, inputs, replace(alone, **{flag: True}))))
    if sources.sigmas:
        parts.append((f"device noise at {sources.sigmas:g} sigma", bound(image, inputs, replace(alone, sigmas=sources.sigmas))))
    if sources.faults is not None:
        parts.append(("stuck devices" + (" (measured chip)" if sources.faults.measurement is not None else ""),
                      bound(image, inputs, replace(alone, faults=sources.faults))))
    if sources.gain or sources.ramp_gain:
        parts.append((f"gain |k - 1| = {sources.gain:.3g} (linear ADC), {sources.ramp_gain:.3g} (NL-ADC)",
                      bound(image, inputs, replace(alone, gain=sources.gain, ramp_gain=sources.ramp_gain))))
    return parts



def stuck_summary(simulator: Simulator) -> str:
    """How many stuck devices hit used weight and ramp devices, and the largest weight change they cause.

    What the chip holds, next to what the bound assumes (``faults``: a count
    per column at a confidence, or the measured devices).
    """
    if not simulator.stuck:
        return "no stuck devices (not noisy)"
    d = simulator.hw.device
    weight_on = weight_off = ramp_stuck = 0
    worst = 0.0
    for op in simulator.program.walk():
        if op.name != "cim.tile_mvm":
            continue
        k, rows, pos, neg = tile_devices(op)
        interleaved = np.empty(2 * pos.size, np.int64)
        interleaved[0::2], interleaved[1::2] = pos, neg
        stuck = simulator.stuck[k][rows][:, interleaved]
        weight_on += int((stuck > 0).sum())
        weight_off += int((stuck < 0).sum())
        if stuck.any():
            lv_pos, lv_neg = tile_levels(simulator.image, op)
            levels = np.empty(stuck.shape)
            levels[:, 0::2], levels[:, 1::2] = lv_pos, lv_neg
            moved = np.where(stuck > 0, d.levels - 1 - levels, np.where(stuck < 0, levels, 0))
            worst = max(worst, float(moved.max()) / (d.levels - 1))
    for ramp in simulator.ramps.values():
        ramp_stuck += int((simulator.stuck[ramp["array"]][:, ramp["bit_line"]] != 0).sum())
    return (f"{weight_on + weight_off} stuck devices on used weight devices ({weight_on} at G_max, {weight_off} at G_min), "
            f"the worst moving its weight by {worst:.0%} of its column's largest |w|; {ramp_stuck} on ramp columns "
            f"(absorbed only as far as the calibration devices reach)")
