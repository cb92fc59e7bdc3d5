"""cimc.kernels.portable_math against numpy, and Activation.portable against Activation.

Tolerance: each portable function is a polynomial whose truncation error is
below 1e-17 relative, evaluated with about ten correctly rounded operations
(each up to half an ulp), and numpy's own functions are within an ulp or so of
the true value; 4 ulps of the result covers both with room, and a real bug
(a wrong coefficient or reduction) is off by far more.
"""

from __future__ import annotations

import numpy as np
import pytest

from cimc.kernels import portable_math
from cimc.kernels.activations import SUPPORTED, Activation

ULPS = 4
RNG = np.random.default_rng(0)
GRID = np.concatenate([RNG.standard_normal(20000) * 5, RNG.uniform(-745, 709, 5000), RNG.standard_normal(5000) * 1e-4,
                       [0.0, -0.0, 1e-310, -1e-310, 0.5, -0.5, 709.7, -745.0]])


def _within_ulps(got: np.ndarray, expected: np.ndarray) -> bool:
    finite = np.isfinite(expected) & (expected != 0)
    if not np.array_equal(got[~finite], expected[~finite]):
        return False
    return bool(np.all(np.abs(got[finite] - expected[finite]) <= ULPS * np.spacing(np.abs(expected[finite]))))


@pytest.mark.parametrize("name", ["exp", "expm1", "tanh"])
def test_agrees_with_numpy(name: str) -> None:
    assert _within_ulps(getattr(portable_math, name)(GRID), getattr(np, name)(GRID))


def test_log1p_agrees_with_numpy() -> None:
    x = np.concatenate([np.abs(GRID), RNG.uniform(-1, 0, 5000), [-0.5, 1e-300, 1e300]])
    assert _within_ulps(portable_math.log1p(x), np.log1p(x))


def test_special_values() -> None:
    special = np.array([np.inf, -np.inf, np.nan, 800.0, -800.0])
    with np.errstate(all="ignore"):
        for name in ("exp", "expm1", "tanh"):
            assert np.array_equal(getattr(portable_math, name)(special), getattr(np, name)(special), equal_nan=True), name
        assert np.array_equal(portable_math.log1p(np.array([-1.0, -2.0, np.inf, np.nan])),
                              np.array([-np.inf, np.nan, np.inf, np.nan]), equal_nan=True)
    assert np.signbit(portable_math.tanh(np.array([-0.0])))[0]


@pytest.mark.parametrize("name", SUPPORTED)
def test_portable_activation_agrees_with_numpy_one(name: str) -> None:
    act = Activation.create(name, 0.3 if Activation.create(name).alpha is not None else None,
                            0.6 if Activation.create(name).beta is not None else None)
    x = RNG.standard_normal(5000) * 6
    assert _within_ulps(act.portable(x), act(x))
    # float32 input: evaluated in float64 and rounded once, so within one float32 ulp of numpy's float64 value rounded
    # (a float32 evaluation would round a*x and a*x + b separately and lose more where they cancel).
    x32 = x.astype(np.float32)
    got = act.portable(x32)
    expected = act(x32.astype(np.float64)).astype(np.float32)
    assert got.dtype == np.float32
    assert np.all(np.abs(got.astype(np.float64) - expected) <= np.spacing(np.abs(expected)).astype(np.float64))
