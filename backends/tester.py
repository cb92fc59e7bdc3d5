"""The chip tester: test chip S, program it with an image, read every device back, infer the stuck devices.

This is what a tester hands the compiler of a defect-aware mapping
(docs/faults.md): not the simulator's ground truth, but a measurement. First a
march test programs every device of the arrays the image uses to the middle
level (a programming of its own); then the image is programmed (programming 0,
as ``cimc run --seed S`` does) and each device is read once (read noise
included, from its own stream so that measuring a chip does not change a later
run on it). A device is reported stuck when, in either programming, it did not
follow write-verify (its last verify read was out of tolerance) *and* its read
sits at a rail, within the verify tolerance plus four read-noise deviations of
G_max (+1) or G_min (-1), while its target lies farther than that from the
rail. A device that failed verify away from a rail is noise, not a defect (0),
and its conductance is in ``g_us``; devices the image leaves unformed read 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cimc.backends.chip import PROGRAM, Chip, level_conductance, stuck_positions
from cimc.backends.write_verify import TESTER_READ, position_normals, write_verify
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


TEST_PATTERN_PROGRAMMING = 1  # the march test is a programming of its own (the image is programming 0)


def test_pattern_stuck(image: Image, seed: int) -> dict[int, np.ndarray]:
    """The stuck devices of every array the image uses, found by programming every device to the middle level.

    A tester checks every device before mapping onto it: at the middle level a
    stuck-on device reads at G_max and a stuck-off one at G_min, both far from
    the target, so both fail verify and are seen; devices the image leaves
    unformed are tested too (a defect-aware mapping may move weights onto them).
    """
    hw = image.hardware
    d = hw.device
    middle = d.g_min_us + (d.levels // 2) * (d.g_max_us - d.g_min_us) / (d.levels - 1)
    found: dict[int, np.ndarray] = {}
    shape = (hw.array.physical_rows, hw.array.physical_cols)  # spare lines included, used or not
    for k in sorted(image.arrays):
        target = np.full(shape, middle)
        truth = stuck_positions(hw, seed, k)
        programmed = write_verify(hw, target, truth, seed, k, TEST_PATTERN_PROGRAMMING, PROGRAM)
        noise = position_normals(hw, seed, TESTER_READ, k, TEST_PATTERN_PROGRAMMING, shape)
        found[k] = infer_stuck(hw, target, programmed.g_us * (1.0 + hw.nonideality.read_noise_rel * noise),
                               ~programmed.verified)
    return found


def measure(image: Image, image_sha256: str, seed: int, programming: int = 0) -> ChipMeasurement:
    """Test chip ``seed`` (the middle-level pattern), program it with ``image`` (programming ``programming``) and
    read every device back once: the stuck devices either programming revealed, and the image's conductances."""
    hw = image.hardware
    chip = Chip.program(image, noisy=True, seed=seed, programming=programming)
    tested = test_pattern_stuck(image, seed)
    g_us: dict[int, np.ndarray] = {}
    stuck: dict[int, np.ndarray] = {}
    shape = (hw.array.physical_rows, hw.array.physical_cols)
    for k, programmed in chip.devices.items():
        # An image that leaves the spare lines unused stores rows x cols: the rest reads as unformed (0 uS).
        g, target, unverified = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
        rows, cols = programmed.shape
        g[:rows, :cols] = programmed
        target[:rows, :cols] = level_conductance(hw, image.device_levels(k))
        unverified[:rows, :cols] = chip.unverified[k]
        read = g * (1.0 + hw.nonideality.read_noise_rel * position_normals(hw, seed, TESTER_READ, k, programming, shape))
        g_us[k] = read
        seen = infer_stuck(hw, target, read, unverified)
        stuck[k] = np.where(seen != 0, seen, tested[k]).astype(np.int8)
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
