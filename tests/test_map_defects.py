"""map-defects (passes/map_defects.py): a measured chip's stuck devices mapped around.

The chips here have no programming or read noise, so the tester's measurement
is exact and every difference between a plain and a defect-aware image on the
same chip is the mapping's doing; conductances compare exactly (up to float
rounding of sums of a few level steps, 1e-9 uS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import cimc
from cimc.backends.chip import Chip, level_conductance, stuck_positions
from cimc.backends.tester import measure
from cimc.npz import npz_bytes
from cimc.passes.map_defects import compensate_pair
from cimc.ramp import Activation, Transfer
from test_analog_ops import INPUTS, compile_model, gemm_model, hardware, rnn_step_model

EXACT_CHIP = {"program_noise_us": 0.0, "read_noise_rel": 0.0, "vread_rel_std": 0.0,
              "stuck_on_rate": 0.03, "stuck_off_rate": 0.03}


def test_compensate_pair_retargets_the_partner_and_keeps_the_target_difference() -> None:
    g_min, g_max = 2.0, 100.0
    g_pos = np.array([[60.0, 2.0, 60.0, 2.0, 30.0]])
    g_neg = np.array([[2.0, 50.0, 2.0, 50.0, 2.0]])
    stuck_pos = np.array([[1, 0, -1, 1, 1]], np.int8)
    stuck_neg = np.array([[0, 1, 0, 0, -1]], np.int8)
    new_pos, new_neg = compensate_pair(g_pos, g_neg, stuck_pos, stuck_neg, g_min, g_max)
    # The targets' difference is the weight's everywhere (the reference weights, hence exact, do not change).
    assert np.array_equal(new_pos - new_neg, g_pos - g_neg)
    assert np.all((new_pos >= g_min) & (new_pos <= g_max) & (new_neg >= g_min) & (new_neg <= g_max))
    # The partners: G+ stuck on, w > 0: G- = 100 - 58; G- stuck on, w < 0: G+ = 100 - 48.
    assert new_neg[0, 0] == 42.0 and new_pos[0, 1] == 52.0
    # G+ stuck off with w > 0: no partner value reaches +58; G- stays at G_min, the nearest.
    assert new_neg[0, 2] == 2.0
    # G+ stuck on with w < 0: the nearest is G- = G_max (weight 0 instead of -48, not +50).
    assert new_neg[0, 3] == 100.0
    # Both stuck: nothing to retarget.
    assert (new_pos[0, 4], new_neg[0, 4]) == (30.0, 2.0)


@pytest.fixture(scope="module")
def gemm_chip(tmp_path_factory):  # noqa: ANN201
    hw = hardware(nonideality=EXACT_CHIP)
    rng = np.random.default_rng(11)
    w = rng.normal(size=(64, 31))
    x = rng.uniform(-1, 1, size=(1, 64)).astype(np.float32)
    model = gemm_model(w, 1)
    plain = compile_model(model, {"x": x}, hw, tmp_path_factory.mktemp("plain"))
    return hw, model, x, plain


def _weight_region(image) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The word line of each row and the G+ bit line of each weight column of the one weight region (its row_lines
    and column_pairs honoured)."""
    region = [r for r in image.manifest["arrays"][0]["regions"] if r["kind"] == "weights"][0]
    (r0, r1), (c0, c1) = region["word_lines"], region["bit_lines"]
    pairs = np.asarray(region.get("column_pairs", range((c1 - c0) // 2)))
    return np.asarray(region.get("row_lines", range(r0, r1))), c0 + 2 * pairs


def _pair_difference(image, devices: np.ndarray) -> np.ndarray:  # noqa: ANN001
    rows, pos = _weight_region(image)
    return devices[rows][:, pos] - devices[rows][:, pos + 1]


def test_a_stuck_device_compensated_by_its_partner_gives_the_exact_weight(gemm_chip, tmp_path: Path) -> None:
    """On chip S, every pair with one stuck device the tester saw, whose partner can reach the pair's difference,
    realizes exactly the fault-free pair's G+ - G- (the same level steps) after map-defects: the partner's level is
    L-1-l for a pair (l, 0), and rint(L-1-x) = L-1-rint(x) away from ties. (Columns may also have moved to other
    pairs: each weight column is followed to the pair the image puts it on.)"""
    hw, model, x, plain = gemm_chip
    checked = 0
    for seed in (0, 1):
        m = measure(plain.image, "sha", seed)
        aware = cimc.compile(_save(model, tmp_path), hw=hw, calib=_calib(x, tmp_path), defects=m)
        ideal = _pair_difference(plain.image, level_conductance(hw, plain.image.device_levels(0)))
        after = _pair_difference(aware.image, Chip.program(aware.image, True, seed).devices[0])
        rows, pos = _weight_region(aware.image)
        seen, truth = m.stuck[0][rows], stuck_positions(hw, seed, 0)[rows]
        s_pos, s_neg, t_pos, t_neg = seen[:, pos], seen[:, pos + 1], truth[:, pos], truth[:, pos + 1]
        reachable = ((s_pos > 0) & (ideal >= 0)) | ((s_pos < 0) & (ideal <= 0)) \
            | ((s_neg > 0) & (ideal <= 0)) | ((s_neg < 0) & (ideal >= 0))
        # One device seen stuck, its partner truly healthy (a partner stuck at the value the plain image gave it is
        # a doubly stuck pair, which cannot be retargeted).
        fixable = (((s_pos != 0) & (t_neg == 0)) | ((s_neg != 0) & (t_pos == 0))) & reachable
        assert np.all(np.abs(after[fixable] - ideal[fixable]) < 1e-9)
        checked += int(fixable.sum())
    assert checked >= 20


def test_the_plain_mapping_is_not_exact_on_the_same_pairs(gemm_chip) -> None:
    """The control: without map-defects, pairs with one stuck device realize another weight."""
    hw, _, _, plain = gemm_chip
    ideal = _pair_difference(plain.image, level_conductance(hw, plain.image.device_levels(0)))
    before = _pair_difference(plain.image, Chip.program(plain.image, True, 0).devices[0])
    rows, pos = _weight_region(plain.image)
    truth = stuck_positions(hw, 0, 0)[rows]
    one = (truth[:, pos] != 0) ^ (truth[:, pos + 1] != 0)
    assert np.sum(np.abs(before - ideal)[one] > 1.0) >= 10


def _save(model, tmp_path: Path) -> Path:  # noqa: ANN001
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _calib(x: np.ndarray, tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    path.write_bytes(npz_bytes({"x": x}))
    return path


def _ramp_inl_lsb(chip: Chip, ramp: dict, recalibrate: bool) -> float:
    """Worst |f(T realized) - f(T ideal)| in output LSB of a ramp on a chip (the ramp's own INL definition)."""
    f = Transfer(Activation.create(ramp["function"], ramp.get("alpha"), ramp.get("beta")), ramp.get("clip"),
                 ramp["z_lo"], ramp["z_hi"])
    lsb = abs(ramp["output_levels"][1] - ramp["output_levels"][0])
    realized = chip.ramp_thresholds(ramp, recalibrate)
    return float(np.max(np.abs(f(realized) - f(np.asarray(ramp["thresholds"])))) / lsb)


def test_ramp_resynthesis_reduces_the_inl_of_a_chip_with_stuck_ramp_devices(tmp_path: Path) -> None:
    """On every chip (of seeds 0-29) with a stuck device among the plain ramp's devices (seen by the tester), the defect-aware image's
    ramp has no higher worst INL than the plain image's on the same chip, with and without the on-chip recalibration
    of its offset, and at most 1 LSB; on most of them it is lower by more than 0.1 LSB (a stuck device whose
    conductance nearly equals its target, e.g. a calibration device at level 61 stuck at G_max, changes little)."""
    hw = hardware(nonideality=EXACT_CHIP, array={"rows": 64})
    model, _, _ = rnn_step_model("Sigmoid", None, None, None)
    x = np.random.default_rng(5).uniform(-1, 1, size=(1, 16, INPUTS)).astype(np.float32)
    onnx_path = tmp_path / "rnn.onnx"
    onnx.save(model, onnx_path)
    calib = tmp_path / "calib.npz"
    calib.write_bytes(npz_bytes({"X": x}))
    plain = cimc.compile(onnx_path, hw=hw, calib=calib)
    (ramp,) = plain.image.manifest["ramps"]
    chips = improved = 0
    for seed in range(30):
        m = measure(plain.image, "sha", seed)
        ramp_devices = plain.image.device_levels(ramp["array"])[:, ramp["bit_line"]] >= 0
        if not m.stuck[ramp["array"]][:ramp_devices.size][ramp_devices, ramp["bit_line"]].any():
            continue
        aware = cimc.compile(onnx_path, hw=hw, calib=calib, defects=m)
        (repaired,) = aware.image.manifest["ramps"]
        for recalibrate in (False, True):
            before = _ramp_inl_lsb(Chip.program(plain.image, True, seed), ramp, recalibrate)
            after = _ramp_inl_lsb(Chip.program(aware.image, True, seed), repaired, recalibrate)
            assert after <= before + 1e-9 and after <= 1.0, f"chip {seed}: INL {before:.3f} -> {after:.3f} LSB"
            improved += after < before - 0.1
        chips += 1
    assert chips >= 5 and improved >= 6, f"{chips} chips with stuck ramp devices, {improved} INL reductions > 0.1 LSB"


def test_a_ramp_without_room_to_skip_its_stuck_rows_moves_to_the_spare_ramp_column(tmp_path: Path) -> None:
    """Arrays exactly as tall as a 5-bit ramp and no spare word lines: a stuck device in the ramp's rows cannot be
    skipped, so where the spare ramp column's rows are healthy the ramp moves there, and its INL on the chip is then
    no higher than the plain image's."""
    hw = hardware(nonideality={**EXACT_CHIP, "stuck_on_rate": 0.01, "stuck_off_rate": 0.01},
                  array={"rows": 36, "spare_rows": 0})
    model, _, _ = rnn_step_model("Sigmoid", None, None, None)
    x = np.random.default_rng(5).uniform(-1, 1, size=(1, 16, INPUTS)).astype(np.float32)
    onnx.save(model, tmp_path / "rnn.onnx")
    (tmp_path / "calib.npz").write_bytes(npz_bytes({"X": x}))
    plain = cimc.compile(tmp_path / "rnn.onnx", hw=hw, calib=tmp_path / "calib.npz")
    (ramp,) = plain.image.manifest["ramps"]
    spare = hw.array.cols + hw.array.spare_cols
    moved = 0
    for seed in range(30):
        m = measure(plain.image, "sha", seed)
        column, spare_column = m.stuck[ramp["array"]][:36, ramp["bit_line"]], m.stuck[ramp["array"]][:36, spare]
        if not column.any() or spare_column.any():
            continue
        aware = cimc.compile(tmp_path / "rnn.onnx", hw=hw, calib=tmp_path / "calib.npz", defects=m)
        (repaired,) = aware.image.manifest["ramps"]
        if repaired["bit_line"] != spare:
            continue  # the column's own stuck devices predicted a smaller INL than the spare
        moved += 1
        before = _ramp_inl_lsb(Chip.program(plain.image, True, seed), ramp, True)
        after = _ramp_inl_lsb(Chip.program(aware.image, True, seed), repaired, True)
        assert after <= before + 1e-9, f"chip {seed}: INL {before:.3f} -> {after:.3f} LSB"
        assert aware.image.device_levels(ramp["array"]).shape[1] == hw.array.physical_cols
    assert moved >= 2


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6])
def test_the_column_assignment_is_the_brute_force_optimum(width: int) -> None:
    """On random small tiles with many stuck devices, the assignment's total cost equals the minimum over all
    width! placements, and the cost it minimizes is the realized pair error (checked against compensate_pair)."""
    from itertools import permutations

    from cimc.passes.map_defects import assign, column_cost, realized_difference

    g_min, g_max = 2.0, 100.0
    rng = np.random.default_rng(width)
    for _ in range(20):
        rows = 4
        w = rng.uniform(-1, 1, size=(rows, width)) * (g_max - g_min)
        g_pos, g_neg = g_min + np.maximum(w, 0), g_min + np.maximum(-w, 0)
        stuck = rng.choice(np.array([-1, 0, 1], np.int8), size=(rows, 2 * width), p=[0.15, 0.7, 0.15])
        cost = column_cost(g_pos - g_neg, stuck[:, 0::2], stuck[:, 1::2], g_min, g_max)
        pairs = assign(cost, np.arange(width))
        best = min(sum(cost[j, q] for j, q in enumerate(p)) for p in permutations(range(width)))
        assert sorted(pairs) == list(range(width))
        assert cost[np.arange(width), pairs].sum() == pytest.approx(best, rel=1e-12, abs=1e-9)
        # The cost is what the placed, compensated pairs realize.
        sp, sn = stuck[:, 2 * pairs], stuck[:, 2 * pairs + 1]
        new_pos, new_neg = compensate_pair(g_pos, g_neg, sp, sn, g_min, g_max)
        held_pos = np.where(sp > 0, g_max, np.where(sp < 0, g_min, new_pos))  # a stuck device holds its rail
        held_neg = np.where(sn > 0, g_max, np.where(sn < 0, g_min, new_neg))
        assert np.allclose(held_pos - held_neg, realized_difference(g_pos - g_neg, sp, sn, g_min, g_max))
        assert ((held_pos - held_neg - (g_pos - g_neg)) ** 2).sum() == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_a_healthy_tile_keeps_its_layout() -> None:
    from cimc.passes.map_defects import assign

    assert assign(np.zeros((5, 7)), np.arange(5)).tolist() == list(range(5))


def test_the_defect_aware_image_encodes_the_models_weights(gemm_chip, tmp_path: Path) -> None:
    """map-defects changes what is programmed, not the model: the reference weights (what exact runs) are the plain
    image's, to float32 rounding of targets whose difference moved by at most one float64 ulp of 100 uS."""
    hw, model, x, plain = gemm_chip
    aware = cimc.compile(_save(model, tmp_path), hw=hw, calib=_calib(x, tmp_path),
                         defects=measure(plain.image, "sha", 0))
    assert aware.image.reference.keys() == plain.image.reference.keys()
    for key, weights in plain.image.reference.items():
        assert np.allclose(aware.image.reference[key], weights, rtol=2 * np.finfo(np.float32).eps, atol=0)
