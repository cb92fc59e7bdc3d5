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
It costs about one memory pass over a K x N product per row instead of a
GEMM: fine for calibration and interval analysis, not for the simulator.
"""

from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # rows are processed in chunks whose K x N products take at most this many float64s (32 MiB)


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
    if b2.ndim == 2:  # the common case, rows @ weights: chunk the rows to bound memory
        lead, k = a2.shape[:-1], a2.shape[-1]
        rows = a2.reshape(int(np.prod(lead)), k)
        n = b2.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(1, k * n))
        parts = [np.add.reduce(rows[i:i + step, :, None] * b2[None], axis=1) for i in range(0, rows.shape[0], step)]
        out = (np.concatenate(parts) if parts else np.zeros((0, n), wide)).reshape(*lead, n)
    else:
        out = np.add.reduce(a2[..., :, :, None] * b2[..., None, :, :], axis=-2)
    if vector_b:
        out = out[..., 0]
    if vector_a:
        out = out[..., 0, :] if not vector_b else out[..., 0]
    return out.astype(out_type, copy=False)
