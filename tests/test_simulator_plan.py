"""The simulator's step plan, chip instances and output-referred read noise (backends/plan.py, chip.py, ramp_codes.py).

- The vectorized NL-ADC lookup equals ``searchsorted`` per column, for every
  float32/float64 value class that matters (thresholds themselves, their
  neighbours, +-inf, duplicate thresholds, tiny gaps).
- The general path (observer, teacher-forcing hook, saturation counters) gives
  bit-identical outputs to the fast one, at every fidelity.
- Stuck devices belong to positions: one seed, two images, the same positions.
- Read noise drawn at the column output has the distribution of the
  per-device model (two-sample Kolmogorov-Smirnov test against a per-device
  Monte Carlo; false-failure probability stated at the test).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.backends.chip import stuck_positions
from cimc.backends.ramp_codes import ColumnCodes
from cimc.backends.simulator import Simulator, SimulatorOptions
from test_analog_ops import compile_model, gemm_model, hardware, tiles

QUIET = {"program_noise_us": 0.0, "read_noise_rel": 0.0, "stuck_on_rate": 0.0, "stuck_off_rate": 0.0,
         "vread_rel_std": 0.0}


# --- the NL-ADC lookup ------------------------------------------------------------------------------

def _ramps(rng: np.random.Generator, degenerate: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Thresholds as ramps realize them: increasing; ``degenerate``: some duplicates (a step with no device) and
    gaps of one ulp, else gaps of at least 0.3 as a sigmoid's or tanh's (one threshold per lookup cell)."""
    ramps = [(np.zeros(0), np.array([0.25])), (np.array([0.5]), np.array([-1.0, 1.0]))]
    for n in (3, 7, 31, 63):
        t = np.cumsum(rng.exponential(1.0, n) + (0 if degenerate else 0.3)) - n / 2
        if degenerate:
            t[n // 3] = t[n // 3 - 1]
            t[n // 2] = np.nextafter(t[n // 2 - 1], np.inf)
        ramps.append((t, np.sort(rng.normal(size=n + 1))))
    return ramps


@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_codes_equal_searchsorted_per_column(dtype: type, degenerate: bool) -> None:
    """code = #{t <= z} for every column against its own ramp, z of the model's type compared exactly.

    Both lookups: one comparison per cell (regular ramps) and several (duplicates and one-ulp gaps share cells).
    """
    rng = np.random.default_rng(5)
    ramps = _ramps(rng, degenerate)
    ramp_of = rng.integers(0, len(ramps), 48)
    codes = ColumnCodes(ramps, ramp_of, np.dtype(dtype))
    assert (codes.depth > 1) == degenerate
    special = np.concatenate([t for t, _ in ramps])
    special = np.concatenate([special, np.nextafter(special, np.inf), np.nextafter(special, -np.inf)]).astype(dtype)
    special = np.concatenate([special, np.nextafter(special, np.array(np.inf, dtype)),
                              np.nextafter(special, np.array(-np.inf, dtype)), np.array([np.inf, -np.inf, 0.0], dtype)])
    z = np.concatenate([rng.normal(0, 20, (200, 48)).astype(dtype),
                        rng.choice(special, (400, 48)).astype(dtype)])
    got = codes(z.T).T
    assert got.dtype == dtype
    for j in range(48):
        t, levels = ramps[ramp_of[j]]
        want = levels[np.searchsorted(t, z[:, j].astype(np.float64), side="right")].astype(dtype)
        np.testing.assert_array_equal(got[:, j], want, err_msg=f"column {j} (ramp {ramp_of[j]})")


# --- the general path computes the fast path's numbers ---------------------------------------------

def lstm_model(inputs: int, hidden: int) -> onnx.ModelProto:
    """An LSTM wide enough that its MVM splits into row tiles (analog partial sums) and its gates into column tiles."""
    rng = np.random.default_rng(0)
    s = 1 / math.sqrt(hidden)
    inits = [numpy_helper.from_array(rng.uniform(-s, s, shape).astype(np.float32), name)
             for name, shape in (("W", (1, 4 * hidden, inputs)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 1, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):  # noqa: ANN001, ANN201
    x = np.random.default_rng(1).uniform(-1, 1, (12, 5, 100)).astype(np.float32)
    compiled = compile_model(lstm_model(100, 40), {"x": x}, hardware(), tmp_path_factory.mktemp("lstm"))
    return compiled, x


def test_the_lstm_plan_uses_fused_reads_sums_and_conversions(lstm) -> None:  # noqa: ANN001
    """What the fixture is for: its loop body has row-split read groups, fused analog sums and grouped NL-ADCs."""
    compiled, _ = lstm
    plan = Simulator(compiled.image, SimulatorOptions("ideal")).plan()
    (loop,) = [s for s in plan.main.steps if type(s).__name__ == "LoopStep"]
    kinds = [type(s).__name__ for s in loop.body.steps]
    assert "SumStep" in kinds and "ConvertStep" in kinds and "ConcatView" in kinds
    read = next(s for s in loop.body.steps if type(s).__name__ == "ReadStep")
    assert len(read.groups) >= 2, "the fixture's gate MVM must split into row groups"
    tiles_in_program = sum(1 for op in compiled.image.program().walk() if op.name == "cim.tile_mvm")
    reads = sum(len(s.groups) for s in loop.body.steps if type(s).__name__ == "ReadStep")
    assert reads < tiles_in_program


@pytest.mark.parametrize("fidelity", ["exact", "ideal", "noisy"])
def test_general_path_gives_the_fast_paths_numbers(lstm, fidelity: str) -> None:  # noqa: ANN001
    """Observer, teacher-forcing hook (returning the run's own state) and counters change no bit of any output."""
    compiled, x = lstm
    fast = Simulator(compiled.image, SimulatorOptions(fidelity, seed=4)).run({"x": x})
    seen: list[str] = []
    general = Simulator(compiled.image, SimulatorOptions(fidelity, seed=4, counters=True))
    slow = general.run({"x": x}, lambda op, a, r: seen.append(op.name), lambda *a: None, lambda loop, t, values: values)
    assert "cim.tile_mvm" in seen and "cim.nl_adc" in seen and "cim.loop" in seen
    for name in fast:
        np.testing.assert_array_equal(slow[name], fast[name])
    if fidelity != "exact":
        assert general.saturation is not None and general.saturation.layers


def test_every_run_reads_fresh_noise_and_the_same_chip(lstm) -> None:  # noqa: ANN001
    """Two runs of one noisy simulator differ (new reads); two simulators of one seed give the same first run."""
    compiled, x = lstm
    a = Simulator(compiled.image, SimulatorOptions("noisy", seed=8))
    first, second = a.run({"x": x})["Y"], a.run({"x": x})["Y"]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(Simulator(compiled.image, SimulatorOptions("noisy", seed=8)).run({"x": x})["Y"], first)


# --- chip instances -----------------------------------------------------------------------------------

def test_one_seed_has_its_stuck_devices_at_the_same_positions_whatever_the_image(tmp_path: Path) -> None:
    """Two different models on array 0 of the same chip: where both use a device, both see the same defect.

    The defects are stuck_positions(seed, array) restricted to the used devices; another seed moves them.
    """
    hw = hardware(nonideality=QUIET | {"program_noise_us": 0.5, "stuck_on_rate": 0.05, "stuck_off_rate": 0.1})
    rng = np.random.default_rng(2)
    one = compile_model(gemm_model(rng.normal(size=(64, 24)), 4), {"x": rng.uniform(-1, 1, (4, 64)).astype(np.float32)},
                        hw, tmp_path / "one")
    two = compile_model(gemm_model(rng.normal(size=(100, 12)), 4), {"x": rng.uniform(-1, 1, (4, 100)).astype(np.float32)},
                        hw, tmp_path / "two")
    used_one, used_two = one.image.device_levels(0) >= 0, two.image.device_levels(0) >= 0
    both = used_one & used_two
    assert both.sum() > 500
    for seed in (0, 1):
        a = Simulator(one.image, SimulatorOptions("noisy", seed=seed))
        b = Simulator(two.image, SimulatorOptions("noisy", seed=seed))
        np.testing.assert_array_equal(a.stuck[0][both], b.stuck[0][both])
        rows, cols = used_one.shape  # the image leaves the spare lines unused: its arrays are rows x cols
        np.testing.assert_array_equal(a.stuck[0], stuck_positions(hw, seed, 0)[:rows, :cols] * used_one)
        assert 0.1 < np.count_nonzero(a.stuck[0][both]) / both.sum() < 0.2
        same_level = both & (one.image.device_levels(0) == two.image.device_levels(0)) & (a.stuck[0] == 0)
        assert same_level.sum() > 50
        np.testing.assert_array_equal(a.devices[0][same_level], b.devices[0][same_level])  # programming noise too
    assert not np.array_equal(stuck_positions(hw, 0, 0), stuck_positions(hw, 1, 0))


# --- output-referred read noise against the per-device model --------------------------------------

def ks_critical(n: int, m: int, alpha: float) -> float:
    """Two-sample Kolmogorov-Smirnov critical distance at level alpha (asymptotic: c = sqrt(-ln(alpha / 2) / 2))."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def test_output_referred_read_noise_has_the_per_device_distribution(tmp_path: Path) -> None:
    """A 200-row Gemm splits into two row tiles summed in analog: its column noise is drawn once, at the sum.

    Per-device model (Monte Carlo): every device of both tiles reads G (1 + sigma n), n ~ N(0, 1) fresh per read
    and per batch element, z_j = Σ_i x_i (G+_ij (1 + sigma n) - G-_ij (1 + sigma n')) / s_j. The simulator's
    deviations from the noiseless column value and the Monte Carlo's, both divided by the same analytic std
    sigma sqrt(Σ x_i^2 (G+^2 + G-^2)) / s_j, must pass a two-sample KS test at alpha = 1e-6 (the false-failure
    probability; asymptotic critical value, conservative at these sizes). Batch elements see the same input:
    their deviations must be uncorrelated (|mean u_b u_b'| <= 5.33 / sqrt(n), two-sided 1e-7).
    """
    sigma = 0.25
    hw = hardware(nonideality=QUIET | {"read_noise_rel": sigma})
    rng = np.random.default_rng(3)
    w = rng.normal(size=(200, 12))
    x = (rng.integers(-127, 128, size=(1, 200)) / 127).astype(np.float32)
    x[0, 0] = 1.0  # full scale 1: every input is on the DAC grid, so the driven vector is x itself
    batch = 8
    model = gemm_model(w, batch)
    compiled = compile_model(model, {"x": np.repeat(x, batch, axis=0)}, hw, tmp_path)
    sums = [op for op in compiled.image.program().walk() if op.name == "cim.analog_sum"]
    assert len(sums) == 1 and len(tiles(compiled)) == 2

    def column_values(sim: Simulator, runs: int) -> np.ndarray:
        out: list[np.ndarray] = []
        for _ in range(runs):
            sim.run({"x": np.repeat(x, batch, axis=0)},
                    lambda op, a, r: out.append(np.asarray(r[0], np.float64)) if op.name == "cim.analog_sum" else None)
        return np.stack(out)  # [runs, batch, columns]

    mean = column_values(Simulator(compiled.image, SimulatorOptions("ideal")), 1)[0, 0]
    runs = 60
    noisy = Simulator(compiled.image, SimulatorOptions("noisy", seed=1))
    simulated = column_values(noisy, runs) - mean
    xd = x[0].astype(np.float64)
    variance = np.zeros(mean.shape)
    mc = np.zeros((runs, batch, mean.size))
    draws = np.random.default_rng(99)
    for tile in tiles(compiled):
        r0, r1 = tile.attributes["rows"]
        g_pos, g_neg = noisy.tile_conductances(tile)
        scale = tile.attributes["g_scale"].array
        xi = xd[r0:r1]
        variance += sigma ** 2 * (xi ** 2) @ (g_pos ** 2 + g_neg ** 2) / scale ** 2
        n_pos = draws.standard_normal((runs, batch) + g_pos.shape)
        n_neg = draws.standard_normal((runs, batch) + g_neg.shape)
        mc += np.einsum("i,rbij->rbj", xi, sigma * (g_pos * n_pos - g_neg * n_neg)) / scale
    std = np.sqrt(variance)
    u_sim, u_mc = (simulated / std).ravel(), (mc / std).ravel()
    both = np.sort(np.concatenate([u_sim, u_mc]))
    cdf_sim = np.searchsorted(np.sort(u_sim), both, side="right") / u_sim.size
    cdf_mc = np.searchsorted(np.sort(u_mc), both, side="right") / u_mc.size
    distance = float(np.abs(cdf_sim - cdf_mc).max())
    assert distance <= ks_critical(u_sim.size, u_mc.size, 1e-6), f"KS distance {distance:.4f}"
    u = simulated / std
    pairs = (u[:, 0] * u[:, 1]).ravel()
    assert abs(pairs.mean()) <= 5.33 / math.sqrt(pairs.size), "batch elements share their read noise"
