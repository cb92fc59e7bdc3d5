"""The simulator backend: executes a programming image, at three fidelities.

It runs the image's step program with the image's devices, never the IR
the compiler kept, so what is verified is what would be programmed:

- ``exact``: the target conductances as floats, no quantization, ideal
  activations. Proves that compilation preserved the model's meaning.
- ``ideal``: the programmed level of every device, input DAC quantization,
  linear ADC codes over each column's range, NL-ADC codes against the ramp
  devices. No randomness.
- ``noisy``: ``ideal`` plus seeded device effects from the hardware
  description: programming noise (Gaussian, uS, after write-verify), read
  noise (relative, fresh at every read), stuck-at-ON/OFF devices, power-law
  conductance drift G(t) = G(t0) (t/t0)^-nu, and a read-voltage deviation.
  The column currents and the ramp both scale with the read voltage, so the
  NL-ADC is ratiometric; a linear ADC's references are fixed at the nominal
  voltage, so its codes move with Vread (Yang et al. 2025, Fig. 3b).

Device-model parameters are the hardware description's (see its sources);
the read-noise and drift forms are the usual ones for RRAM in the analog-AI
literature (e.g. aihwkit's and Wan et al., Nature 2022).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cimc.backends.saturation import SaturationCounts
from cimc.cim_kernels import apply_activation, driven_input, mvm_input
from cimc.diagnostics import CimcError
from cimc.image import Image, tile_weights
from cimc.interpreter import Arrays, Interpreter, Kernel
from cimc.ir import Operation

FIDELITIES = ("exact", "ideal", "noisy")


@dataclass(frozen=True)
class SimulatorOptions:
    fidelity: str = "exact"
    seed: int = 0
    drift_time_s: float | None = None  # seconds after programming; None: read at t0 (no drift)
    vread_scale: float | None = None  # actual/nominal read voltage; None: 1, or drawn from vread_rel_std when noisy
    counters: bool = False  # count saturating conversions per layer into Simulator.saturation (see backends/saturation.py)


class Simulator:
    """A programmed chip: devices are realized once (per seed), then any number of runs."""

    def __init__(self, image: Image, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        if self.options.fidelity not in FIDELITIES:
            raise CimcError(f"fidelity must be one of {', '.join(FIDELITIES)}, got '{self.options.fidelity}'")
        self.image = image
        self.hw = image.hardware
        self.program = image.program()
        self.rng = np.random.default_rng(self.options.seed)
        self.noisy = self.options.fidelity == "noisy"
        self.quantized = self.options.fidelity != "exact"
        self._stuck: list[np.ndarray] = []
        self.devices = {k: self._realize(image.device_levels(k)) for k in sorted(image.arrays)} if self.quantized else {}
        # Per array (noisy only): +1 stuck at G_max, -1 stuck at G_min, 0 programmed.
        self.stuck: dict[int, np.ndarray] = dict(zip(sorted(image.arrays), self._stuck))
        vread = self.options.vread_scale
        if vread is None:
            vread = 1.0 + (self.rng.normal() * self.hw.nonideality.vread_rel_std if self.noisy else 0.0)
        self.vread_scale = float(vread)
        self.ramps = {r["id"]: r for r in image.manifest["ramps"]}
        self._weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._thresholds: dict[int, np.ndarray] = {}
        self._groups: dict[tuple, _ReadGroup] | None = None
        self.saturation = SaturationCounts() if self.options.counters and self.quantized else None

    def _realize(self, level: np.ndarray) -> np.ndarray:
        """The conductance every device holds after programming (and drift)."""
        d, n = self.hw.device, self.hw.nonideality
        delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        used = level >= 0
        g = np.where(used, d.g_min_us + level * delta, 0.0)
        if not self.noisy:
            return g
        g = np.where(used, np.maximum(g + self.rng.normal(0.0, n.program_noise_us, g.shape), 0.0), 0.0)
        u = self.rng.random(g.shape)
        on, off = used & (u < n.stuck_on_rate), used & (u >= n.stuck_on_rate) & (u < n.stuck_on_rate + n.stuck_off_rate)
        g = np.where(on, d.g_max_us, np.where(off, d.g_min_us, g))
        self._stuck.append(on.astype(np.int8) - off.astype(np.int8))
        if self.options.drift_time_s is not None:
            g = g * (max(self.options.drift_time_s, n.drift_t0_s) / n.drift_t0_s) ** (-n.drift_nu)
        return g

    def _tile(self, op: Operation) -> tuple[np.ndarray, np.ndarray]:
        """(G+, G-) of a tile's devices on this chip (quantized fidelities only)."""
        key = int(op.attributes["image.tile"])  # type: ignore[arg-type]
        if key not in self._weights:
            k, r, c = (int(op.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
            r0, r1 = op.attributes["rows"]  # type: ignore[misc]
            c0, c1 = op.attributes["cols"]  # type: ignore[misc]
            g = self.devices[k][r:r + r1 - r0, c:c + 2 * (c1 - c0)]
            self._weights[key] = (np.ascontiguousarray(g[:, 0::2]), np.ascontiguousarray(g[:, 1::2]))
        return self._weights[key]

    def _dac(self, driven: np.ndarray, scale: float) -> np.ndarray:
        return dac_quantize(driven, scale, self.hw.converters.dac_bits)

    def _read_group(self, op: Operation) -> _ReadGroup:
        """Tiles driven by the same inputs over the same rows are read together: one product per step."""
        if self._groups is None:
            self._groups = {}
            for tile in self.program.walk():
                if tile.name == "cim.tile_mvm":
                    key = (tuple(id(v) for v in tile.operands), tuple(tile.attributes["rows"]))  # type: ignore[arg-type]
                    group = self._groups.setdefault(key, _ReadGroup())
                    if self.quantized:
                        group.add(tile, *self._tile(tile), tile.attributes["g_scale"].array)  # type: ignore[union-attr]
                    else:  # exact: the weights as compiled, (w - 0) / 1 unchanged
                        w = tile_weights(self.image, tile)
                        group.add(tile, w, np.zeros_like(w), np.ones(w.shape[1]))
        key = (tuple(id(v) for v in op.operands), tuple(op.attributes["rows"]))  # type: ignore[arg-type]
        return self._groups[key]

    def tile_mvm(self, op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        group = self._read_group(op)
        product = group.result_for(args)
        if product is None:
            r0, r1 = op.attributes["rows"]  # type: ignore[misc]
            x = driven_input(op, mvm_input(op, args)[..., r0:r1])
            if self.quantized:
                if self.saturation is not None:
                    self.saturation.dac(op, x, float(op.attributes.get("input_scale", 1.0)))  # type: ignore[arg-type]
                x = self._dac(x, float(op.attributes.get("input_scale", 1.0)))  # type: ignore[arg-type]
            if self.noisy and self.hw.nonideality.read_noise_rel > 0:
                sigma = self.hw.nonideality.read_noise_rel
                g_pos = group.g_pos * (1.0 + sigma * self.rng.standard_normal(group.g_pos.shape))
                g_neg = group.g_neg * (1.0 + sigma * self.rng.standard_normal(group.g_neg.shape))
                weights = ((g_pos - g_neg) / group.scale).astype(x.dtype)
            else:
                weights = group.weights(x.dtype)
            product = x @ weights
            if self.quantized:
                product *= x.dtype.type(self.vread_scale)
            group.remember(args, product)
        c0, c1 = group.columns[id(op)]
        return [product[..., c0:c1]]

    def adc(self, op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        z = args[0]
        assert z is not None
        if not self.quantized:
            return [z]
        tile = _first_tile(op.operands[0].op)  # type: ignore[union-attr]
        lo, hi = tile.attributes["z_lo"].array, tile.attributes["z_hi"].array  # type: ignore[union-attr]
        bits = int(op.attributes["bits"])  # type: ignore[arg-type]
        if self.saturation is not None:
            self.saturation.adc(tile, z, adc_codes(z, lo, hi, bits), (1 << bits) - 1, lo, hi)
        return [adc_quantize(z, lo, hi, bits)]

    def nl_adc(self, op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        analog = args[0]
        assert analog is not None
        c0, c1 = op.attributes["cols"]  # type: ignore[misc]
        z = analog[..., c0:c1]
        if not self.quantized:
            return [apply_activation(op, z)]
        ramp_op = op.operands[1].op  # type: ignore[union-attr]
        ramp_id = int(ramp_op.attributes["image.ramp"])  # type: ignore[arg-type]
        thresholds = self._ramp_thresholds(ramp_id)
        # The ramp is read at the same voltage as the columns: both sides scale, the code does not move.
        code = np.searchsorted(thresholds * self.vread_scale, z.astype(np.float64), side="right")
        levels = np.asarray(self.ramps[ramp_id]["output_levels"])
        if self.saturation is not None:
            self._count_nl_adc(op, z, ramp_id, levels)
        return [levels[code].astype(z.dtype)]

    def realized_thresholds(self, ramp_id: int) -> np.ndarray:
        """The z thresholds of a ramp as this chip's devices realize them (what the comparator sees at nominal Vread)."""
        return self._ramp_thresholds(ramp_id)

    def _count_nl_adc(self, op: Operation, z: np.ndarray, ramp_id: int, levels: np.ndarray) -> None:
        assert self.saturation is not None
        ramp = self.ramps[ramp_id]
        tile = _first_tile(op.operands[0].op)  # type: ignore[union-attr]
        self.saturation.nl_adc(tile, op, z, float(ramp["z_lo"]), float(ramp["z_hi"]), levels, self.vread_scale)

    def _ramp_thresholds(self, ramp_id: int) -> np.ndarray:
        """Thresholds in z the programmed ramp devices realize: (offset + cumulative steps) / (gain * g_per_z).

        The comparator sees the column current scaled by the ramp gain a (a fixed
        mirror ratio) against the ramp current, both at the same read voltage:
        it flips where a * Vread * g_per_z * z = Vread * level, so the threshold
        in z is level / (a * g_per_z) whatever Vread is.

        When noisy, the calibration devices are then re-tuned, as after programming
        on the chip: they absorb the ramp's median level error (programming
        error, stuck devices), within what they can reach (0 to n G_max).
        """
        if ramp_id not in self._thresholds:
            r = self.ramps[ramp_id]
            column = self.devices[r["array"]][:, r["bit_line"]]
            cal0, cal1 = r["calibration_rows"]
            offset = r["offset_sign"] * column[cal0:cal1].sum()
            bounds = np.cumsum([0] + r["step_devices"])
            steps = np.array([column[bounds[i]:bounds[i + 1]].sum() for i in range(len(r["step_devices"]))])
            levels = offset + np.cumsum(steps)
            ramp_g_per_z = r.get("gain", 1.0) * r["g_per_z"]
            if self.noisy:
                targets = ramp_g_per_z * np.asarray(r["thresholds"])
                wanted = r["offset_sign"] * (offset + np.median(targets - levels))
                levels = levels - offset + r["offset_sign"] * self._calibration_sum(wanted, cal1 - cal0)
            self._thresholds[ramp_id] = levels / ramp_g_per_z
        return self._thresholds[ramp_id]

    def _calibration_sum(self, wanted: float, devices: int) -> float:
        """The achievable total of ``devices`` calibration devices (each off, or G_min + l dG) nearest to ``wanted``."""
        d = self.hw.device
        delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        best = 0.0
        for n in range(1, devices + 1):
            steps = np.clip(np.rint((wanted - n * d.g_min_us) / delta), 0, n * (d.levels - 1))
            total = n * d.g_min_us + steps * delta
            if abs(total - wanted) < abs(best - wanted):
                best = float(total)
        return best

    def kernels(self) -> dict[str, Kernel]:
        return {"cim.tile_mvm": self.tile_mvm, "cim.adc": self.adc, "cim.nl_adc": self.nl_adc}

    def run(self, inputs: Mapping[str, np.ndarray], observer=None, progress=None,  # noqa: ANN001
            carried_override=None) -> dict[str, np.ndarray]:  # noqa: ANN001
        """Run the program on ``inputs`` (keyed by the ONNX input names); outputs keyed by the ONNX output names.

        ``progress(where, step, steps)`` is called after every time step of every loop;
        ``carried_override`` is the interpreter's teacher-forcing hook (see ``cimc.stepwise``).
        """
        # Every run is a new read of the arrays (fresh read noise), even of the very same input arrays.
        for group in (self._groups or {}).values():
            group.forget()
        # The program was verified when the image was loaded; the inputs are still checked against its types.
        return Interpreter(self.program, observer, self.kernels(), check_types=False, progress=progress,
                           carried_override=carried_override).run(inputs)


def dac_quantize(driven: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """The DAC's output for the driven inputs x_i / r_i: each row's x_i over its own full scale s_ref r_i.

    Dividing by r_i beforehand puts every row on the reference full scale
    s_ref, so one quantizer of ``bits`` (sign + magnitude, 2^(bits-1) - 1
    steps each way) over [-s_ref, s_ref] serves every segment.
    """
    levels = (1 << (bits - 1)) - 1
    return (np.rint(np.clip(driven / scale, -1.0, 1.0) * levels) / levels * scale).astype(driven.dtype)


def adc_codes(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The codes 0..2^bits-1 of a linear ADC over each column's [lo, hi] (a degenerate range reads as width 1)."""
    steps = (1 << bits) - 1
    return np.clip(np.rint((z - lo) / np.where(hi > lo, hi - lo, 1.0) * steps), 0, steps)


def adc_quantize(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """A linear ADC of ``bits`` over each column's [lo, hi]: the nearest of 2^bits levels, clipped to the range."""
    steps = (1 << bits) - 1
    span = np.where(hi > lo, hi - lo, 1.0)
    return (lo + adc_codes(z, lo, hi, bits) * span / steps).astype(z.dtype)


def terminal_progress(where: str, step: int, steps: int) -> None:
    """A one-line progress report on a terminal's stderr, redrawn in place at every tenth of a loop."""
    if sys.stderr.isatty() and steps >= 20 and (step == steps or step % max(1, steps // 10) == 0):
        end = "\n" if step == steps else ""
        print(f"\r  {where}: step {step}/{steps}", end=end, file=sys.stderr, flush=True)


class _ReadGroup:
    """Weights of the tiles one read serves, side by side, and the product of the current step."""

    def __init__(self) -> None:
        self.columns: dict[int, tuple[int, int]] = {}
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self._scale: list[np.ndarray] = []
        self._weights: dict[np.dtype, np.ndarray] = {}
        self._args: list[np.ndarray | None] = []
        self._product: np.ndarray | None = None

    def add(self, tile: Operation, g_pos: np.ndarray, g_neg: np.ndarray, scale: np.ndarray) -> None:
        start = sum(p.shape[1] for p in self._pos)
        self.columns[id(tile)] = (start, start + g_pos.shape[1])
        self._pos.append(g_pos)
        self._neg.append(g_neg)
        self._scale.append(scale)

    @property
    def g_pos(self) -> np.ndarray:
        return np.concatenate(self._pos, axis=1)

    @property
    def g_neg(self) -> np.ndarray:
        return np.concatenate(self._neg, axis=1)

    @property
    def scale(self) -> np.ndarray:
        return np.concatenate(self._scale)

    def weights(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self._weights:
            self._weights[dtype] = ((self.g_pos - self.g_neg) / self.scale).astype(dtype)
        return self._weights[dtype]

    def result_for(self, args: Arrays) -> np.ndarray | None:
        """This step's product if it was computed from these very input arrays."""
        if self._product is not None and len(args) == len(self._args) and all(a is b for a, b in zip(args, self._args)):
            return self._product
        return None

    def remember(self, args: Arrays, product: np.ndarray) -> None:
        self._args, self._product = list(args), product

    def forget(self) -> None:
        self._args, self._product = [], None


def _first_tile(op: Operation) -> Operation:
    return op if op.name == "cim.tile_mvm" else op.operands[0].op  # type: ignore[union-attr, return-value]
