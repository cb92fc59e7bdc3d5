"""NL-ADC ramp synthesis: ideal thresholds, device quantisation, ratiometric codes, plots.

The reference numbers here are computed in the tests from the level definition
of ``docs/nl-adc.md`` §2 (y_k = f(z_lo) + k*D, thresholds where f crosses the
midpoints), not taken from ``cimc.ramp``.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from cimc.diagnostics import CimcError
from cimc.kernels.activations import Activation
from cimc.ramp import (
    Transfer,
    informative_range,
    linear_adc_codes,
    output_error_bound_lsb,
    synthesize_ramp,
)

G_MIN, G_MAX, LEVELS = 2.0, 100.0, 64
DELTA_G = (G_MAX - G_MIN) / (LEVELS - 1)
BITS = range(3, 9)

# (id, activation, clip, z_lo, z_hi): each monotonic on its range. ThresholdedRelu's
# jump at 0.5 is not a point of the 200,001-point error grid: exactly at a jump any
# threshold an ulp off would switch a whole jump's worth of codes.
FUNCTIONS = [
    ("sigmoid", Activation.create("Sigmoid"), None, -6.0, 6.0),
    ("tanh", Activation.create("Tanh"), None, -3.0, 3.0),
    ("hardsigmoid", Activation.create("HardSigmoid"), None, -3.0, 3.0),
    ("softsign", Activation.create("Softsign"), None, -4.0, 4.0),
    ("scaledtanh", Activation.create("ScaledTanh", 1.5, 0.8), None, -3.0, 3.0),
    ("affine", Activation.create("Affine", 0.7, 0.1), None, -2.0, 2.0),
    ("affine-decreasing", Activation.create("Affine", -0.7, 0.1), None, -2.0, 2.0),
    ("relu", Activation.create("Relu"), None, -1.0, 3.0),
    ("leakyrelu", Activation.create("LeakyRelu", 0.1), None, -2.0, 2.0),
    ("thresholdedrelu", Activation.create("ThresholdedRelu", 0.5), None, -1.0, 2.3),
    ("elu", Activation.create("Elu"), None, -3.0, 2.0),
    ("softplus", Activation.create("Softplus"), None, -4.0, 4.0),
    ("sigmoid-clip2", Activation.create("Sigmoid"), 2.0, -3.0, 3.0),
]
JUMPS = {"thresholdedrelu"}


def _transfer(case) -> Transfer:
    _, activation, clip, z_lo, z_hi = case
    return Transfer(activation, clip, z_lo, z_hi)


def _feasible_ramp(transfer: Transfer, bits: int, quantization: str):
    """A ramp whose g_per_z makes every step feasible, derived from the ideal step widths.

    The narrowest non-zero step gets 1.5 G_min, which leaves room for step 1 to
    absorb the offset's rounding; the widest then needs ceil(g*w_max/G_max)
    devices. The offset takes as many calibration devices as it needs.
    """
    ideal = synthesize_ramp(transfer, bits, 1.0, G_MIN, G_MAX, LEVELS, quantization="none")
    widths = np.diff(ideal.thresholds, prepend=transfer.z_lo)
    nonzero = widths[widths > 0]
    g = 1.5 * G_MIN / nonzero.min()
    calibration = max(5, math.ceil(abs(g * transfer.z_lo) / G_MAX))
    ramp = synthesize_ramp(transfer, bits, g, G_MIN, G_MAX, LEVELS, calibration, quantization)
    assert ramp.infeasible_steps == 0
    assert all(s.target_us >= G_MIN for s in ramp.steps if s.target_us > 0)
    assert max(len(s.device_us) for s in ramp.steps) == math.ceil(g * nonzero.max() / G_MAX)
    return ramp


def _slope_bound(ramp, pick, radius_us=None) -> float:  # noqa: ANN001
    """0.5 + max_k (pick of |f'| on the worse side of T_k, within r_k) * r_k / |D|.

    r_k = radius_us / g (default ΔG/2 for every level). With pick = max this is
    the max|f'| * r form of the bound; with a per-side min it is a lower bound of
    what the realized levels allow. The slopes are secants on a 65-point grid of
    each side's window, a different computation from the bound's own (f at the
    window ends).
    """
    f = ramp.transfer
    radii = np.broadcast_to(DELTA_G / 2 if radius_us is None else radius_us, ramp.thresholds.shape) / ramp.g_per_z
    d = abs(ramp.levels_y[1] - ramp.levels_y[0])
    worst = 0.0
    for t, r in zip(ramp.thresholds, radii):
        for a, b in ((max(t - r, f.z_lo), t), (t, min(t + r, f.z_hi))):
            if b > a:
                z = np.linspace(a, b, 65)
                worst = max(worst, float(pick(np.abs(np.diff(f(z)) / np.diff(z)))) * (b - a))
    return 0.5 + worst / d


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_ideal_devices_reach_half_lsb(case, bits):
    ramp = synthesize_ramp(_transfer(case), bits, 10.0, G_MIN, G_MAX, LEVELS, quantization="none")
    assert len(ramp.steps) == len(ramp.thresholds) == 2**bits - 1
    assert np.all(np.diff(ramp.thresholds) >= 0)
    # Ideal devices realize the ideal thresholds: offset + cumulative steps = g T_k.
    np.testing.assert_allclose(ramp.realized_thresholds, ramp.thresholds, rtol=1e-12, atol=1e-12)
    # The ideal N-bit quantizer's worst error is half an LSB, reached next to every threshold:
    # the dense grid (spacing (z_hi - z_lo)/200000) comes within 0.01 LSB of it.
    error = ramp.max_output_error_lsb()
    assert 0.49 <= error <= 0.5 + 1e-9, f"{ramp.transfer.name} {bits}-bit: {error} LSB"
    # The bound is tight for ideal devices: it covers the measured error with less than 0.01 LSB to spare.
    assert error <= output_error_bound_lsb(ramp) + 1e-9 <= error + 0.01


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_cumulative_quantisation_within_bound(case, bits):
    ramp = _feasible_ramp(_transfer(case), bits, "cumulative")
    # Premise of the bound: every realised level within ΔG/2 of g*T_k.
    deviation = np.abs(ramp.ramp_levels_us - ramp.g_per_z * ramp.thresholds)
    assert deviation.max() <= DELTA_G / 2 * (1 + 1e-9)
    bound = output_error_bound_lsb(ramp)
    measured = ramp.max_output_error_lsb()
    assert measured <= bound + 1e-9, f"{ramp.transfer.name} {bits}-bit: {measured} > bound {bound} LSB"
    if case[0] not in JUMPS:
        # For continuous f the bound lies between 0.5 + (slowest) and 0.5 + (steepest) slope within
        # ΔG/(2g) of the thresholds, times ΔG/(2g)/|D| (mean value theorem on each side of T_k).
        assert _slope_bound(ramp, np.min) - 1e-9 <= bound <= _slope_bound(ramp, np.max) + 1e-9
        # INL in LSB: f(T'_k) - f(T_k) with f(T_k) the midpoint, no more than the bound allows beyond 0.5.
        assert np.abs(ramp.inl_lsb).max() <= bound - 0.5 + 1e-9


def test_inl_and_dnl_are_in_output_lsb():
    """INL_k = (f(T'_k) - f(T_k))/|D|, T'_k rebuilt from the step devices; DNL = its first difference.

    A 6-bit-device sigmoid ramp at g = 10 uS per unit: ΔG/(2g) = 0.078 in z,
    which moves f by a sizeable fraction of the 5-bit LSB (1/31 of the range).
    """
    transfer = Transfer(Activation.create("Sigmoid"), None, -6.0, 6.0)
    ramp = synthesize_ramp(transfer, 5, 10.0, G_MIN, G_MAX, LEVELS, quantization="stepwise")
    levels = ramp.offset_us + np.cumsum([sum(step.device_us) for step in ramp.steps])
    lsb = (transfer(np.float64(6.0)) - transfer(np.float64(-6.0))) / 31
    inl = (transfer(levels / 10.0) - transfer(ramp.thresholds)) / lsb
    np.testing.assert_allclose(ramp.inl_lsb, inl, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ramp.dnl_lsb, np.diff(inl), rtol=1e-9, atol=1e-12)
    assert np.abs(inl).max() > 0.05


def test_cumulative_beats_stepwise_on_inl():
    rows = []
    for name, lo, hi in (("Sigmoid", -6.0, 6.0), ("Softsign", -4.0, 4.0), ("Elu", -3.0, 2.0), ("Softplus", -4.0, 4.0)):
        transfer = Transfer(Activation.create(name), None, lo, hi)
        for bits in (5, 6, 7, 8):
            cumulative = np.abs(_feasible_ramp(transfer, bits, "cumulative").inl_lsb).max()
            stepwise = np.abs(_feasible_ramp(transfer, bits, "stepwise").inl_lsb).max()
            rows.append((name, bits, cumulative, stepwise))
    table = "; ".join(f"{n} {b}-bit: cumulative {c:.3f} vs stepwise {s:.3f} LSB" for n, b, c, s in rows)
    assert all(c < s for _, _, c, s in rows), f"max |INL| at 6-bit conductance levels: {table}"


def test_stepwise_bound_grows_along_the_ramp():
    ramp = _feasible_ramp(Transfer(Activation.create("Sigmoid"), None, -6.0, 6.0), 6, "stepwise")
    measured = ramp.max_output_error_lsb()
    bound = output_error_bound_lsb(ramp)
    assert 0.5 < measured <= bound + 1e-9
    # After j independent roundings (the offset's, then one per step) a level is within j ΔG/2.
    roundings = 1 + np.arange(1, len(ramp.steps) + 1)
    assert bound <= _slope_bound(ramp, np.max, roundings * DELTA_G / 2) + 1e-9


def test_ratiometric_codes_ignore_vread_while_a_fixed_reference_adc_drifts():
    """Codes against currents, checked against thresholds computed here from the ramp's devices.

    The ramp's levels are rebuilt from its device conductances (offset plus the
    running sum of every step's devices), so the expected code of z is the
    number of levels at or below g z, a count with no voltage in it. ``codes``
    must give it at 0.15, 0.2 and 0.25 V; with a ramp supply of its own at
    0.25 V while the column reads at 0.2 V, the expected code is the count of
    levels at or below 0.8 g z, which differs for a predictable set of z.
    """
    transfer = Transfer(Activation.create("Sigmoid"), None, -6.0, 6.0)
    ramp = synthesize_ramp(transfer, 5, 40.0, G_MIN, G_MAX, LEVELS)
    levels = ramp.offset_us + np.cumsum([sum(step.device_us) for step in ramp.steps])
    z = np.linspace(-7.0, 7.0, 4001)
    # Float rounding of V*G decides only at a level itself: keep z away from the levels (in both comparisons).
    distance = np.min(np.abs(40.0 * z[:, None] - levels[None, :]), axis=1)
    z = z[(distance > 1e-6) & (np.min(np.abs(32.0 * z[:, None] - levels[None, :]), axis=1) > 1e-6)]
    expected = np.count_nonzero(levels[None, :] <= 40.0 * z[:, None], axis=1)
    for vread in (0.15, 0.2, 0.25):
        np.testing.assert_array_equal(ramp.codes(z, vread), expected)
    separate = np.count_nonzero(levels[None, :] <= 0.2 / 0.25 * 40.0 * z[:, None], axis=1)
    np.testing.assert_array_equal(ramp.codes(z, 0.2, ramp_vread=0.25), separate)
    assert np.count_nonzero(separate != expected) > len(z) // 10

    linear = {v: linear_adc_codes(z, 5, -6.0, 6.0, v, 0.2, 40.0) for v in (0.15, 0.2, 0.25)}
    step = 12.0 / 31
    for vread, codes in linear.items():
        # References fixed at 0.2 V: the column at V reads as if z were V/0.2 times larger.
        np.testing.assert_array_equal(codes, np.clip(np.floor((vread / 0.2 * z + 6.0) / step + 0.5), 0, 31))
    for vread in (0.15, 0.25):
        changed = np.count_nonzero(linear[vread] != linear[0.2])
        assert changed > len(z) // 10, f"linear ADC at {vread} V changed only {changed} of {len(z)} codes"


@pytest.mark.parametrize(
    ("activation", "z_lo", "z_hi"),
    [
        (Activation.create("LeakyRelu", -0.5), -2.0, 2.0),
        (Activation.create("Elu", -1.0), -2.0, 2.0),
        (Activation.create("ThresholdedRelu", -0.5), -1.0, 1.0),
    ],
    ids=["leakyrelu-negative-alpha", "elu-negative-alpha", "thresholdedrelu-negative-alpha"],
)
def test_non_monotonic_function_is_rejected(activation, z_lo, z_hi):
    transfer = Transfer(activation, None, z_lo, z_hi)
    with pytest.raises(CimcError, match="not monotonic") as caught:
        synthesize_ramp(transfer, 5, 10.0, G_MIN, G_MAX, LEVELS)
    message = str(caught.value)
    assert f"alpha={activation.alpha:g}" in message and f"[{z_lo:g}, {z_hi:g}]" in message


@pytest.mark.parametrize(
    ("activation", "clip", "z_lo", "z_hi"),
    [
        (Activation.create("Relu"), None, -3.0, -1.0),
        (Activation.create("Affine", 0.0, 0.3), None, -1.0, 1.0),
        (Activation.create("Sigmoid"), 1.0, 2.0, 3.0),
        # 1e-14 * z on 100: its changes are single float steps of 100 (1.4e-14), below 64 ulps of 100.
        (Activation.create("Affine", 1e-14, 100.0), None, -1.0, 1.0),
    ],
    ids=["relu-negative-range", "affine-zero-slope", "sigmoid-beyond-clip", "affine-float-noise"],
)
def test_constant_function_is_rejected(activation, clip, z_lo, z_hi):
    with pytest.raises(CimcError, match="is constant"):
        Transfer(activation, clip, z_lo, z_hi).direction()


@pytest.mark.parametrize("name", ["Relu", "Sigmoid", "Softplus", "Softsign", "Tanh"])
def test_parameter_free_activations_fall_only_by_float_noise(name):
    """The premise of deciding these functions' direction from the ends of the range (cimc.ramp._direction): their
    portable implementations fall nowhere by more than 8 ulps of the largest |f| around (the grid ignores 64), on
    dense grids across the saturated tails, around 0 and float step by float step where formulas switch."""
    act = Activation.create(name)
    grids = [np.linspace(-60.0, 60.0, 2_000_001), np.linspace(-1e-6, 1e-6, 200_001)]
    grids += [c + np.arange(-1000, 1001) * np.spacing(c) for c in (0.5, 1.0, 2.0, 19.0, 20.0, 36.0)]
    for z in grids:
        z = np.unique(np.concatenate([z, -z]))
        y = act.portable(z)
        scale = np.maximum(np.abs(y[:-1]), np.abs(y[1:]))
        assert np.all(np.diff(y) >= -8 * np.finfo(np.float64).eps * scale), name


@pytest.mark.parametrize("name", ["Relu", "Sigmoid", "Softplus", "Softsign", "Tanh"])
@pytest.mark.parametrize("clip", [None, 2.5])
@pytest.mark.parametrize(("z_lo", "z_hi"), [(-6.0, 6.0), (0.3, 0.7), (-3.0, -1.0), (30.0, 40.0), (-1e-9, 1e-9)])
def test_end_point_direction_is_the_dense_grid_answer(name, clip, z_lo, z_hi):
    """Transfer.direction of a non-decreasing function (decided from the ends where that is safe) against the rule on
    the 20,001-point grid, written out here: constant (refused) where max - min is within 64 ulps of max |f|, else
    +1 (these functions never fall by more than float noise; where no single step rises beyond it, as in a flat
    tail, the net change f(z_hi) - f(z_lo) > 0 still says they rise)."""
    transfer = Transfer(Activation.create(name), clip, z_lo, z_hi)
    y = transfer(np.linspace(z_lo, z_hi, 20_001))
    noise = 64.0 * np.finfo(np.float64).eps * float(np.max(np.abs(y)))
    assert not (np.diff(y) < -noise).any()
    if float(y.max() - y.min()) <= noise:
        with pytest.raises(CimcError, match="is constant"):
            transfer.direction()
    else:
        assert transfer.direction() == 1


@pytest.mark.parametrize(("name", "z_lo", "z_hi"), [("Sigmoid", 30.0, 40.0), ("Tanh", 15.0, 25.0)])
def test_flat_tail_keeps_the_direction_of_its_net_change(name, z_lo, z_hi):
    """No grid step of these tails rises beyond the noise, but the function is not constant there: it still rises.
    (The grid rule once answered -1 for them.)"""
    transfer = Transfer(Activation.create(name), None, z_lo, z_hi)
    y = transfer(np.linspace(z_lo, z_hi, 20_001))
    noise = 64.0 * np.finfo(np.float64).eps * float(np.max(np.abs(y)))
    assert y.max() - y.min() > noise and not (np.abs(np.diff(y)) > noise).any()  # the case this test is about
    assert transfer.direction() == 1
    flipped = Transfer(Activation.create("Affine", -1.0, 0.0), None, z_lo, z_hi)
    assert flipped.direction() == -1


def test_decreasing_function_has_increasing_thresholds():
    transfer = Transfer(Activation.create("Affine", -0.7, 0.1), None, -2.0, 2.0)
    assert transfer.direction() == -1
    assert Transfer(Activation.create("Affine", 0.7, 0.1), None, -2.0, 2.0).direction() == 1
    ramp = synthesize_ramp(transfer, 4, 10.0, G_MIN, G_MAX, LEVELS, quantization="none")
    assert np.all(np.diff(ramp.thresholds) > 0) and np.all(np.diff(ramp.levels_y) < 0)
    np.testing.assert_array_equal(ramp.ideal_codes([-2.0, 2.0]), [0, 15])
    np.testing.assert_allclose(ramp.outputs(ramp.ideal_codes([-2.0, 2.0])), [1.5, -1.3])


def test_names():
    assert Transfer(Activation.create("sigmoid"), None, -1, 1).name == "Sigmoid"
    assert Transfer(Activation.create("LeakyRelu", 0.1), None, -1, 1).name == "LeakyRelu(alpha=0.1)"
    assert Transfer(Activation.create("Tanh"), 3.0, -1, 1).name == "Tanh∘clip(3)"
    assert Transfer(Activation.create("ScaledTanh", 1.5, 0.8), None, -1, 1).name == "ScaledTanh(alpha=1.5, beta=0.8)"


def test_wide_steps_take_two_devices_and_narrow_steps_are_infeasible():
    g_min = 20.0
    delta_g = (G_MAX - g_min) / (LEVELS - 1)
    transfer = Transfer(Activation.create("Sigmoid"), None, -5.0, 5.0)
    ideal = synthesize_ramp(transfer, 5, 1.0, g_min, G_MAX, LEVELS, quantization="none")
    widths = np.diff(ideal.thresholds, prepend=-5.0)
    g = 1.2 * G_MAX / widths.max()
    assert g * widths.min() < g_min  # this g forces both cases
    for quantization in ("cumulative", "stepwise"):
        ramp = synthesize_ramp(transfer, 5, g, g_min, G_MAX, LEVELS, quantization=quantization)
        assert ramp.two_device_steps >= 1 and ramp.infeasible_steps >= 1
        for step in ramp.steps:
            # Cumulative tracking may leave a narrow step's device unselected (0 uS) where that is nearer.
            skipped = quantization == "cumulative" and not step.feasible and not step.device_us
            assert skipped or len(step.device_us) == max(1, math.ceil(step.target_us / G_MAX))
            assert step.feasible == (step.target_us >= g_min)
            assert len(step.device_levels) == len(step.device_us)
            assert skipped or max(step.device_levels) - min(step.device_levels) <= 1  # spread evenly
            for level, us in zip(step.device_levels, step.device_us):
                assert 0 <= level < LEVELS and us == pytest.approx(g_min + level * delta_g)
        assert ramp.rows == sum(len(s.device_us) for s in ramp.steps) + 5
    stepwise = ramp
    assert all(s.device_levels == (0,) for s in stepwise.steps if not s.feasible)
    # Cumulative: every level within max(dG, G_min)/2 of its target, so the bound holds with that radius.
    cumulative = synthesize_ramp(transfer, 5, g, g_min, G_MAX, LEVELS)
    assert np.abs(cumulative.ramp_levels_us - g * cumulative.thresholds).max() <= g_min / 2 * (1 + 1e-9)
    assert cumulative.max_output_error_lsb() <= output_error_bound_lsb(cumulative) + 1e-9


def test_jump_gives_zero_width_steps_without_devices():
    transfer = Transfer(Activation.create("ThresholdedRelu", 0.5), None, -1.0, 2.3)
    ramp = synthesize_ramp(transfer, 5, 40.0, G_MIN, G_MAX, LEVELS)
    # f jumps from 0 to 0.5 at z = 0.5, past the midpoints of levels 1..7 (D = 2.3/31).
    jump = int(np.floor(0.5 / (2.3 / 31) + 0.5))
    assert np.all(ramp.thresholds[:jump] == ramp.thresholds[0])
    assert ramp.thresholds[0] == pytest.approx(0.5, abs=1e-12) and ramp.thresholds[jump] > 0.5
    zero = [s for s in ramp.steps if s.target_us == 0]
    assert len(zero) == jump - 1 and all(s.device_us == () and s.feasible for s in zero)


def test_offset_needing_more_calibration_devices_raises():
    transfer = Transfer(Activation.create("Sigmoid"), None, -6.0, 6.0)
    with pytest.raises(CimcError, match="needs 6 calibration devices.*only 5"):
        synthesize_ramp(transfer, 5, 90.0, G_MIN, G_MAX, LEVELS)
    ramp = synthesize_ramp(transfer, 5, 90.0, G_MIN, G_MAX, LEVELS, calibration_devices=6)
    assert len(ramp.offset_levels) == 6 and ramp.offset_us < 0
    assert abs(ramp.offset_us - ramp.offset_target_us) <= DELTA_G / 2
    zero_offset = synthesize_ramp(Transfer(Activation.create("Relu"), None, 0.0, 3.0), 4, 40.0, G_MIN, G_MAX, LEVELS)
    assert zero_offset.offset_levels == () and zero_offset.offset_us == 0.0
    assert zero_offset.rows == sum(len(s.device_us) for s in zero_offset.steps) + 5


def test_smallest_valid_device_and_calibration_settings_are_accepted():
    """Two programmable levels (on/off) and no calibration device at all are valid hardware for a ramp from 0."""
    transfer = Transfer(Activation.create("Relu"), None, 0.0, 3.0)
    ramp = synthesize_ramp(transfer, 3, 40.0, G_MIN, G_MAX, 2, calibration_devices=0)
    assert ramp.levels == 2 and ramp.calibration_devices == 0 and ramp.offset_us == 0.0
    assert all(set(s.device_levels) <= {0, 1} for s in ramp.steps)


def test_informative_range_is_the_changing_part_plus_one_code_each_side():
    """Sigmoid 5-bit on [-100, 100]: codes change between T_1 and T_31 (closed form logit of the
    midpoints); the range kept is [T_1 - (T_2 - T_1), T_31 + (T_31 - T_30)]. A range already inside is kept."""
    wide = Transfer(Activation.create("Sigmoid"), None, -100.0, 100.0)
    y0, y_hi = 1 / (1 + math.exp(100.0)), 1 / (1 + math.exp(-100.0))
    p = y0 + (np.arange(1, 32) - 0.5) * (y_hi - y0) / 31
    t = np.log(p) - np.log1p(-p)
    narrowed = informative_range(wide, 5)
    assert narrowed.z_lo == pytest.approx(t[0] - (t[1] - t[0]), abs=1e-9)
    assert narrowed.z_hi == pytest.approx(t[-1] + (t[-1] - t[-2]), abs=1e-9)
    inside = Transfer(Activation.create("Sigmoid"), None, -2.0, 2.0)
    assert (informative_range(inside, 5).z_lo, informative_range(inside, 5).z_hi) == (-2.0, 2.0)


def test_closed_form_sigmoid_thresholds():
    transfer = Transfer(Activation.create("Sigmoid"), None, -12.0, 12.0)
    ramp = synthesize_ramp(transfer, 5, 10.0, G_MIN, G_MAX, LEVELS, quantization="none")
    y0, y_hi = 1 / (1 + math.exp(12.0)), 1 / (1 + math.exp(-12.0))
    d = (y_hi - y0) / 31
    p = np.array([y0 + (k - 0.5) * d for k in range(1, 32)])
    expected = np.log(p) - np.log1p(-p)
    np.testing.assert_allclose(ramp.thresholds, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ramp.levels_y, y0 + np.arange(32) * d, rtol=0, atol=1e-15)
    assert ramp.thresholds[0] == pytest.approx(-4.11, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 0}, "bits"),
        ({"bits": 13}, "bits"),
        ({"g_per_z": 0.0}, "g_per_z"),
        ({"g_min_us": 100.0}, "G_min < G_max"),
        ({"g_min_us": -1.0}, "G_min < G_max"),
        ({"levels": 1}, "levels"),
        ({"quantization": "dither"}, "quantization"),
        ({"calibration_devices": -1}, "calibration_devices"),
    ],
)
def test_argument_validation(kwargs, match):
    arguments = {"bits": 5, "g_per_z": 10.0, "g_min_us": G_MIN, "g_max_us": G_MAX, "levels": LEVELS} | kwargs
    transfer = Transfer(Activation.create("Tanh"), None, -3.0, 3.0)
    with pytest.raises(CimcError, match=match):
        synthesize_ramp(transfer, **arguments)


def test_transfer_validation():
    with pytest.raises(CimcError, match="z_lo < z_hi"):
        Transfer(Activation.create("Tanh"), None, 1.0, 1.0)
    with pytest.raises(CimcError, match="clip"):
        Transfer(Activation.create("Tanh"), -1.0, -1.0, 1.0)
    with pytest.raises(CimcError, match="clip"):
        Transfer(Activation.create("Tanh"), 0.0, -1.0, 1.0)
    with pytest.raises(CimcError, match="z_lo < z_hi"):
        linear_adc_codes(np.zeros(3), 5, 1.0, 1.0, 0.2, 0.2, 40.0)
    one_bit = synthesize_ramp(Transfer(Activation.create("Tanh"), None, -3.0, 3.0), 1, 10.0, G_MIN, G_MAX, LEVELS)
    assert one_bit.thresholds.tolist() == [pytest.approx(0.0, abs=1e-12)] and one_bit.levels_y.size == 2
    ramp = synthesize_ramp(Transfer(Activation.create("Tanh"), None, -3.0, 3.0), 3, 10.0, G_MIN, G_MAX, LEVELS)
    with pytest.raises(CimcError, match="vread"):
        ramp.codes([0.0], vread=0.0)


def _plot_ramp():
    transfer = Transfer(Activation.create("Sigmoid"), None, -5.0, 5.0)
    return synthesize_ramp(transfer, 5, 1.2 * G_MAX / 1.23, 20.0, G_MAX, LEVELS, quantization="stepwise")


@pytest.mark.parametrize("function", ["plot_transfer", "plot_ramp_conductances"])
def test_plots_are_deterministic_png(tmp_path, function):
    pytest.importorskip("matplotlib")
    from cimc import plots

    draw = getattr(plots, function)
    draw(_plot_ramp(), tmp_path / "a.png")
    draw(_plot_ramp(), tmp_path / "b.png")
    first, second = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary left


def test_plots_without_matplotlib_say_how_to_install(tmp_path, monkeypatch):
    from cimc import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(CimcError, match=r"pip install 'cimc\[plots\]'"):
        plots.plot_transfer(_plot_ramp(), tmp_path / "a.png")
    assert not list(tmp_path.iterdir())
