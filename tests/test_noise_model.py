"""Statistical tests of the noisy simulator's device model, through the Simulator on a compiled image.

Every test draws a fixed set of seeds (CI is deterministic) and compares a
statistic with its distribution under the model of ``backends/simulator.py``
and the hardware description. Each acceptance region is set so a correct
model fails with probability below 1e-6 (stated per test):

- a sum of n squared standard normals is chi-square(n); its two-sided
  1e-7 quantiles are taken by the Wilson-Hilferty approximation (relative
  error below 1e-3 at n >= 1000, far inside the margins used);
- a mean of n standard normals is within Z/sqrt(n), Z = 5.33 (two-sided 1e-7);
- a binomial count X with mean mu is within Chernoff's bounds
  P(X >= (1+d) mu) <= exp(-d^2 mu/(2+d)), P(X <= (1-d) mu) <= exp(-d^2 mu/2),
  solved for d at 1e-7 per side.

The hardware files set the rates large where the defaults would need too many
samples, and the defaults' own values are checked where they are cheap to
measure. Deterministic effects (drift, read-voltage scaling) are checked exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.hardware import Hardware, load_hardware
from test_analog_ops import (
    INPUTS,
    compile_model,
    delta_g,
    gemm_model,
    hardware,
    input_scale,
    rnn_mvm_inputs,
    rnn_step_model,
    tile_weights,
    tiles,
)

Z = 5.33  # two-sided normal quantile at 1e-7
P_SIDE = 1e-7
# One write-verify round: the programmed conductance is then the pulse's Gaussian landing itself, whose
# statistics these tests check (the rounds after it are tested in tests/test_write_verify.py).
QUIET = {"program_noise_us": 0.0, "read_noise_rel": 0.0, "stuck_on_rate": 0.0, "stuck_off_rate": 0.0,
         "vread_rel_std": 0.0, "verify_iterations": 1}


def chi2_bounds(n: int) -> tuple[float, float]:
    """Two-sided 1e-7 acceptance interval of a chi-square(n) statistic (Wilson-Hilferty)."""
    def quantile(z: float) -> float:
        return n * (1 - 2 / (9 * n) + z * math.sqrt(2 / (9 * n))) ** 3
    return quantile(-Z), quantile(Z)


def binomial_bounds(mu: float) -> tuple[float, float]:
    """Chernoff acceptance interval of a binomial count of mean mu, each side below 1e-7."""
    log_p = -math.log(P_SIDE)
    lower = math.sqrt(2 * log_p / mu)
    upper = (log_p + math.sqrt(log_p**2 + 8 * mu * log_p)) / (2 * mu)  # d^2 mu = log_p (2 + d)
    return max(0.0, (1 - lower) * mu), (1 + upper) * mu


def assert_standard_normal(u: np.ndarray, what: str) -> None:
    """u iid N(0, 1): mean within Z/sqrt(n), sum of squares inside the chi-square(n) interval."""
    u = np.ravel(u)
    n = u.size
    lo, hi = chi2_bounds(n)
    s = float(np.sum(u**2))
    assert abs(u.mean()) <= Z / math.sqrt(n), f"{what}: mean {u.mean():.4g} of {n} standardized samples"
    assert lo <= s <= hi, f"{what}: sum of squares {s:.6g} outside [{lo:.6g}, {hi:.6g}] (n = {n}; ratio {s / n:.4f})"


@pytest.fixture(scope="module")
def gemm(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 32 weight matrix and one input vector on the DAC grid (so the DAC is exact)."""
    rng = np.random.default_rng(21)
    w = rng.normal(size=(64, 32))
    x = (rng.integers(-127, 128, size=(1, 64)) / 127).astype(np.float32)
    x[0, 0] = 1.0  # the calibrated full scale is 1: DAC levels are k/127
    return w, x


def compiled_gemm(gemm, hw: Hardware, tmp_path: Path):  # noqa: ANN001, ANN201
    w, x = gemm
    return compile_model(gemm_model(w, 1), {"x": x}, hw, tmp_path)


