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
from pathlib import Path

import numpy as np

from cimc.backends.chip import Chip, level_conductance
from cimc.backends.write_verify import TESTER_READ, program_stream
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.image import Image, load_image
from cimc.defects import ChipMeasurement
from cimc.npz import write_atomic

RAIL_MARGIN_SIGMAS = 4.0  # a healthy device reads this far from its conductance with probability 6e-5


def infer_stuck(hw: Hardware, target_us: np.ndarray, read_us: np.ndarray, unverified: np.ndarray) -> np.ndarray:
    """+1/-1 where a device failed write-verify and reads at G_max/G_min (within tolerance + 4 read sigmas)
    while its target was not there: a device that failed verify near its target is noise, not a defect."""
    d, n = hw.device, hw.nonideality
    stuck = np.zeros(read_us.shape, np.int8)
    for sign, rail in ((1, d.g_max_us), (-1, d.g_min_us)):
        margin = n.verify_tolerance_us + RAIL_MARGIN_SIGMAS * n.read_noise_rel * rail
        stuck[unverified & (np.abs(read_us - rail) <= margin) & (np.abs(target_us - rail) > margin)] = sign
    return stuck


def measure(image: Image, image_sha256: str, seed: int, programming: int = 0) -> ChipMeasurement:
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
    return ChipMeasurement(seed, image.manifest["provenance"]["hardware_sha256"], image_sha256, g_us, stuck)


def measure_file(image_path: str | Path, seed: int, out: str | Path) -> ChipMeasurement:
    """``cimc chip``: measure chip ``seed`` programmed with the image at ``image_path``; write ``out`` atomically."""
    image_path, out = Path(image_path), Path(out)
    if out.exists() and image_path.exists() and out.samefile(image_path):
        raise CimcError(f"{out}: refusing to write the measurement over its input image")
    image = load_image(image_path)
    sha = hashlib.sha256(image_path.read_bytes()).hexdigest()
    measurement = measure(image, sha, seed)
    write_atomic(out, measurement.to_npz())
    return measurement
