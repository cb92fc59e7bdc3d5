"""Matrix products summed in one fixed order, so that the numbers the compiler records are the same on every CPU.

BLAS (OpenBLAS, MKL) picks its kernel by the CPU's SIMD width and splits
work by thread count; each choice adds the K terms of a dot product in a
different order, so the last bits of ``x @ w`` depend on the machine. The
compiler records numbers derived from such products (calibration ranges, the
interval bounds of MVM columns), and a recurrence amplifies a last-bit
difference step by step: with AVX-512 and AVX2-only kernels the same model
gave column ranges 1e-7..1e-4 apart and NL-ADC thresholds visibly different.

:func:`matmul` avoids BLAS: it forms every product elementwise (correctly
rounded in IEEE arithmetic, whatever the SIMD width) and sums the K terms by
``np.add.reduce`` over a fixed axis, whose order numpy derives from the
array's shape alone. Float32 operands are multiplied and summed in float64
(a float32 x float32 product is exact there) and the sum is rounded once to
float32, so the result is also at least as accurate as a float32 BLAS call.
It costs about one memory pass over the K x N weights per block of rows
instead of a GEMM: fine for calibration and interval analysis, not for the
simulator.
"""

from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 19  # products are formed in buffers of at most this many float64s (4 MiB: cache-sized)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (numpy's broadcasting rules) with each output element summed in an order fixed by the shapes.

    The result has the operands' common float type (float32 operands give a
    float32 result, rounded once from a float64 sum).
    """
    a, b = np.asarray(a), np.asarray(b)
    out_type = np.result_type(a.dtype, b.dtype)
    if not np.issubdtype(out_type, np.floating):
        return np.matmul(a, b)  # integer products are exact: no order to fix
    wide = np.promote_types(out_type, np.float64)
    vector_a, vector_b = a.ndim == 1, b.ndim == 1
    a2 = (a[None, :] if vector_a else a).astype(wide, copy=False)
    b2 = (b[:, None] if vector_b else b).astype(wide, copy=False)
    if b2.ndim == 2:  # the common case, rows @ weights
        lead, k = a2.shape[:-1], a2.shape[-1]
        out = _sequential_rows(a2.reshape(int(np.prod(lead)), k), b2).reshape(*lead, b2.shape[1])
    else:
        out = np.add.reduce(a2[..., :, :, None] * b2[..., None, :, :], axis=-2)
    if vector_b:
        out = out[..., 0]
    if vector_a:
        out = out[..., 0, :] if not vector_b else out[..., 0]
    return out.astype(out_type, copy=False)


def _add_terms(acc: np.ndarray | None, left: np.ndarray, right: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``acc + t_0 + t_1 + ...`` added in that order, t_i = left[i] * right[i]; ``terms`` is a buffer of len(t) + 1 slices.

    ``np.add.reduce`` over the leading axis of a C-contiguous array adds its
    slices one after another (numpy keeps the contiguous axis innermost), so
    with the running sum as the first slice a sum cut into chunks adds the same
    terms in the same order as one reduction over all of them.
    """
    np.multiply(left, right, out=terms[1:])
    if acc is None:
        return np.add.reduce(terms[1:], axis=0)
    terms[0] = acc
    return np.add.reduce(terms, axis=0)