def level_conductances(compiled, hw: Hardware) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Programmed conductance of every used device (G_min + level ΔG) and the used-device mask, array 0."""
    level = compiled.image.device_levels(0)
    used = level >= 0
    return np.where(used, hw.device.g_min_us + level * delta_g(hw), 0.0), used


def tile_reads(sim: Simulator, x: np.ndarray, runs: int) -> np.ndarray:
    """The tile's column values (before the ADC) of ``runs`` successive runs: [runs, columns]."""
    out = []

    def observe(op, operands, results) -> None:  # noqa: ANN001
        if op.name == "cim.tile_mvm":
            out.append(np.asarray(results[0], dtype=np.float64)[0])

    for _ in range(runs):
        sim.run({"x": x}, observe)
    return np.array(out)


def pair_conductances(compiled, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    (tile,) = tiles(compiled)
    r0, r1 = tile.attributes["rows"]
    c0, c1 = tile.attributes["cols"]
    block = g[:r1 - r0, :2 * (c1 - c0)]
    return block[:, 0::2], block[:, 1::2], tile.attributes["g_scale"].array


# --- device statistics -----------------------------------------------------------------------

def test_programming_noise_has_the_configured_std(gemm, tmp_path: Path) -> None:
    """g - (G_min + level ΔG) ~ N(0, sigma_p) with the default sigma_p: sum of (r/sigma)^2 ~ chi2(n).

    G_min is raised to 10 uS (10 sigma) so the clip at 0 uS never acts; stuck
    devices are switched off here (tested below). 20 seeds x 4096 devices.
    """
    sigma = load_hardware().nonideality.program_noise_us
    hw = hardware(device={"g_min_us": 10.0}, nonideality=QUIET | {"program_noise_us": sigma})
    compiled = compiled_gemm(gemm, hw, tmp_path)
    g0, used = level_conductances(compiled, hw)
    devices = [Simulator(compiled.image, SimulatorOptions("noisy", seed=s)).devices[0] for s in range(20)]
    assert_standard_normal(np.concatenate([g[used] - g0[used] for g in devices]) / sigma, "programming noise")
    assert all(np.all(g[~used] == 0) for g in devices), "a device that is not programmed conducts"


def test_programmed_conductance_is_clipped_at_zero(gemm, tmp_path: Path) -> None:
    """A device cannot conduct negatively: G + e < 0 becomes exactly 0 uS, with probability Phi(-G/sigma).

    sigma = 3 uS on the default G_min = 2 uS: the devices at level 0 (every
    pair's zero) end at exactly 0 with p = Phi(-2/3) = 0.2525; a binomial count
    over 10 seeds. No device is negative.
    """
    sigma = 3.0
    hw = hardware(nonideality=QUIET | {"program_noise_us": sigma})
    compiled = compiled_gemm(gemm, hw, tmp_path)
    level = compiled.image.device_levels(0)
    zero_level = level == 0
    devices = np.concatenate([Simulator(compiled.image, SimulatorOptions("noisy", seed=s)).devices[0][zero_level]
                              for s in range(10)])
    assert devices.min() >= 0
    p = 0.5 * math.erfc(hw.device.g_min_us / sigma / math.sqrt(2))
    lo, hi = binomial_bounds(devices.size * p)
    count = int(np.count_nonzero(devices == 0))
    assert lo <= count <= hi, f"{count} of {devices.size} level-0 devices at 0 uS, expected {devices.size * p:.0f}"


def test_stuck_devices_at_the_configured_rates(gemm, tmp_path: Path) -> None:
    """Devices exactly at G_max (stuck on) and exactly at G_min (stuck off) are binomial counts.

    With programming noise on, a device lands exactly on G_min or G_max only by
    being stuck. Large rates (5 %, 10 %) over 8 seeds, then the default rates
    over 60 seeds (246k devices: about 250 and 1230 expected).
    """
    default = load_hardware().nonideality
    for rates, seeds in (((0.05, 0.10), 8), ((default.stuck_on_rate, default.stuck_off_rate), 60)):
        hw = hardware(nonideality=QUIET | {"program_noise_us": 0.5, "stuck_on_rate": rates[0], "stuck_off_rate": rates[1]})
        compiled = compiled_gemm(gemm, hw, tmp_path / f"r{seeds}")
        _, used = level_conductances(compiled, hw)
        on = off = 0
        for seed in range(seeds):
            g = Simulator(compiled.image, SimulatorOptions("noisy", seed=seed)).devices[0][used]
            on += int(np.count_nonzero(g == hw.device.g_max_us))
            off += int(np.count_nonzero(g == hw.device.g_min_us))
        n = seeds * int(used.sum())
        for count, rate, name in ((on, rates[0], "stuck-on"), (off, rates[1], "stuck-off")):
            lo, hi = binomial_bounds(n * rate)
            assert lo <= count <= hi, f"{name}: {count} of {n} devices, expected {n * rate:.0f} in [{lo:.0f}, {hi:.0f}]"


def test_read_noise_is_fresh_at_every_read_with_the_configured_std(gemm, tmp_path: Path) -> None:
    """Column value minus its noiseless value, standardized by its analytic std, over 300 reads.

    Only read noise: each device reads G (1 + sigma_r n), n ~ N(0, 1) fresh per
    read, so z_j - z_j0 = Σ_i x_i sigma_r (G+_ij n - G-_ij n')/s_j with variance
    sigma_r^2 Σ_i x_i^2 (G+^2 + G-^2)/s_j^2. Successive reads of the same input
    must be uncorrelated: |corr| <= Z/sqrt(n).
    """
    sigma = 0.25  # large, so that G (1 + sigma n) and e.g. G / (1 + sigma n) differ in variance by > 20 %
    hw = hardware(nonideality=QUIET | {"read_noise_rel": sigma})
    compiled = compiled_gemm(gemm, hw, tmp_path)
    _, x = gemm
    g0, _ = level_conductances(compiled, hw)
    g_pos, g_neg, scale = pair_conductances(compiled, g0)
    xd = x[0].astype(np.float64)
    mean = xd @ ((g_pos - g_neg) / scale)
    std = sigma * np.sqrt((xd**2) @ (g_pos**2 + g_neg**2)) / scale
    reads = tile_reads(Simulator(compiled.image, SimulatorOptions("noisy", seed=3)), x, 300)
    u = (reads - mean) / std
    assert_standard_normal(u, "read noise")
    corr = float(np.mean(u[1:] * u[:-1]))
    assert abs(corr) <= Z / math.sqrt(u[1:].size), f"successive reads correlate: {corr:.4f}"


def test_drift_follows_the_power_law_exactly(gemm, tmp_path: Path) -> None:
    """Same seed with and without --drift-time: every device scales by (t/t0)^-nu, nothing else moves.

    The default nu and t0 with the default noise; the exponent recovered from
    the log ratio equals the configured one to float rounding. Before t0 the
    devices are as programmed. The column values scale by the same factor
    (there with t0 = 10 s, so t/t0 is not t).
    """
    hw = load_hardware()
    n = hw.nonideality
    compiled = compiled_gemm(gemm, hw, tmp_path)
    _, used = level_conductances(compiled, hw)
    fresh = Simulator(compiled.image, SimulatorOptions("noisy", seed=9)).devices[0][used]
    assert np.count_nonzero(fresh > 0) > 0.9 * fresh.size
    for t in (1e3, 1e6):
        aged = Simulator(compiled.image, SimulatorOptions("noisy", seed=9, drift_time_s=t)).devices[0][used]
        positive = fresh > 0
        nu = -np.log(aged[positive] / fresh[positive]) / math.log(t / n.drift_t0_s)
        np.testing.assert_allclose(nu, n.drift_nu, rtol=1e-9)
    early = Simulator(compiled.image, SimulatorOptions("noisy", seed=9, drift_time_s=n.drift_t0_s / 2)).devices[0][used]
    np.testing.assert_array_equal(early, fresh)

    quiet = hardware(nonideality=QUIET | {"drift_nu": 0.05, "drift_t0_s": 10.0})
    compiled = compiled_gemm(gemm, quiet, tmp_path / "quiet")
    _, x = gemm
    ideal = tile_reads(Simulator(compiled.image, SimulatorOptions("ideal")), x, 1)
    aged = tile_reads(Simulator(compiled.image, SimulatorOptions("noisy", drift_time_s=1e4)), x, 1)
    np.testing.assert_allclose(aged, ideal * (1e4 / 10.0) ** -0.05, rtol=1e-5, atol=1e-6 * np.abs(ideal).max())


def test_read_voltage_draws_and_their_effect(gemm, tmp_path: Path) -> None:
    """vread_scale ~ N(1, vread_rel_std) per seed (500 seeds); the column values scale with it.

    The default hardware has an ideal supply (vread_rel_std = 0): every noisy
    simulator then reads at exactly the nominal voltage.
    """
    std = 0.05
    hw = hardware(nonideality=QUIET | {"vread_rel_std": std})
    compiled = compiled_gemm(gemm, hw, tmp_path)
    draws = np.array([Simulator(compiled.image, SimulatorOptions("noisy", seed=s)).vread_scale for s in range(500)])
    assert_standard_normal((draws - 1) / std, "read-voltage draws")
    _, x = gemm
    ideal = tile_reads(Simulator(compiled.image, SimulatorOptions("ideal")), x, 1)
    sim = Simulator(compiled.image, SimulatorOptions("noisy", seed=7))
    np.testing.assert_allclose(tile_reads(sim, x, 1), ideal * sim.vread_scale, rtol=1e-5, atol=1e-6 * np.abs(ideal).max())
    assert load_hardware().nonideality.vread_rel_std == 0
    default = compiled_gemm(gemm, load_hardware(), tmp_path / "default")
    assert {Simulator(default.image, SimulatorOptions("noisy", seed=s)).vread_scale for s in range(5)} == {1.0}


def test_noisy_column_output_matches_its_analytic_distribution(gemm, tmp_path: Path) -> None:
    """One tile under programming + read noise, over 200 seeds (new devices and a new read each).

    Every device is G + e with e ~ N(0, sigma_p), read as (G + e)(1 + sigma_r n).
    The column value z_j = Σ_i x_i (G+' - G-')/s_j then has mean
    Σ_i x_i (G+ - G-)/s_j and variance
    Σ_i x_i^2 [2 sigma_p^2 (1 + sigma_r^2) + sigma_r^2 (G+^2 + G-^2)]/s_j^2
    (independent devices; no stuck devices, no clip at 0 with G_min = 10 uS).
    """
    sigma_p, sigma_r = 1.0, 0.02
    hw = hardware(device={"g_min_us": 10.0}, nonideality=QUIET | {"program_noise_us": sigma_p, "read_noise_rel": sigma_r})
    compiled = compiled_gemm(gemm, hw, tmp_path)
    _, x = gemm
    g0, _ = level_conductances(compiled, hw)
    g_pos, g_neg, scale = pair_conductances(compiled, g0)
    xd = x[0].astype(np.float64)
    mean = xd @ ((g_pos - g_neg) / scale)
    var = (xd**2) @ (2 * sigma_p**2 * (1 + sigma_r**2) + sigma_r**2 * (g_pos**2 + g_neg**2)) / scale**2
    reads = np.concatenate([tile_reads(Simulator(compiled.image, SimulatorOptions("noisy", seed=s)), x, 1)
                            for s in range(200)])
    assert_standard_normal((reads - mean) / np.sqrt(var), "noisy column output")


# --- ramp calibration -------------------------------------------------------------------------

def _achievable_sums(devices: int, hw: Hardware) -> np.ndarray:
    """Every total ``devices`` calibration devices can hold: each off, or G_min + l ΔG (enumerated)."""
    d = hw.device
    totals = {0.0}
    for on in range(1, devices + 1):
        totals.update(on * d.g_min_us + np.arange(on * (d.levels - 1) + 1) * delta_g(hw))
    return np.array(sorted(totals))


@pytest.mark.parametrize("reach", ["within", "beyond"])
def test_ramp_recalibration_absorbs_the_median_level_error(tmp_path: Path, reach: str) -> None:
    """After programming noise, the calibration devices are re-tuned to the nearest reachable offset.

    From the noisy devices of the ramp column (image layout: step devices,
    then the calibration devices), the uncalibrated ramp levels are
    L_k = offset + Σ_(j<=k) G_j. The chip re-tunes the calibration devices to
    the reachable total nearest to offset + median(g T_k - L_k) (in sign),
    enumerated here from the device levels. The NL-ADC must latch its codes
    against those thresholds; the median level error left is then at most
    ΔG/2. Read noise is off, and the column value is computed from the noisy
    weight devices themselves.

    ``beyond``: half the devices stuck at G_max push the ramp so high that the
    wanted offset exceeds what 3 calibration devices reach (3 G_max): the
    offset then sits at the reach, and the error it leaves is larger than ΔG/2.
    """
    noise = {"program_noise_us": 2.0} if reach == "within" else {"program_noise_us": 0.5, "stuck_on_rate": 0.5}
    calibration = 5 if reach == "within" else 3
    hw = hardware(array={"rows": 64}, converters={"nl_adc_bits": 5, "dac_bits": 12, "ramp_calibration_devices": calibration},
                  nonideality=QUIET | noise)
    model, _, _ = rnn_step_model("Tanh", None, None, None, seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, size=(1, 3000, INPUTS)).astype(np.float32)
    compiled = compile_model(model, {"X": x}, hw, tmp_path)
    (ramp,) = compiled.image.manifest["ramps"]
    (tile,) = tiles(compiled)
    targets = ramp["gain"] * ramp["g_per_z"] * np.asarray(ramp["thresholds"])
    cal0, cal1 = ramp["calibration_rows"]
    ends = np.cumsum(ramp["step_devices"])
    reachable = _achievable_sums(cal1 - cal0, hw)
    moved = 0
    for seed in range(4):
        sim = Simulator(compiled.image, SimulatorOptions("noisy", seed=seed))
        column = sim.devices[ramp["array"]][:, ramp["bit_line"]]
        sign = ramp["offset_sign"]
        steps = np.cumsum([column[e - n:e].sum() for e, n in zip(ends, ramp["step_devices"])])
        uncalibrated = sign * column[cal0:cal1].sum() + steps
        wanted = sign * (sign * column[cal0:cal1].sum() + np.median(targets - uncalibrated))
        offset = sign * reachable[np.argmin(np.abs(reachable - wanted))]
        calibrated = offset + steps
        if reach == "within":
            assert abs(np.median(targets - calibrated)) <= delta_g(hw) / 2 + 1e-9
        else:
            assert wanted > (cal1 - cal0) * hw.device.g_max_us and abs(offset) == reachable.max()
            assert abs(np.median(targets - calibrated)) > delta_g(hw) / 2
        moved += abs(np.median(targets - uncalibrated)) > delta_g(hw) / 2

        # The column value from the same noisy devices.
        programmed = tile_weights(sim.devices[int(tile.attributes["array"])], tile)
        inputs = rnn_mvm_inputs(x)
        dac = 2 ** (hw.converters.dac_bits - 1) - 1
        scale = input_scale(tile, inputs.shape[-1])  # the bias input's 1 is the reference; x has its own segment scale
        xq = np.rint(np.clip(inputs / scale, -1, 1) * dac) / dac * scale
        z = xq @ programmed
        eps = 16 * np.finfo(np.float32).eps * (np.abs(xq) @ np.abs(programmed))
        thresholds = calibrated / (ramp["gain"] * ramp["g_per_z"])
        code = np.searchsorted(thresholds, z, side="right")
        clear = code == np.searchsorted(thresholds, z + eps, side="right")
        clear &= code == np.searchsorted(thresholds, z - eps, side="right")
        y = sim.run({"X": x})["Y"][0, 0]
        latched = np.abs(y[..., None] - np.asarray(ramp["output_levels"])).argmin(axis=-1)
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(latched[clear], code[clear])
    assert moved >= 1, "programming noise never moved the median ramp level: the test would not see calibration"
