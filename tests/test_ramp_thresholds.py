"""NL-ADC thresholds against their closed form, and the ramp gain over three decades of weight scale.

Closed form (docs/nl-adc.md §2): with y_k = f(z_lo) + k D, D = (f(z_hi) - f(z_lo)) / (2^N - 1),
the k-th decision threshold is T_k = f^-1((y_(k-1) + y_k) / 2). The inverses below are
written out analytically here (logit, atanh, ...), not taken from cimc.

Tolerance 1e-9 in z: cimc finds T_k by bisection down to 2 ulp of the range end, and
evaluating f in float64 adds at most a few ulp of f divided by f'(T_k); over these ranges
that is below 1e-12. 1e-9 is far below any step (the narrowest, 8-bit tanh near 0, is
about 4e-3 wide), so a wrong threshold formula, a wrong midpoint or an off-by-one in k
cannot pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.diagnostics import CimcError
from cimc.hardware import load_hardware
from cimc.kernels.activations import Activation
from cimc.ramp import Transfer, ideal_levels, informative_range, output_error_bound_lsb, synthesize_with_gain

ATOL = 1e-9


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _relu_like(alpha):
    """Inverse of z -> z (z >= 0), alpha z (z < 0)."""
    return lambda y: np.where(y >= 0, y, y / alpha)


# (id, activation, clip, z_lo, z_hi, f, f^-1): f written out here too, so y_k does not come from cimc either.
CASES = [
    ("sigmoid", Activation.create("Sigmoid"), None, -8.0, 8.0, lambda z: 1 / (1 + np.exp(-z)), _logit),
    ("tanh", Activation.create("Tanh"), None, -3.0, 3.0, np.tanh, np.arctanh),
    ("hardsigmoid", Activation.create("HardSigmoid", 0.2, 0.5), None, -2.0, 2.0,
     lambda z: np.clip(0.2 * z + 0.5, 0, 1), lambda y: (y - 0.5) / 0.2),
    ("softsign", Activation.create("Softsign"), None, -4.0, 4.0, lambda z: z / (1 + np.abs(z)),
     lambda y: y / (1 - np.abs(y))),
    ("scaledtanh", Activation.create("ScaledTanh", 1.5, 0.8), None, -3.0, 3.0, lambda z: 1.5 * np.tanh(0.8 * z),
     lambda y: np.arctanh(y / 1.5) / 0.8),
    ("affine-decreasing", Activation.create("Affine", -0.7, 0.1), None, -2.0, 2.0, lambda z: -0.7 * z + 0.1,
     lambda y: (y - 0.1) / -0.7),
    ("relu", Activation.create("Relu"), None, -1.0, 3.0, lambda z: np.maximum(z, 0), lambda y: y),
    ("leakyrelu", Activation.create("LeakyRelu", 0.1), None, -2.0, 2.0, lambda z: np.where(z >= 0, z, 0.1 * z),
     _relu_like(0.1)),
    ("elu", Activation.create("Elu", 1.0), None, -3.0, 2.0, lambda z: np.where(z >= 0, z, np.expm1(np.minimum(z, 0))),
     lambda y: np.where(y >= 0, y, np.log1p(np.maximum(y, -1 + 1e-300)))),
    ("softplus", Activation.create("Softplus"), None, -4.0, 4.0, lambda z: np.log1p(np.exp(z)), lambda y: np.log(np.expm1(y))),
    ("sigmoid-clip2", Activation.create("Sigmoid"), 2.0, -3.0, 3.0, lambda z: 1 / (1 + np.exp(-np.clip(z, -2, 2))), _logit),
    # The Clip forms of lift-activation: ReLU6 = Relu∘clip(6), hard tanh = Affine(1, 0)∘clip(1).
    ("relu6", Activation.create("Relu"), 6.0, -1.0, 7.0, lambda z: np.clip(z, 0, 6), lambda y: y),
    ("hardtanh", Activation.create("Affine", 1.0, 0.0), 1.0, -1.5, 1.5, lambda z: np.clip(z, -1, 1), lambda y: y),
]


@pytest.mark.parametrize("bits", range(3, 9))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_thresholds_match_the_closed_form(case, bits):
    _, activation, clip, z_lo, z_hi, f, inverse = case
    levels_y, thresholds = ideal_levels(Transfer(activation, clip, z_lo, z_hi), bits)
    count = 2**bits
    y0, y1 = float(f(np.float64(z_lo))), float(f(np.float64(z_hi)))
    d = (y1 - y0) / (count - 1)
    expected_levels = y0 + np.arange(count) * d
    midpoints = (expected_levels[:-1] + expected_levels[1:]) / 2
    np.testing.assert_allclose(levels_y, expected_levels, rtol=0, atol=1e-12)
    np.testing.assert_allclose(thresholds, inverse(midpoints), rtol=0, atol=ATOL)


HW = load_hardware()
G_MIN, G_MAX, LEVELS = HW.device.g_min_us, HW.device.g_max_us, HW.device.levels
DELTA_G = (G_MAX - G_MIN) / (LEVELS - 1)
GAINS = HW.converters.ramp_gains
CAL = HW.converters.ramp_calibration_devices


@settings(max_examples=80, deadline=None)
@given(log_g=st.floats(math.log10(2.0), math.log10(2000.0)), function=st.sampled_from(["Sigmoid", "Tanh"]),
       bits=st.integers(3, 5), half_width=st.floats(1.0, 12.0))
def test_ramp_is_realized_over_three_decades_of_weight_scale(log_g, function, bits, half_width):
    """g from 2 to 2000 uS per unit of z: some declared gain makes every step at least G_min wide.

    Why it must (defaults: G_min 2, G_max 100 uS, 5 calibration devices, gains 2^-5..2^5): a
    ramp needs a g >= L = G_min / w_min (w_min: its narrowest step) and a g <= U = 5 G_max / |z_lo|
    (the calibration devices place its start). For a 3-5-bit sigmoid or tanh on any range
    from +-1 to +-12 (narrowed to where codes change), L <= 53.2, U >= 95.4 and U / L >= 6.1
    (measured over that family when this test was written), so a power of two lies in every
    window, within the set whenever 2^-5 g <= U and 2^5 g >= L: g in [1.67, 3052]. (At 6 bits
    U / L >= 2.66 and g must lie in [3.4, 2690].) With every step feasible, cumulative
    tracking keeps each level within dG/2 of its target, so the output error stays within
    output_error_bound_lsb and the worst |INL| is at most dG / (2 G_min) LSB (0.39 at the
    defaults), both checked here.
    """
    g = 10.0**log_g
    transfer = informative_range(Transfer(Activation.create(function), None, -half_width, half_width), bits)
    ramp = synthesize_with_gain(transfer, bits, g, G_MIN, G_MAX, LEVELS, CAL, "cumulative", GAINS, HW.array.rows, 1.0)
    assert ramp.gain in GAINS
    assert ramp.infeasible_steps == 0
    assert (ramp.transfer.z_lo, ramp.transfer.z_hi) == (transfer.z_lo, transfer.z_hi)  # the range was not narrowed
    assert ramp.rows <= HW.array.rows
    assert np.abs(ramp.inl_lsb).max() <= DELTA_G / (2 * G_MIN) + 1e-9
    assert ramp.max_output_error_lsb(20_001) <= output_error_bound_lsb(ramp) + 1e-9
    # The largest gain that works was taken: every larger one starts the ramp beyond the
    # calibration devices or needs more rows than the array has (steps wider than G_max take more devices).
    widths = np.diff(ramp.thresholds, prepend=transfer.z_lo)
    for a in GAINS:
        if a > ramp.gain:
            rows = int(np.sum(np.maximum(1, np.ceil(a * g * widths / G_MAX)))) + CAL
            assert math.ceil(abs(a * g * transfer.z_lo) / G_MAX) > CAL or rows > HW.array.rows


def test_without_a_suitable_gain_the_limit_is_named():
    transfer = informative_range(Transfer(Activation.create("Sigmoid"), None, -8.0, 8.0), 5)
    with pytest.raises(CimcError, match=r"no ramp gain in 1 realizes the 5-bit ramp within max_inl = 1: .* narrower than G_min"):
        synthesize_with_gain(transfer, 5, 5.0, G_MIN, G_MAX, LEVELS, CAL, "cumulative", (1.0,), 128, 1.0)
    with pytest.raises(CimcError, match="the 6-bit ramp needs 68 rows; the array has 40"):
        synthesize_with_gain(informative_range(transfer, 6), 6, 40.0, G_MIN, G_MAX, LEVELS, CAL, "cumulative", (1.0,), 40, 1.0)


def test_gain_keeps_the_comparison_ratiometric():
    transfer = informative_range(Transfer(Activation.create("Tanh"), None, -4.0, 4.0), 5)
    ramp = synthesize_with_gain(transfer, 5, 3.0, G_MIN, G_MAX, LEVELS, CAL, "cumulative", GAINS, 128, 1.0)
    assert ramp.gain > 1  # 3 uS per unit of z alone cannot make tanh's 0.065-wide central steps
    z = np.linspace(-3.0, 3.0, 3001)
    z = z[np.min(np.abs(z[:, None] - ramp.realized_thresholds[None, :]), axis=1) > 1e-6]
    nominal = ramp.codes(z, 0.2)
    for vread in (0.15, 0.25):
        np.testing.assert_array_equal(ramp.codes(z, vread), nominal)
    # The realised thresholds are where a * g * z meets the ramp's levels.
    np.testing.assert_allclose(ramp.realized_thresholds * ramp.gain * 3.0, ramp.ramp_levels_us, rtol=1e-12)


@pytest.mark.parametrize(("value", "match"), [("[]", "non-empty list of positive"), ("[1.0, 0.0]", "non-empty list of positive"),
                                              ('"4"', "must be a list of numbers"), ("[true]", "must be a list of numbers")])
def test_hardware_ramp_gains_are_validated(tmp_path, value, match):
    path = tmp_path / "hw.toml"
    path.write_text(f"[converters]\nramp_gains = {value}\n")
    with pytest.raises(CimcError, match=match):
        load_hardware(path)
    path.write_text("[converters]\nramp_gains = [1, 3]\n")
    hw = load_hardware(path)
    assert hw.converters.ramp_gains == (1.0, 3.0) and "ramp_gains = [1.0, 3.0]" in hw.to_toml()