def _sequential_rows(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``rows @ weights`` with out[m, n] = (((p_0 + p_1) + p_2) + ...) + p_(K-1), p_k = rows[m, k] * weights[k, n].

    K is cut into chunks reduced onto the running sum (:func:`_add_terms`), so
    the sum runs in the order of k whatever the chunk size, in a buffer of at
    most ``_CHUNK_ELEMENTS`` float64s reused across chunks, at one pass over the
    weights per block of rows.
    """
    m, k = rows.shape
    n = weights.shape[1]
    out = np.zeros((m, n), weights.dtype)
    if k == 0:
        return out
    block = max(1, min(m, _CHUNK_ELEMENTS // (8 * max(1, n))))  # rows per pass over the weights
    depth = max(1, _CHUNK_ELEMENTS // (block * max(1, n)))  # terms of k per reduction
    buffer = np.empty((depth + 1, block, n), weights.dtype)
    for r0 in range(0, m, block):
        r1 = min(m, r0 + block)
        acc = None
        for k0 in range(0, k, depth):
            k1 = min(k, k0 + depth)
            acc = _add_terms(acc, rows[r0:r1, k0:k1].T[:, :, None], weights[k0:k1, None, :], buffer[:k1 - k0 + 1, :r1 - r0])
        out[r0:r1] = acc
    return out


def _depth(n: int) -> int:
    """Rows of K per reduction of :func:`resumable_vecmat` over N columns (its records hold one running sum per depth)."""
    return max(1, _CHUNK_ELEMENTS // max(1, n))


def _resumed_sums(x: np.ndarray, previous: tuple[np.ndarray, list[np.ndarray]] | None, depth: int) -> list[np.ndarray]:
    """The running sums of ``previous`` that ``x`` can resume from: those before the first row where ``x`` differs."""
    if previous is None or previous[0].shape != x.shape:
        return []
    changed = np.flatnonzero(previous[0].view(np.int64) != x.view(np.int64))  # bitwise: -0.0 differs from 0.0
    same = int(changed[0]) if changed.size else x.shape[0]
    return previous[1][:same // depth]


def resumable_vecmat(x: np.ndarray, weights: np.ndarray, previous: tuple[np.ndarray, list[np.ndarray]] | None = None,
                     absolute: bool = False) -> tuple[np.ndarray, tuple[np.ndarray, list[np.ndarray]]]:
    """``x @ weights`` for float64 ``x`` [K] and float ``weights`` [K, N] (float32 ones widened exactly), summed as :func:`matmul` sums it, and a record to resume from.

    The record holds ``x`` and the running sums after every ``depth`` rows.
    Given the record of an earlier call over the same weights, the sum restarts
    from the last running sum before the first row where ``x`` differs: the
    terms before it, and their order, are the same, so the result is bit for bit
    that of a full product. Interval analysis of a loop recomputes an MVM over
    [x; h] each step while only h changes: this halves the work there.
    ``absolute``: ``x @ |weights|``, with |w| taken a chunk at a time (exact), not kept as a copy of the weights.
    """
    k, n = weights.shape
    wide = np.result_type(x.dtype, weights.dtype)  # float32 weights are widened exactly, chunk by chunk, not copied
    depth = _depth(n)
    sums = _resumed_sums(x, previous, depth)
    start = len(sums) * depth
    acc = sums[-1] if sums else None
    buffer = np.empty((depth + 1, n), wide)
    magnitudes = np.empty((depth, n), weights.dtype) if absolute else None
    for k0 in range(start, k, depth):
        k1 = min(k, k0 + depth)
        chunk = weights[k0:k1] if magnitudes is None else np.abs(weights[k0:k1], out=magnitudes[:k1 - k0])
        acc = _add_terms(acc, x[k0:k1, None], chunk, buffer[:k1 - k0 + 1])
        if k1 - k0 == depth:
            sums.append(acc)
    out = acc if acc is not None else np.zeros(n, wide)
    return out, (x.copy(), sums)


def resumable_vecmat_columns(x: np.ndarray, weights: np.ndarray, columns: np.ndarray,
                             previous: tuple[np.ndarray, list[np.ndarray]] | None = None,
                             absolute: bool = False) -> np.ndarray:
    """``resumable_vecmat(x, weights, previous, absolute)[0][columns]``, bit for bit, at the cost of those columns.

    Each output element of :func:`resumable_vecmat` is its own sequential sum (the running sum, then the terms of
    rows k0, k0 + 1, ...), so a subset of the columns is the same sums over a narrower matrix; ``np.add.accumulate``
    adds them in that order by definition, for any number of columns. ``previous`` is only read: the record of the
    last full product stays the one to resume from.
    """
    k, n = weights.shape
    depth = _depth(n)
    sums = _resumed_sums(x, previous, depth)
    start = len(sums) * depth
    part = weights[start:, columns]
    if absolute:
        part = np.abs(part)
    terms = x[start:, None] * part
    if sums:
        terms = np.concatenate([sums[-1][None, columns], terms])
    if not terms.shape[0]:
        return np.zeros(len(columns), np.result_type(x.dtype, weights.dtype))
    return np.add.accumulate(terms, axis=0)[-1]
