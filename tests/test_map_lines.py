"""map-defects' line assignment (passes/map_defects.py): word lines per array, columns onto own or spare pairs.

The optimality tests compare against brute force over every injective map on
small cases; the end-to-end tests check that a moved row or column is read
where the image says (the simulator honours ``word_lines`` and
``column_pairs``: on a chip without the faults the outputs are the plain
image's, bit for bit) and that on the faulty chip the mapping helps.
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.backends.chip import stuck_positions
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.backends.tester import measure
from cimc.defects import ChipMeasurement
from cimc.image import tile_devices
from cimc.passes.map_defects import LineUnit, _column_step, assign, map_array, realized_difference, row_cost
from test_analog_ops import compile_model, gemm_model, hardware

G_MIN, G_MAX = 2.0, 100.0


def _random_units(rng: np.random.Generator) -> list[LineUnit]:
    """Two tiles side by side on one array: widths 2 and 1 at bit lines 0 and 4, rows 2 and 3."""
    def diff(rows: int, width: int) -> np.ndarray:
        w = rng.uniform(-1, 1, size=(rows, width)) * (G_MAX - G_MIN)
        return (G_MIN + np.maximum(w, 0)) - (G_MIN + np.maximum(-w, 0))
    return [LineUnit([], diff(2, 2), 0, 0), LineUnit([], diff(3, 1), 0, 4)]


def _small_hw(spare_rows: int = 2, spare_cols: int = 2):  # noqa: ANN202
    # cols = 6: the two units fill bit lines 0..5; spare pair at 6, 7. rows only matter through the stuck matrix.
    return hardware(array={"rows": 40, "cols": 6, "spare_rows": spare_rows, "spare_cols": spare_cols},
                    device={"g_min_us": G_MIN, "g_max_us": G_MAX})


def _total(units: list[LineUnit], stuck: np.ndarray, word_line: np.ndarray, pairs: list[np.ndarray]) -> float:
    """The realized squared pair error of a layout, computed directly (not through the pass's cost matrices)."""
    total = 0.0
    for u, q in zip(units, pairs):
        lines = word_line[u.row:u.row + u.diff.shape[0]]
        sp, sn = stuck[np.ix_(lines, u.col + 2 * q)], stuck[np.ix_(lines, u.col + 2 * q + 1)]
        total += float(((realized_difference(u.diff, sp, sn, G_MIN, G_MAX) - u.diff) ** 2).sum())
    return total


@pytest.mark.parametrize("seed", range(6))
def test_the_row_assignment_is_the_brute_force_optimum(seed: int) -> None:
    """Given the columns, the word lines chosen minimize the summed error over every tile of the array, among all
    injective maps of the 3 logical word lines onto the 5 physical ones (spares included)."""
    rng = np.random.default_rng(seed)
    units = _random_units(rng)
    stuck = rng.choice(np.array([-1, 0, 1], np.int8), size=(5, 8), p=[0.2, 0.6, 0.2])
    pairs = [np.arange(2), np.arange(1)]
    chosen = assign(row_cost(units, stuck, pairs, 3, _small_hw()), np.arange(3))
    best = min(_total(units, stuck, np.array(p), pairs) for p in permutations(range(5), 3))
    assert len(set(chosen.tolist())) == 3
    assert _total(units, stuck, chosen, pairs) == pytest.approx(best, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_the_column_assignment_with_spares_is_the_brute_force_optimum(seed: int) -> None:
    """Given the word lines, the pairs chosen minimize the error among every placement of each tile's columns on
    its own pairs or the array's spare pair (each pair used once)."""
    rng = np.random.default_rng(100 + seed)
    units = _random_units(rng)
    stuck = rng.choice(np.array([-1, 0, 1], np.int8), size=(5, 8), p=[0.2, 0.6, 0.2])
    word_line = np.array([0, 1, 2])
    hw = _small_hw()
    chosen = _column_step(units, stuck, word_line, hw, [np.arange(2), np.arange(1)])
    # Candidates as pair offsets from each unit's bit line: own pairs, then the spare pair (bit line 6).
    candidates = [[0, 1, 3], [0, 1]]
    best = np.inf
    for a in permutations(candidates[0], 2):
        for (b,) in permutations(candidates[1], 1):
            if a[0] * 2 == 6 and b * 2 + 4 == 6 or a[1] * 2 == 6 and b * 2 + 4 == 6:
                continue  # the spare pair holds one column
            best = min(best, _total(units, stuck, word_line, [np.array(a), np.array([b])]))
    assert _total(units, stuck, word_line, chosen) == pytest.approx(best, rel=1e-12, abs=1e-9)


def test_the_alternation_never_does_worse_than_the_plain_layout_and_ends_at_a_fixed_point() -> None:
    hw = _small_hw()
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        units = _random_units(rng)
        stuck = rng.choice(np.array([-1, 0, 1], np.int8), size=(5, 8), p=[0.2, 0.6, 0.2])
        mapping = map_array(units, stuck, hw)
        plain = _total(units, stuck, np.arange(3), [np.arange(2), np.arange(1)])
        assert mapping.cost == pytest.approx(_total(units, stuck, mapping.word_line, mapping.pairs))
        assert mapping.cost <= plain + 1e-9
        again = _column_step(units, stuck, mapping.word_line, hw, mapping.pairs)
        assert all(np.array_equal(a, b) for a, b in zip(again, mapping.pairs))
        lines = assign(row_cost(units, stuck, mapping.pairs, 3, hw), mapping.word_line)
        assert np.array_equal(lines, mapping.word_line)


def test_spares_replace_a_bad_word_line_and_a_bad_pair() -> None:
    """An array whose every main line is used: a word line with every device stuck, and a bit-line pair stuck
    off under large positive weights, go to the spare word line and the spare pair."""
    hw = _small_hw(spare_rows=1, spare_cols=2)
    units = [LineUnit([], np.full((4, 3), 60.0), 0, 0)]
    stuck = np.zeros((5, 8), np.int8)
    stuck[2, :6] = -1  # word line 2: every device of the tile stuck off
    stuck[:4, 2] = -1  # pair 1 (bit lines 2, 3): G+ stuck off on every row
    mapping = map_array(units, stuck, hw)
    assert 2 not in mapping.word_line and 4 in mapping.word_line  # the bad word line out, the spare one in
    assert 1 not in mapping.pairs[0] and 3 in mapping.pairs[0]  # the bad pair out, the spare pair (bit lines 6, 7) in
    assert mapping.cost == 0.0


# ---- end to end: the simulator reads the lines the image names --------------------------------------------------

EXACT_CHIP = {"program_noise_us": 0.0, "read_noise_rel": 0.0, "vread_rel_std": 0.0, "stuck_on_rate": 0.0,
              "stuck_off_rate": 0.0}


@pytest.fixture(scope="module")
def full_array(tmp_path_factory):  # noqa: ANN201
    """A Gemm (no bias) whose one tile fills every main word line of a 20-row array."""
    hw = hardware(array={"rows": 20, "cols": 16, "spare_rows": 2, "spare_cols": 2},
                  converters={"nl_adc_bits": 4}, nonideality=EXACT_CHIP)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(4, 20)).astype(np.float32)
    tmp = tmp_path_factory.mktemp("full")
    plain = compile_model(gemm_model(rng.normal(size=(20, 7)), 4), {"x": x}, hw, tmp)
    return hw, x, plain, tmp


def _tile(compiled: cimc.CompiledModel):  # noqa: ANN202
    return next(op for op in compiled.image.program().walk() if op.name == "cim.tile_mvm")


def _aware(tmp: Path, hw, m: ChipMeasurement) -> cimc.CompiledModel:  # noqa: ANN001
    return cimc.compile(tmp / "m.onnx", hw=hw, calib=tmp / "calib.npz", defects=m)


def test_moved_rows_and_columns_give_the_plain_outputs_on_a_chip_without_the_faults(full_array) -> None:  # noqa: ANN001
    """A measurement marking word line 3 and the G+ line of pair 2 bad: the defect-aware image moves the row to a
    spare word line (every main one is used) and the column to a spare pair, no device of the tile is on a marked
    line (so nothing is retargeted), and exact and ideal runs equal the plain image's bit for bit: the DAC feeds
    input i to the word line holding row i, and column j is read from the pair holding it."""
    hw, x, plain, tmp = full_array
    k, lines, pos, _ = tile_devices(_tile(plain))
    assert lines.size == hw.array.rows
    shape = (hw.array.physical_rows, hw.array.physical_cols)
    stuck = np.zeros(shape, np.int8)
    stuck[lines[3], :] = 1
    stuck[:, pos[2]] = -1
    m = ChipMeasurement(0, plain.image.manifest["provenance"]["hardware_sha256"], "sha", {k: np.zeros(shape)}, {k: stuck})
    aware = _aware(tmp, hw, m)
    _, new_lines, new_pos, new_neg = tile_devices(_tile(aware))
    assert lines[3] not in new_lines and new_lines.max() >= hw.array.rows and new_pos.max() >= hw.array.cols
    assert (new_lines != lines).sum() == 1 and (new_pos != pos).sum() == 1  # only the bad lines moved
    assert not stuck[np.ix_(new_lines, np.concatenate([new_pos, new_neg]))].any()
    region = [r for r in aware.image.manifest["arrays"][0]["regions"] if r["kind"] == "weights"][0]
    assert region["row_lines"] == new_lines.tolist() and "column_pairs" in region
    for fidelity in ("exact", "ideal"):
        a = Simulator(aware.image, SimulatorOptions(fidelity)).run({"x": x})["y"]
        b = Simulator(plain.image, SimulatorOptions(fidelity)).run({"x": x})["y"]
        assert np.array_equal(a, b), fidelity


def test_on_the_faulty_chip_the_moved_lines_bring_the_outputs_back(tmp_path: Path) -> None:
    """On chips with 3 % + 3 % stuck devices and no programming noise, the defect-aware image's noisy outputs
    are closer to exact than the plain image's on the same chip, on every chip tried."""
    hw = hardware(array={"rows": 20, "cols": 16}, converters={"nl_adc_bits": 4},
                  nonideality={**EXACT_CHIP, "stuck_on_rate": 0.03, "stuck_off_rate": 0.03})
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, size=(16, 19)).astype(np.float32)
    plain = compile_model(gemm_model(rng.normal(size=(19, 7)), 16), {"x": x}, hw, tmp_path)
    exact = Simulator(plain.image, SimulatorOptions("exact")).run({"x": x})["y"]
    for seed in range(4):
        aware = _aware(tmp_path, hw, measure(plain.image, "sha", seed))
        err = {name: float(np.sqrt(np.mean((Simulator(c.image, SimulatorOptions("noisy", seed)).run({"x": x})["y"]
                                            - exact) ** 2))) for name, c in (("plain", plain), ("aware", aware))}
        assert err["aware"] < err["plain"], (seed, err)


