"""Reference kernels for the non-recurrent ONNX ops around an RNN: Conv, Gemm,
Pad, Softmax, LogSoftmax, ReduceMean and ArgMax.

Each takes the op's inputs positionally and its attributes as keywords with
the ONNX defaults, and computes in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv(
    X: np.ndarray,
    W: np.ndarray,
    B: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX Conv over any number (>= 1) of spatial axes, as im2col plus one matmul.

    ``X`` is ``[N, C, D1, ...]``, ``W`` is ``[M, C/group, k1, ...]``, ``B`` is
    ``[M]``. SAME_UPPER/SAME_LOWER pad so each output size is
    ``ceil(in / stride)``, computed with the dilated kernel extent as ONNX
    shape inference does (onnxruntime refuses SAME_* with dilation), putting
    an odd leftover pixel at the end (UPPER) or the beginning (LOWER).
    """
    X, W = np.asarray(X), np.asarray(W)
    nd = X.ndim - 2
    if nd < 1 or W.ndim != X.ndim:
        raise ValueError(f"Conv needs X and W of equal rank >= 3, got {list(X.shape)} and {list(W.shape)}")
    if W.dtype != X.dtype:
        raise TypeError(f"Conv W has dtype {W.dtype}, but X has {X.dtype}")
    N, C = X.shape[:2]
    M, kernel = W.shape[0], W.shape[2:]
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise ValueError(f"Conv kernel_shape {list(kernel_shape)} disagrees with W's {list(kernel)}")
    if group < 1 or C != W.shape[1] * group or M % group:
        raise ValueError(
            f"Conv group={group} does not fit C={C}, W channels={W.shape[1]}, M={M}"
        )
    strides = _per_axis("strides", strides, nd)
    dilations = _per_axis("dilations", dilations, nd)
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    begin, end = conv_pads(auto_pad, pads, X.shape[2:], extent, strides)
    windows = sliding_windows(X, kernel, begin + end, strides, dilations)
    out_shape = windows.shape[2 : 2 + nd]
    # [N, C, *out, *k] -> [N, group, *out, C/group, *k] -> [N, group, P, C/group * K]
    windows = windows.reshape(N, group, C // group, *windows.shape[2:])
    order = (0, 1, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    cols = windows.transpose(order).reshape(N, group, math.prod(out_shape), -1)
    weights = W.reshape(group, M // group, -1).transpose(0, 2, 1)
    Y = (cols @ weights).transpose(0, 1, 3, 2).reshape(N, M, *out_shape)
    if B is not None:
        B = np.asarray(B)
        if B.shape != (M,) or B.dtype != X.dtype:
            raise ValueError(f"Conv B must be {X.dtype} [{M}], got {B.dtype} {list(B.shape)}")
        Y = Y + B.reshape(M, *(1,) * nd)
    return Y


def _per_axis(name: str, values: Sequence[int] | None, nd: int) -> tuple[int, ...]:
    if values is None:
        return (1,) * nd
    values = tuple(int(v) for v in values)
    if len(values) != nd or min(values) < 1:
        raise ValueError(f"{name} must be {nd} positive integers, got {list(values)}")
    return values


def sliding_windows(
    X: np.ndarray, kernel: Sequence[int], pads: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> np.ndarray:
    """Receptive fields of a convolution: ``[N, C, S...]`` -> ``[N, C, O..., k...]`` after zero padding.

    ``pads`` is ONNX's ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``.
    """
    nd = X.ndim - 2
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    Xp = np.pad(X, [(0, 0), (0, 0), *zip(pads[:nd], pads[nd:])])
    if any(p < e for p, e in zip(Xp.shape[2:], extent)):
        raise ValueError(f"Conv padded input {list(Xp.shape[2:])} is smaller than the kernel extent {list(extent)}")
    windows = sliding_window_view(Xp, extent, axis=tuple(range(2, 2 + nd)))
    return windows[:, :, *(slice(None, None, s) for s in strides), *(slice(None, None, d) for d in dilations)]


def conv_pads(
    auto_pad: str,
    pads: Sequence[int] | None,
    in_shape: tuple[int, ...],
    extent: tuple[int, ...],
    strides: tuple[int, ...],
) -> tuple[list[int], list[int]]:
    """Begin and end padding of each spatial axis."""
    nd = len(in_shape)
    if auto_pad == "NOTSET":
        pads = [0] * (2 * nd) if pads is None else [int(p) for p in pads]
        if len(pads) != 2 * nd or min(pads) < 0:
            raise ValueError(f"pads must be {2 * nd} non-negative integers, got {pads}")
        return pads[:nd], pads[nd:]
    if pads is not None and any(pads):
        raise ValueError(f"pads {list(pads)} cannot be combined with auto_pad={auto_pad}")
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad!r}")
    begin, end = [], []
    for size, e, s in zip(in_shape, extent, strides):
        total = max(0, (-(-size // s) - 1) * s + e - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def gemm(
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    """ONNX Gemm: ``alpha * A' @ B' + beta * C``, C unidirectionally broadcast to [M, N]."""
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"Gemm needs 2-D A and B, got {list(A.shape)} and {list(B.shape)}")
    if not np.issubdtype(A.dtype, np.floating) or B.dtype != A.dtype:
        raise TypeError(f"Gemm needs A and B of one floating dtype, got {A.dtype} and {B.dtype}")
    scalar = A.dtype.type
    Y = scalar(alpha) * ((A.T if transA else A) @ (B.T if transB else B))
    if C is not None:
        C = np.asarray(C)
        if C.dtype != A.dtype or np.broadcast_shapes(C.shape, Y.shape) != Y.shape:
            raise ValueError(
                f"Gemm C ({C.dtype} {list(C.shape)}) must be {A.dtype} and broadcastable to {list(Y.shape)}"
            )
        Y = Y + scalar(beta) * C
    return Y


def pad(
    data: np.ndarray,
    pads: Sequence[int] | np.ndarray,
    constant_value: float | np.ndarray | None = None,
    axes: Sequence[int] | np.ndarray | None = None,
    *,
    mode: str = "constant",
) -> np.ndarray:
    """ONNX Pad (opset 11+ inputs; older opsets pass their attributes here).

    ``pads`` is ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` over
    ``axes`` (all axes if None). Negative entries remove elements; removal
    happens before padding, so edge/reflect/wrap read the cropped tensor
    (as onnxruntime does).
    """
    data = np.asarray(data)
    rank = data.ndim
    axes_list = list(range(rank)) if axes is None else [_axis(int(a), rank) for a in np.ravel(axes)]
    if len(set(axes_list)) != len(axes_list):
        raise ValueError(f"Pad axes repeat: {axes_list}")
    pads = [int(p) for p in np.ravel(pads)]
    if len(pads) != 2 * len(axes_list):
        raise ValueError(f"Pad needs {2 * len(axes_list)} pads for axes {axes_list}, got {pads}")
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes_list):
        begin[axis], end[axis] = pads[i], pads[i + len(axes_list)]
    if any(data.shape[a] + min(b, 0) + min(e, 0) < 0 for a, (b, e) in enumerate(zip(begin, end))):
        raise ValueError(f"Pad removes more elements than shape {list(data.shape)} holds: {pads}")
    cropped = data[tuple(slice(-min(b, 0), n + min(e, 0)) for n, b, e in zip(data.shape, begin, end))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if mode == "constant":
        value = 0 if constant_value is None else np.asarray(constant_value).item()
        return np.pad(cropped, widths, mode="constant", constant_values=np.asarray(value, data.dtype))
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad mode must be constant, reflect, edge or wrap, got {mode!r}")
    if mode == "reflect" and any(max(w) >= n and max(w) > 0 for n, w in zip(cropped.shape, widths)):
        # numpy would reflect repeatedly; ONNX leaves this undefined and onnxruntime refuses it.
        raise ValueError(f"Pad reflect needs pads smaller than each axis, got {pads} for shape {list(cropped.shape)}")
    return np.pad(cropped, widths, mode=mode)


def softmax(x: np.ndarray, *, axis: int | None = None, opset: int = 13) -> np.ndarray:
    """ONNX Softmax; ``opset`` selects the axis semantics.

    From opset 13 the normalisation runs along ``axis`` (default -1). Before
    it, the input is flattened to 2-D at ``axis`` (default 1) and normalised
    over everything from ``axis`` on.
    """
    return _normalise(x, axis, opset, _softmax)


def log_softmax(x: np.ndarray, *, axis: int | None = None, opset: int = 13) -> np.ndarray:
    """ONNX LogSoftmax, with :func:`softmax`'s opset-dependent axis semantics."""
    return _normalise(x, axis, opset, _log_softmax)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _normalise(
    x: np.ndarray, axis: int | None, opset: int, fn: Callable[[np.ndarray, int], np.ndarray]
) -> np.ndarray:
    x = np.asarray(x)
    if opset >= 13:
        return fn(x, _axis(-1 if axis is None else axis, x.ndim))
    axis = _axis(1 if axis is None else axis, x.ndim)
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return fn(flat, 1).reshape(x.shape)


def reduce_mean(
    data: np.ndarray,
    axes: Sequence[int] | np.ndarray | None = None,
    *,
    keepdims: int = 1,
    noop_with_empty_axes: int = 0,
) -> np.ndarray:
    """ONNX ReduceMean; ``axes`` is the attribute (opset < 18) or the input (18+).

    Absent or empty ``axes`` reduce over everything unless
    ``noop_with_empty_axes`` (opset 18+) asks for the identity.
    """
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"ReduceMean kernel supports floating tensors only, got {data.dtype}")
    axes_list = [] if axes is None else [_axis(int(a), data.ndim) for a in np.ravel(axes)]
    if not axes_list:
        if noop_with_empty_axes:
            return data.copy()
        axes_list = list(range(data.ndim))
    if len(set(axes_list)) != len(axes_list):
        raise ValueError(f"ReduceMean axes repeat: {axes_list}")
    return np.mean(data, axis=tuple(axes_list), keepdims=bool(keepdims)).astype(data.dtype, copy=False)


def argmax(data: np.ndarray, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> np.ndarray:
    """ONNX ArgMax (int64 indices); ties go to the first index unless ``select_last_index``."""
    data = np.asarray(data)
    axis = _axis(axis, data.ndim)
    if select_last_index:
        index = data.shape[axis] - 1 - np.argmax(np.flip(data, axis), axis=axis)
    else:
        index = np.argmax(data, axis=axis)
    if keepdims:
        index = np.expand_dims(index, axis)
    return index.astype(np.int64)


def _axis(axis: int, rank: int) -> int:
    """Normalise a possibly negative axis, checking it lies in [-rank, rank - 1]."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank
