"""The simulator backend: executes a programming image, at three fidelities.

It runs the image's step program with the image's devices, never the IR
the compiler kept, so what is verified is what would be programmed:

- ``exact``: the target conductances as floats, no quantization, ideal
  activations. Proves that compilation preserved the model's meaning.
- ``ideal``: the programmed level of every device, input DAC quantization,
  linear ADC codes over each column's range, NL-ADC codes against the ramp
  devices. No randomness.
- ``noisy``: ``ideal`` on a chip instance (``backends/chip.py``): seeded
  programming noise (Gaussian, uS, after write-verify), stuck-at-ON/OFF
  devices at positions drawn from the seed alone, power-law conductance drift
  G(t) = G(t0) (t/t0)^-nu, a read-voltage deviation, and read noise (relative,
  per device, fresh at every read and for every batch element, drawn
  output-referred: ``docs/simulator.md``). The column currents and the ramp
  both scale with the read voltage, so the NL-ADC is ratiometric; a linear
  ADC's references are fixed at the nominal voltage, so its codes move with
  Vread (Yang et al. 2025, Fig. 3b).

The program is compiled at the first run into a step plan
(``backends/plan.py``): one product per read group, conversions vectorized
over all columns. Device-model parameters are the hardware description's (see
its sources); the read-noise and drift forms are the usual ones for RRAM in
the analog-AI literature (e.g. aihwkit's and Wan et al., Nature 2022).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cimc.backends.chip import Chip
from cimc.backends.plan import AssembleStep, Hooks, Plan, adc_codes, adc_quantize, dac_quantize, first_tile
from cimc.backends.saturation import SaturationCounts
from cimc.cim_kernels import apply_activation
from cimc.diagnostics import CimcError
from cimc.image import Image, tile_devices, tile_weights
from cimc.interpreter import Arrays, Interpreter, Kernel
from cimc.ir import Operation

__all__ = ["FIDELITIES", "Simulator", "SimulatorOptions", "adc_codes", "adc_quantize", "dac_quantize", "terminal_progress"]

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
        self.noisy = self.options.fidelity == "noisy"
        self.quantized = self.options.fidelity != "exact"
        o = self.options
        self.chip = Chip.program(image, self.noisy, o.seed, o.drift_time_s, o.vread_scale) if self.quantized else None
        # Per array: the conductance of every device (uS); a caller may replace entries before the first run.
        self.devices: dict[int, np.ndarray] = self.chip.devices if self.chip is not None else {}
        # Per array (noisy only): +1 stuck at G_max, -1 stuck at G_min, 0 programmed.
        self.stuck: dict[int, np.ndarray] = self.chip.stuck if self.chip is not None else {}
        self.vread_scale = self.chip.vread_scale if self.chip is not None else (o.vread_scale or 1.0)
        self.read_noise = self.noisy and self.hw.nonideality.read_noise_rel > 0
        self._read_rng = self.chip.read_stream() if self.chip is not None else None
        self.ramps = {r["id"]: r for r in image.manifest["ramps"]}
        self._thresholds: dict[int, np.ndarray] = {}
        self._plan: Plan | None = None
        self.saturation = SaturationCounts() if o.counters and self.quantized else None

    # ---- the chip, as the plan and the error bound read it ---------------------------------------------------

    def tile_conductances(self, op: Operation) -> tuple[np.ndarray, np.ndarray]:
        """(G+, G-) of a tile's devices on this chip (quantized fidelities only)."""
        assert self.chip is not None
        k, rows, pos, neg = tile_devices(op)
        g = self.devices[k][rows]
        return np.ascontiguousarray(g[:, pos]), np.ascontiguousarray(g[:, neg])

    def exact_weights(self, op: Operation) -> np.ndarray:
        """The weights a tile encodes before quantization (what ``exact`` runs)."""
        return tile_weights(self.image, op)

    def realized_thresholds(self, ramp_id: int) -> np.ndarray:
        """The z thresholds of a ramp as this chip's devices realize them (what the comparator sees at nominal Vread)."""
        if ramp_id not in self._thresholds:
            assert self.chip is not None
            self.chip.devices = self.devices
            self._thresholds[ramp_id] = self.chip.ramp_thresholds(self.ramps[ramp_id], recalibrate=self.noisy)
        return self._thresholds[ramp_id]

    def standard_normal(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Fresh read-noise draws of this chip's read stream (every read and run advances it)."""
        assert self._read_rng is not None
        if np.dtype(dtype) == np.float32:
            return box_muller(self._read_rng, shape)
        return self._read_rng.standard_normal(shape)

    # ---- running --------------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """The compiled step plan (built at the first run, from the devices as they are then)."""
        if self._plan is None:
            self._plan = Plan(self.program, self)
        return self._plan

    def run(self, inputs: Mapping[str, np.ndarray], observer: Callable | None = None,
            progress: Callable[[str, int, int], None] | None = None,
            carried_override: Callable | None = None) -> dict[str, np.ndarray]:
        """Run the program on ``inputs`` (keyed by the ONNX input names); outputs keyed by the ONNX output names.

        ``observer(op, operands, results)`` sees every op's values; ``progress(where, step, steps)`` is
        called after every time step of every loop; ``carried_override(loop, step, values)`` returns the
        values a loop step starts from (teacher forcing, see ``cimc.stepwise``). Every run is a new read
        of the arrays (fresh read noise).
        """
        return self.plan().run(inputs, Hooks(observer, progress, carried_override))

    def kernels(self) -> dict[str, Kernel]:
        """Op-by-op kernels of this chip, for an interpreter that walks the program itself (the error bound does).

        A tile's value is its read group's product, computed once per set of operand arrays, as in the plan.
        """
        plan = self.plan()
        reads: dict[int, tuple[list, np.ndarray]] = {}

        def tile_mvm(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
            group = plan.groups[id(op)]
            read = group.read
            assert read is not None
            seen = reads.get(id(read))
            if seen is None or len(seen[0]) != len(args) or not all(a is b for a, b in zip(seen[0], args)):
                env: list = [None] * len(plan.slots)
                for v, arg in zip(op.operands, args):
                    if v is not None:
                        env[plan.slot(v)] = arg
                AssembleStep([], [plan.slot(v) if v is not None else -1 for v in op.operands],
                             int(op.attributes.get("bias_rows", 0)), read.input)(env)  # type: ignore[arg-type]
                read(env)
                seen = (list(args), env[read.bank])
                reads[id(read)] = seen
            a, b = group.columns[id(op)]
            return [seen[1][..., group.offset + a:group.offset + b]]

        def adc(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
            z = args[0]
            assert z is not None
            if not self.quantized:
                return [z]
            tile = first_tile(op.operands[0].op)  # type: ignore[union-attr, arg-type]
            lo, hi = tile.attributes["z_lo"].array, tile.attributes["z_hi"].array  # type: ignore[union-attr]
            return [adc_quantize(z, lo, hi, int(op.attributes["bits"]))]  # type: ignore[arg-type]

        def nl_adc(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
            analog = args[0]
            assert analog is not None
            c0, c1 = op.attributes["cols"]  # type: ignore[misc]
            z = analog[..., c0:c1]
            if not self.quantized:
                return [apply_activation(op, z)]
            ramp_id = int(op.operands[1].op.attributes["image.ramp"])  # type: ignore[union-attr, arg-type]
            code = np.searchsorted(self.realized_thresholds(ramp_id) * self.vread_scale, z.astype(np.float64), side="right")
            return [np.asarray(self.ramps[ramp_id]["output_levels"])[code].astype(z.dtype)]

        return {"cim.tile_mvm": tile_mvm, "cim.adc": adc, "cim.nl_adc": nl_adc}


def box_muller(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws, about 3 times faster than numpy's float32 ziggurat on the read path.

    Box-Muller: for U1, U2 independent uniform, R = sqrt(-2 ln U1) and theta = 2 pi U2
    give R cos(theta) and R sin(theta), two independent N(0, 1). U1 = 1 - u with u a
    float64 uniform in [0, 1), cast to float32 (relative precision, so the smallest
    U1 is 2^-53 and the tail reaches 8.6 sigma, beyond any tail the error bound uses);
    the rest in float32.
    """
    n = math.prod(shape)
    half = (n + 1) // 2
    radius = (1.0 - rng.random(half)).astype(np.float32)
    np.log(radius, out=radius)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle = rng.random(half, dtype=np.float32)
    angle *= np.float32(2 * np.pi)
    out = np.empty(2 * half, np.float32)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.multiply(radius, np.sin(angle), out=out[half:])
    return out[:n].reshape(shape)


def terminal_progress(where: str, step: int, steps: int) -> None:
    """A one-line progress report on a terminal's stderr, redrawn in place at every tenth of a loop."""
    if sys.stderr.isatty() and steps >= 20 and (step == steps or step % max(1, steps // 10) == 0):
        end = "\n" if step == steps else ""
        print(f"\r  {where}: step {step}/{steps}", end=end, file=sys.stderr, flush=True)