def test_declaring_spares_moves_no_fault_and_no_device_of_a_plain_image(tmp_path: Path) -> None:
    """The main lines' stuck draws and programming are those of hardware without spares; the spare lines carry
    faults of their own at the rates; a plain compile's levels and its noisy outputs do not change."""
    rates = {"stuck_on_rate": 0.05, "stuck_off_rate": 0.05}
    with_spares = hardware(array={"spare_rows": 8, "spare_cols": 4, "spare_ramp_cols": 1}, nonideality=rates)
    without = hardware(array={"spare_rows": 0, "spare_cols": 0, "spare_ramp_cols": 0}, nonideality=rates)
    a, b = stuck_positions(with_spares, 3, 0), stuck_positions(without, 3, 0)
    assert a.shape == (136, 69) and b.shape == (128, 64)
    assert np.array_equal(a[:128, :64], b)
    spare = np.concatenate([a[128:].ravel(), a[:128, 64:].ravel()])
    assert 0.05 * spare.size / 3 < (spare != 0).sum() < 0.1 * spare.size * 3
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(4, 30)).astype(np.float32)
    model = gemm_model(rng.normal(size=(30, 9)), 4)
    one, two = compile_model(model, {"x": x}, with_spares, tmp_path / "a"), compile_model(model, {"x": x}, without, tmp_path / "b")
    for k in two.image.arrays:  # spare lines unused: the arrays are stored as rows x cols, as without spares
        assert np.array_equal(one.image.device_levels(k), two.image.device_levels(k))
    for seed in (0, 1):
        y1 = Simulator(one.image, SimulatorOptions("noisy", seed)).run({"x": x})["y"]
        y2 = Simulator(two.image, SimulatorOptions("noisy", seed)).run({"x": x})["y"]
        assert np.array_equal(y1, y2)
