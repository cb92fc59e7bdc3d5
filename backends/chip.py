"""One chip instance: the conductance every device holds after an image is programmed onto it.

A seed names a physical chip, not a run. Its defects belong to device
*positions*: whether the device at (array k, word line r, bit line c) is stuck
on or off is drawn from the seed and the position alone, before any image is
known, so one seed with two different images has its stuck devices in the
same places (the fault-tolerance work compares images on the same faulty
chip). Programming noise is drawn per programming (per device position, again
from the seed and the programming index), drift is applied once, and the read-voltage deviation is drawn
once per chip. Read noise is not a property of the chip; it is drawn per read
(see ``backends/plan.py``) from the chip's read stream.

Random streams, each a ``numpy.random.Generator`` seeded by ``[seed, stream,
array]``, so that one effect's draws never shift another's:

- ``STUCK``: one uniform per device position of array k; u < stuck_on_rate is
  stuck at G_max, the next stuck_off_rate at G_min (only devices the image uses
  are affected: an unformed device is never driven into a read column);
- ``PROGRAM``: per programming, ``verify_iterations`` standard normals per device position of
  array k (``backends/write_verify.py``, which also owns the verify-read stream);
- ``VREAD``: one standard normal per chip, for the read-voltage deviation;
- ``READ``: the read-noise stream, advanced by every read of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cimc.hardware import Hardware
from cimc.backends.write_verify import write_verify
from cimc.image import Image

STUCK, PROGRAM, VREAD, READ = 1, 2, 3, 4


def stream(seed: int, kind: int, array: int = 0) -> np.random.Generator:
    """The generator of one random effect of chip ``seed`` (and of one array where the effect is per device)."""
    return np.random.default_rng([seed, kind, array])


def stuck_positions(hw: Hardware, seed: int, array: int) -> np.ndarray:
    """Per device position of one array of chip ``seed``: +1 stuck at G_max, -1 stuck at G_min, 0 healthy.

    A function of (seed, array, position) and the rates only: the image plays no part.
    The array is the physical one, spare lines included. Its rows x cols draws come
    first, from the array's stream, exactly as on hardware without spares; the
    spare lines' devices come from a stream of their own ([seed, STUCK, array, 1]),
    so declaring spares moves no fault of the main lines.
    """
    n, a = hw.nonideality, hw.array
    u = stream(seed, STUCK, array).random((a.rows, a.cols))
    if a.physical_rows > a.rows or a.physical_cols > a.cols:
        spare = np.random.default_rng([seed, STUCK, array, 1]).random((a.physical_rows, a.physical_cols))
        spare[:a.rows, :a.cols] = u
        u = spare
    on = u < n.stuck_on_rate
    off = ~on & (u < n.stuck_on_rate + n.stuck_off_rate)
    return on.astype(np.int8) - off.astype(np.int8)


def level_conductance(hw: Hardware, level: np.ndarray) -> np.ndarray:
    """G_min + level * dG for a programmed device, 0 uS for an unformed one (level -1).

    A lookup in a table of every level's conductance (the unformed 0 uS last, so that level -1 indexes it):
    one gather instead of four passes over every device of the image, with each entry the same float64
    expression, so the same bits."""
    d = hw.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    table = np.append(d.g_min_us + np.arange(d.levels) * delta, 0.0)
    return table[level]


@dataclass
class Chip:
    """The realized devices of one image on one chip (``noisy``) or on an ideal one (``ideal``)."""

    hw: Hardware
    devices: dict[int, np.ndarray]  # array index -> conductance (uS) of every device
    stuck: dict[int, np.ndarray] = field(default_factory=dict)  # noisy only: the stuck devices the image uses
    vread_scale: float = 1.0
    seed: int = 0
    # noisy only: the used devices whose last write-verify read was out of tolerance (what a programmer knows)
    unverified: dict[int, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def program(image: Image, noisy: bool, seed: int = 0, drift_time_s: float | None = None,
                vread_scale: float | None = None, programming: int = 0) -> Chip:
        """Program ``image`` onto chip ``seed``: levels, then (noisy) write-verify with the chip's stuck devices
        (``backends/write_verify.py``; ``programming`` numbers the programming of this chip), then drift."""
        hw = image.hardware
        devices: dict[int, np.ndarray] = {}
        stuck: dict[int, np.ndarray] = {}
        unverified: dict[int, np.ndarray] = {}
        n = hw.nonideality
        for k in sorted(image.arrays):
            level = image.device_levels(k)
            g = level_conductance(hw, level)
            if noisy:
                used = level >= 0
                defect = stuck_positions(hw, seed, k)[:level.shape[0], :level.shape[1]] * used
                programmed = write_verify(hw, g, defect, seed, k, programming, PROGRAM)
                g = programmed.g_us
                stuck[k] = defect.astype(np.int8)
                unverified[k] = ~programmed.verified
                if drift_time_s is not None:
                    g = g * (max(drift_time_s, n.drift_t0_s) / n.drift_t0_s) ** (-n.drift_nu)
            devices[k] = g
        if vread_scale is None:
            vread_scale = 1.0 + (float(stream(seed, VREAD).standard_normal()) * n.vread_rel_std if noisy else 0.0)
        return Chip(hw, devices, stuck, float(vread_scale), seed, unverified)

    def read_stream(self) -> np.random.Generator:
        """A fresh read-noise generator of this chip: a simulator draws one at construction."""
        return stream(self.seed, READ)

    def ramp_thresholds(self, ramp: dict, recalibrate: bool) -> np.ndarray:
        """Thresholds in z the programmed ramp devices realize: (offset + cumulative steps) / (gain * g_per_z).

        The comparator sees the column current scaled by the ramp gain a (a fixed
        mirror ratio) against the ramp current, both at the same read voltage:
        it flips where a * Vread * g_per_z * z = Vread * level, so the threshold
        in z is level / (a * g_per_z) whatever Vread is.

        ``recalibrate`` (noisy chips): the calibration devices are re-tuned, as
        after programming on the chip: they absorb the ramp's median level error
        (programming error, stuck devices), within what they can reach (0 to n G_max).
        """
        column = self.devices[ramp["array"]][:, ramp["bit_line"]]
        cal0, cal1 = ramp["calibration_rows"]
        offset = ramp["offset_sign"] * column[cal0:cal1].sum()
        bounds = np.cumsum([0] + ramp["step_devices"])
        steps = np.array([column[bounds[i]:bounds[i + 1]].sum() for i in range(len(ramp["step_devices"]))])
        levels = offset + np.cumsum(steps)
        ramp_g_per_z = ramp.get("gain", 1.0) * ramp["g_per_z"]
        if recalibrate:
            targets = ramp_g_per_z * np.asarray(ramp["thresholds"])
            wanted = ramp["offset_sign"] * (offset + np.median(targets - levels))
            levels = levels - offset + ramp["offset_sign"] * self._calibration_sum(wanted, cal1 - cal0)
        return levels / ramp_g_per_z

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
