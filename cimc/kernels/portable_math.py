"""exp, expm1, tanh and log1p in float64 that give the same bits on every CPU.

numpy evaluates these with SIMD code chosen at run time (AVX-512, AVX2, SSE,
NEON), each version accurate to an ulp or so but not to the same bits: with
AVX-512 disabled, float64 ``np.exp`` and ``np.log`` change in the last bit
for a fraction of inputs, and with AVX2 also disabled float32 ``np.exp`` and
``np.tanh`` do too. The compiler records numbers derived from these functions
(NL-ADC thresholds found by bisection on f(z), calibration ranges through
sigmoid and tanh), so they must not depend on the CPU.

Here every function is built only from operations IEEE 754 rounds correctly
(+, -, *, /), comparisons, ``rint`` and exact scaling by powers of two
(``ldexp``/``frexp``). Their results are therefore the same on any IEEE
machine, whatever the SIMD width (numpy applies each ufunc separately, so no
multiply-add is contracted into an FMA). Accuracy: the polynomial truncation
errors below are under 1e-17 relative; the evaluation adds a few roundings,
so results are within a few ulps of the true value (the tests check 4 ulps
against numpy over wide grids), far finer than any converter step.
"""

from __future__ import annotations

import numpy as np

_LN2_HI = 0.693147180369123816490  # ln 2 with its low 21 bits zero (fdlibm): k * _LN2_HI is exact for |k| < 2^21
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_EXP_MAX, _EXP_MIN = 709.782712893384, -745.1332191019412  # beyond these float64 exp is inf / 0


def _horner(x: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """sum_i c_i x^i, coefficients from the highest power down."""
    acc = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        acc = acc * x + c
    return acc


# Taylor coefficients 1/n!, highest first. exp(r) for |r| <= ln2/2 = 0.347: the first omitted term, r^14/14!,
# is below 4e-18. expm1(x) for |x| <= 0.5, x (1 + x/2! + ... + x^16/17!): omitted x^18/18! < 2e-22.
_INV_FACTORIALS = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(18))
_EXP_POLY = _INV_FACTORIALS[13::-1]
_EXPM1_POLY = _INV_FACTORIALS[17:0:-1]


def exp(x: np.ndarray) -> np.ndarray:
    """e^x: x = k ln2 + r (Cody-Waite, r within +-ln2/2), e^r by its Taylor polynomial, scaled by 2^k exactly."""
    x = np.asarray(x, np.float64)
    clipped = np.clip(x, _EXP_MIN - 1.0, _EXP_MAX + 1.0)
    k = np.rint(clipped / _LN2_HI)
    r = (clipped - k * _LN2_HI) - k * _LN2_LO
    out = np.ldexp(_horner(r, _EXP_POLY), k.astype(np.int32))
    out = np.where(x > _EXP_MAX, np.inf, np.where(x < _EXP_MIN, 0.0, out))
    return np.where(np.isnan(x), x, out)


def expm1(x: np.ndarray) -> np.ndarray:
    """e^x - 1 without cancellation near 0: its Taylor polynomial for |x| <= 0.5, else exp(x) - 1."""
    x = np.asarray(x, np.float64)
    small = np.abs(x) <= 0.5
    near = x * _horner(np.where(small, x, 0.0), _EXPM1_POLY)
    return np.where(small, near, exp(np.where(small, 0.0, x)) - 1.0)


def tanh(x: np.ndarray) -> np.ndarray:
    """tanh x = sign(x) e / (e + 2), e = expm1(2|x|) (exact algebra; expm1 keeps small |x| accurate)."""
    x = np.asarray(x, np.float64)
    e = expm1(2.0 * np.minimum(np.abs(x), 20.0))  # tanh(20) rounds to 1 in float64
    return np.copysign(e / (e + 2.0), x)


def log1p(x: np.ndarray) -> np.ndarray:
    """log(1 + x) for x > -1: with w = 1 + x rounded, log w (by frexp and atanh series) corrected by (x - (w - 1)) / w.

    log m for m in [sqrt(1/2), sqrt(2)) is 2 atanh(s), s = (m - 1)/(m + 1) within +-0.1716, by its series up to
    s^23 (omitted term below 1e-19 relative).
    """
    x = np.asarray(x, np.float64)
    w = 1.0 + x
    positive = w > 0
    safe = np.where(positive & np.isfinite(w), w, 1.0)
    m, e = np.frexp(safe)  # safe = m 2^e, m within [0.5, 1)
    low = m < np.sqrt(0.5)
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    series = 2.0 * s * _horner(s * s, tuple(1.0 / n for n in range(23, 0, -2)))
    log_w = (e * _LN2_HI + series) + e * _LN2_LO
    out = log_w + (x - (safe - 1.0)) / safe
    out = np.where(w == np.inf, np.inf, out)
    out = np.where(w == 0, -np.inf, np.where(w < 0, np.nan, out))
    return np.where(np.isnan(x), x, out)
