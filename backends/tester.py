"""The chip tester: program chip S with an image, read every device back, infer the stuck devices.

This is what a wafer tester hands the compiler of a defect-aware mapping
(docs/faults.md): not the simulator's ground truth, but a measurement. Each
device the image programs is read once after write-verify (read noise
included, from its own stream so that measuring a chip does not change a later
run on it), and a device is reported stuck when it did not follow write-verify
(its last verify read was out of tolerance) *and* its read sits at a rail,
within the verify tolerance plus four read-noise deviations of G_max (+1) or
G_min (-1), while its target lies farther than that from the rail. A device that failed verify away from a rail is noise, not a
defect (0), and its conductance is in ``g_us``. A stuck device whose target
was (near) its stuck value is not seen: for this image it is (nearly) harmless.
Devices the image leaves unformed are not tested (``g_us`` 0, ``stuck`` 0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.backends.chip import Chip, level_conductance
from cimc.backends.write_verify import TESTER_READ, program_stream
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.image import Image, load_image
from cimc.npz import load_npz, npz_bytes, write_atomic

RAIL_MARGIN_SIGMAS = 4.0  # a healthy device reads this far from its conductance with probability 6e-5


@dataclass(frozen=True)
class Measurement:
    """One chip as its tester saw it: per array the read conductances and the inferred stuck devices."""

    seed: int
    hardware_sha256: str
    image_sha256: str
    g_us: dict[int, np.ndarray]  # array -> [rows, cols] read conductance (uS); 0 where untested
    stuck: dict[int, np.ndarray]  # array -> [rows, cols] int8: +1 stuck at G_max, -1 at G_min, 0 healthy/untested

    def to_npz(self) -> bytes:
        # Scalars are stored as 1-element arrays (npz_bytes writes C-contiguous arrays, at least 1-d).
        arrays: dict[str, np.ndarray] = {"seed": np.array(self.seed, np.int64),
                                         "hardware_sha256": np.array(self.hardware_sha256),
                                         "image_sha256": np.array(self.image_sha256),
                                         "arrays": np.array(sorted(self.g_us), np.int64)}
        for k in sorted(self.g_us):
            arrays[f"array{k}.g_us"] = self.g_us[k]
            arrays[f"array{k}.stuck"] = self.stuck[k]
        return npz_bytes(arrays)


def infer_stuck(hw: Hardware, target_us: np.ndarray, read_us: np.ndarray, unverified: np.ndarray) -> np.ndarray:
    """+1/-1 where a device failed write-verify and reads at G_max/G_min (within tolerance + 4 read sigmas)
    while its target was not there: a device that failed verify near its target is noise, not a defect."""
    d, n = hw.device, hw.nonideality
    stuck = np.zeros(read_us.shape, np.int8)
    for sign, rail in ((1, d.g_max_us), (-1, d.g_min_us)):
        margin = n.verify_tolerance_us + RAIL_MARGIN_SIGMAS * n.read_noise_rel * rail
        stuck[unverified & (np.abs(read_us - rail) <= margin) & (np.abs(target_us - rail) > margin)] = sign
    return stuck


def measure(image: Image, image_sha256: str, seed: int, programming: int = 0) -> Measurement:
    """Program chip ``seed`` with ``image`` (programming ``programming``) and read every device back once."""
    hw = image.hardware
    chip = Chip.program(image, noisy=True, seed=seed, programming=programming)
    g_us: dict[int, np.ndarray] = {}
    stuck: dict[int, np.ndarray] = {}
    for k, g in chip.devices.items():
        noise = program_stream(seed, TESTER_READ, k, programming).standard_normal(g.shape)
        read = g * (1.0 + hw.nonideality.read_noise_rel * noise)
        g_us[k] = read
        stuck[k] = infer_stuck(hw, level_conductance(hw, image.device_levels(k)), read, chip.unverified[k])
    return Measurement(seed, image.manifest["provenance"]["hardware_sha256"], image_sha256, g_us, stuck)


def measure_file(image_path: str | Path, seed: int, out: str | Path) -> Measurement:
    """``cimc chip``: measure chip ``seed`` programmed with the image at ``image_path``; write ``out`` atomically."""
    image_path, out = Path(image_path), Path(out)
    if out.exists() and image_path.exists() and out.samefile(image_path):
        raise CimcError(f"{out}: refusing to write the measurement over its input image")
    image = load_image(image_path)
    sha = hashlib.sha256(image_path.read_bytes()).hexdigest()
    measurement = measure(image, sha, seed)
    write_atomic(out, measurement.to_npz())
    return measurement


def load_measurement(path: str | Path) -> Measurement:
    """Read a ``cimc chip`` measurement back, refusing a file that is not one (one clear line)."""
    try:
        data = load_npz(path)
    except (OSError, ValueError) as e:
        raise CimcError(f"cannot read chip measurement {path}: {e}") from None
    missing = [key for key in ("seed", "hardware_sha256", "image_sha256", "arrays") if key not in data]
    if missing:
        raise CimcError(f"{path} is not a chip measurement (`cimc chip`): it lacks {', '.join(missing)}")
    g_us, stuck = {}, {}
    for k in data["arrays"].tolist():
        g, s = data.get(f"array{k}.g_us"), data.get(f"array{k}.stuck")
        if g is None or s is None or g.shape != s.shape or g.ndim != 2:
            raise CimcError(f"{path}: array {k} needs g_us and stuck of one [rows, cols] shape")
        if not np.isin(s, (-1, 0, 1)).all():
            raise CimcError(f"{path}: array {k}'s stuck mask holds values other than -1, 0, +1")
        g_us[int(k)], stuck[int(k)] = g.astype(np.float64), s.astype(np.int8)
    seed, hw_sha, image_sha = (data[key].reshape(-1)[0].item() for key in ("seed", "hardware_sha256", "image_sha256"))
    return Measurement(int(seed), str(hw_sha), str(image_sha), g_us, stuck)
