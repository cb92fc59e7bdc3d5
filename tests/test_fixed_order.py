"""cimc.fixed_order.matmul: numpy's matmul shapes and types, float32 results as accurate as one rounding of a float64 sum."""

from __future__ import annotations

import numpy as np
import pytest

from cimc import fixed_order

SHAPES = [((5, 7), (7, 3)), ((7,), (7, 3)), ((5, 7), (7,)), ((7,), (7,)), ((2, 4, 5, 7), (7, 3)),
          ((2, 5, 7), (2, 7, 3)), ((7,), (2, 7, 3)), ((0, 7), (7, 3)), ((3, 0), (0, 4))]


@pytest.mark.parametrize(("shape_a", "shape_b"), SHAPES)
def test_matches_numpy_shapes_and_float32_values(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape_a) * 10 + len(shape_b))
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b).astype(np.float32)
    got = fixed_order.matmul(a, b)
    reference = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == np.matmul(a, b).shape and got.dtype == np.float32
    # float32 x float32 products are exact in float64; two float64 sums of K <= 7 terms differ by at most
    # 2 K eps64 sum|a b|, far below half a float32 ulp unless the sum lies within that of a rounding boundary,
    # so the result is the float64 reference rounded to float32 up to one float32 ulp.
    spacing = np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got.astype(np.float64) - reference) <= spacing)


def test_float64_sum_is_sequential_and_exact_on_integers() -> None:
    # Integers below 2^53 add exactly in any order, so the result must equal the integer product exactly.
    rng = np.random.default_rng(0)
    a, b = rng.integers(-1000, 1000, (6, 50)), rng.integers(-1000, 1000, (50, 9))
    assert np.array_equal(fixed_order.matmul(a.astype(np.float64), b.astype(np.float64)), (a @ b).astype(np.float64))


def test_chunked_rows_agree_with_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((37, 11)), rng.standard_normal((11, 5))
    whole = fixed_order.matmul(a, b)
    monkeypatch.setattr(fixed_order, "_CHUNK_ELEMENTS", 11 * 5 * 4)  # 4 rows per chunk
    assert np.array_equal(fixed_order.matmul(a, b), whole)


def test_integer_operands_keep_numpy_semantics() -> None:
    a, b = np.arange(6).reshape(2, 3), np.arange(12).reshape(3, 4)
    got = fixed_order.matmul(a, b)
    assert got.dtype == (a @ b).dtype and np.array_equal(got, a @ b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resumable_vecmat_is_the_full_product_bit_for_bit(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed from an earlier record, over float32 weights widened chunk by chunk, or over |w| taken chunk by
    chunk (``absolute``): every variant gives the bits of ``matmul`` over a float64 copy of the (absolute) weights."""
    monkeypatch.setattr(fixed_order, "_CHUNK_ELEMENTS", 24)  # several chunks of K
    rng = np.random.default_rng(3)
    w = rng.standard_normal((37, 5)).astype(dtype)
    x0 = rng.standard_normal(37)
    x1 = x0.copy()
    x1[20:] = rng.standard_normal(17)  # the first 20 rows unchanged: the product resumes from there
    for absolute, reference_weights in ((False, w), (True, np.abs(w))):
        full = fixed_order.matmul(x1, reference_weights.astype(np.float64))
        _, record = fixed_order.resumable_vecmat(x0, w, absolute=absolute)
        resumed, _ = fixed_order.resumable_vecmat(x1, w, record, absolute=absolute)
        fresh, _ = fixed_order.resumable_vecmat(x1, w, absolute=absolute)
        assert resumed.dtype == np.float64
        assert resumed.tobytes() == fresh.tobytes() == full.tobytes()


@pytest.mark.parametrize("columns", [2, 3, 5, 16])
def test_resumable_vecmat_columns_are_the_full_products_columns_bit_for_bit(columns: int,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A subset of the columns, fresh or resumed from a full product's record, plain or over |w|: the bits of those
    columns of ``resumable_vecmat`` (which the interval analysis then reads in place of the full product)."""
    monkeypatch.setattr(fixed_order, "_CHUNK_ELEMENTS", 6 * columns)  # several chunks of K
    rng = np.random.default_rng(columns)
    w = rng.standard_normal((41, columns)).astype(np.float32)
    x0 = rng.standard_normal(41)
    x1 = x0.copy()
    x1[19:] = rng.standard_normal(22)
    for absolute in (False, True):
        _, record = fixed_order.resumable_vecmat(x0, w, absolute=absolute)
        full, _ = fixed_order.resumable_vecmat(x1, w, record, absolute=absolute)
        for subset in (np.arange(columns), np.array([columns - 1]), rng.permutation(columns)[:max(1, columns // 2)]):
            for previous in (None, record):
                part = fixed_order.resumable_vecmat_columns(x1, w, subset, previous, absolute=absolute)
                assert part.tobytes() == full[subset].tobytes()
