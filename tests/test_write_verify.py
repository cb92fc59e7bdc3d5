"""Write-verify (backends/write_verify.py) and the chip tester (backends/tester.py, ``cimc chip``).

Statistical checks compare counts with their closed-form binomial law; the
acceptance region is 5.33 standard deviations (two-sided 1e-7 under a normal
approximation, with n p >= 1000 here, so a correct model fails with
probability ~1e-7).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from cimc.backends.chip import PROGRAM, Chip, level_conductance, stuck_positions
from cimc.backends.tester import infer_stuck, measure
from cimc.defects import load_measurement
from cimc.backends.write_verify import write_verify
from cimc.cli import main
from cimc.npz import npz_bytes
from test_analog_ops import compile_model, gemm_model, hardware

Z = 5.33


def within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= Z * math.sqrt(n * p * (1 - p))


def test_verified_devices_are_within_tolerance_and_failures_follow_the_closed_form() -> None:
    """Without read noise a round accepts iff |N(0, sigma)| <= tol: p = erf(tol / (sigma sqrt 2)) per round,
    so a device is unverified after N rounds with probability (1 - p)^N and takes k rounds with p (1 - p)^(k-1)."""
    sigma, tol, rounds = 1.0, 0.5, 3
    hw = hardware(nonideality={"program_noise_us": sigma, "read_noise_rel": 0.0, "verify_tolerance_us": tol,
                               "verify_iterations": rounds})
    target = np.full((100, 200), 50.0)
    out = write_verify(hw, target, np.zeros(target.shape, np.int8), seed=7, array=0, programming=0, program_kind=PROGRAM)
    assert np.all(np.abs(out.g_us - target)[out.verified] <= tol)
    assert np.any(np.abs(out.g_us - target)[~out.verified] > tol) and np.all(np.abs(out.g_us - target)[~out.verified] > tol)
    p = math.erf(tol / (sigma * math.sqrt(2)))
    n = target.size
    assert within_binomial(int((~out.verified).sum()), n, (1 - p) ** rounds)
    assert within_binomial(int((out.rounds == 1).sum()), n, p)
    assert within_binomial(int((out.rounds == 2).sum()), n, p * (1 - p))


def test_stuck_devices_hold_their_rail_and_fail_verify_unless_targeted_there() -> None:
    hw = hardware()
    d = hw.device
    target = np.array([[50.0, 50.0, d.g_min_us, 0.0]])
    stuck = np.array([[1, -1, -1, 1]], np.int8)
    out = write_verify(hw, target, stuck, seed=1, array=0, programming=0, program_kind=PROGRAM)
    assert out.g_us[0, :3].tolist() == [d.g_max_us, d.g_min_us, d.g_min_us]
    assert out.g_us[0, 3] == 0.0, "an unformed device conducts"
    assert out.verified.tolist() == [[False, False, True, True]]
    assert out.rounds.tolist() == [[hw.nonideality.verify_iterations] * 2 + [1, 0]]


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):  # noqa: ANN201
    """Two different models compiled for one hardware with high stuck rates (so every position class is hit)."""
    hw = hardware(nonideality={"stuck_on_rate": 0.02, "stuck_off_rate": 0.05})
    rng = np.random.default_rng(3)
    images = []
    for i, (rows, cols) in enumerate(((64, 32), (40, 24))):
        w = rng.normal(size=(rows, cols))
        x = rng.uniform(-1, 1, size=(1, rows)).astype(np.float32)
        images.append(compile_model(gemm_model(w, 1), {"x": x}, hw, tmp_path_factory.mktemp(f"img{i}")).image)
    return hw, images


def test_one_seed_gives_the_same_defects_under_two_images(two_images) -> None:  # noqa: ANN001
    hw, (a, b) = two_images
    for seed in (0, 5):
        chip_a, chip_b = Chip.program(a, True, seed), Chip.program(b, True, seed)
        truth = stuck_positions(hw, seed, 0)[:hw.array.rows, :hw.array.cols]  # the images leave the spare lines unused
        both = (a.device_levels(0) >= 0) & (b.device_levels(0) >= 0)
        assert both.sum() > 1000
        assert np.array_equal(chip_a.stuck[0][both], chip_b.stuck[0][both])
        assert np.array_equal(chip_a.stuck[0][both], truth[both])
        assert (truth[both] != 0).sum() > 50


def test_programming_noise_is_drawn_per_programming(two_images) -> None:  # noqa: ANN001
    _, (a, _) = two_images
    first, again, second = (Chip.program(a, True, 2, programming=p) for p in (0, 0, 1))
    assert np.array_equal(first.devices[0], again.devices[0])
    healthy = (first.stuck[0] == 0) & (a.device_levels(0) >= 0)
    assert np.all(first.devices[0][healthy] != second.devices[0][healthy])
    assert np.array_equal(first.stuck[0], second.stuck[0])


def test_the_tester_finds_every_stuck_device_and_no_healthy_one(two_images) -> None:  # noqa: ANN001
    """The middle-level test pattern makes every stuck device fail verify at its rail, so the inferred mask is the
    chip's true one at every position of the arrays the image uses, spare lines included; the image's unformed
    devices read 0."""
    hw, (a, _) = two_images
    for seed in range(3):
        m = measure(a, "sha", seed)
        assert np.array_equal(m.stuck[0], stuck_positions(hw, seed, 0))
        assert (m.stuck[0] != 0).sum() > 300
        rows, cols = a.device_levels(0).shape
        assert np.all(m.g_us[0][:rows, :cols][a.device_levels(0) < 0] == 0)
        assert np.all(m.g_us[0][rows:] == 0) and np.all(m.g_us[0][:, cols:] == 0)


def test_the_image_readback_alone_sees_the_stuck_devices_that_failed_verify(two_images) -> None:  # noqa: ANN001
    """Inferred from the image's own programming: every inference is right, and every stuck device whose target is
    more than two level steps from its rail (so no read can pass its verify) is found."""
    hw, (a, _) = two_images
    d = hw.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    for seed in range(3):
        chip = Chip.program(a, True, seed)
        target = level_conductance(hw, a.device_levels(0))
        read = chip.devices[0]
        inferred = infer_stuck(hw, target, read, chip.unverified[0])
        truth = chip.stuck[0]
        assert np.array_equal(inferred[inferred != 0], truth[inferred != 0])
        rail = np.where(truth > 0, d.g_max_us, d.g_min_us)
        visible = (truth != 0) & (np.abs(target - rail) > 2 * delta) & (target > 0)
        assert visible.sum() > 20 and np.array_equal(inferred[visible], truth[visible])


def test_cimc_chip_writes_the_documented_measurement(two_images, tmp_path: Path) -> None:  # noqa: ANN001
    _, (a, _) = two_images
    image = tmp_path / "a.cimg"
    a.save(image)
    out1, out2 = tmp_path / "m1.npz", tmp_path / "m2.npz"
    assert main(["chip", str(image), "--seed", "4", "-o", str(out1)]) == 0
    assert main(["chip", str(image), "--seed", "4", "-o", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    with np.load(out1) as data:
        assert sorted(data.files) == ["array0.g_us", "array0.stuck", "arrays", "hardware_sha256", "image_sha256", "seed"]
        assert data["array0.g_us"].dtype == np.float64 and data["array0.stuck"].dtype == np.int8
        assert data["array0.g_us"].shape == (a.hardware.array.physical_rows, a.hardware.array.physical_cols)
    m = load_measurement(out1)
    assert m.seed == 4 and m.hardware_sha256 == a.manifest["provenance"]["hardware_sha256"]

    assert m.image_sha256 == hashlib.sha256(image.read_bytes()).hexdigest()


def test_cimc_chip_refuses_to_overwrite_its_image(two_images, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    _, (a, _) = two_images
    image = tmp_path / "a.cimg"
    a.save(image)
    before = image.read_bytes()
    assert main(["chip", str(image), "-o", str(image)]) == 2
    assert image.read_bytes() == before
    assert "never writes over an input" in capsys.readouterr().err


def test_compile_with_defects_end_to_end_and_its_refusals(two_images, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """cimc chip -> cimc compile --defects -> cimc run --seed S; a file that is not a measurement, and a measurement
    of other hardware, are refused with exit status 2 and one line."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 32))
    model = tmp_path / "m.onnx"
    onnx.save(gemm_model(w, 1), model)
    x = rng.uniform(-1, 1, size=(1, 64)).astype(np.float32)
    inputs = tmp_path / "x.npz"
    inputs.write_bytes(npz_bytes({"x": x}))
    image, measured, aware, out = (tmp_path / n for n in ("m.cimg", "meas.npz", "aware.cimg", "y.npz"))
    assert main(["compile", str(model), "--calib", str(inputs), "-o", str(image)]) == 0
    assert main(["chip", str(image), "--seed", "2", "-o", str(measured)]) == 0
    capsys.readouterr()
    assert main(["compile", str(model), "--calib", str(inputs), "--defects", str(measured), "-o", str(aware)]) == 0
    assert "defects: chip 2" in capsys.readouterr().out
    assert main(["run", str(aware), "--inputs", str(inputs), "--fidelity", "noisy", "--seed", "2", "-o", str(out)]) == 0
    assert main(["compile", str(model), "--calib", str(inputs), "--defects", str(inputs), "-o", str(aware)]) == 2
    assert "is not a chip measurement" in capsys.readouterr().err
    hw = tmp_path / "hw.toml"
    hw.write_text("[device]\nlevels = 32\n")
    assert main(["compile", str(model), "--hw", str(hw), "--calib", str(inputs), "--defects", str(measured),
                 "-o", str(aware)]) == 2
    assert "other hardware" in capsys.readouterr().err
