"""Interpreter kernels for the lowered ``cim`` ops.

They compute exactly what the IR means, in the model's float type: a
conductance-form MVM uses the weights its conductances encode,
``(g_pos - g_neg) / g_scale`` (formed in float64, so the round trip through
conductances changes no float32 weight), driven by ``x / row_scale`` (the
stored weights carry the per-segment DAC scale fractions, powers of two, so
the product is the model's), and conversions are the identity.
Quantization and device effects belong to the simulator backend, which
executes the programming image, not the IR.
"""

from __future__ import annotations

import numpy as np

from cimc.attributes import Tensor
from cimc.interpreter import Arrays, Interpreter, kernel
from cimc.ir import Operation
from cimc.kernels.activations import Activation
from cimc.kernels.tensor_ops import sliding_windows


def _array(op: Operation, name: str) -> np.ndarray:
    value = op.attributes[name]
    assert isinstance(value, Tensor)
    return value.array


def apply_activation(op: Operation, x: np.ndarray, portable: bool = False) -> np.ndarray:
    """f(clip(x)) as named by an op's function/alpha/beta/clip attributes (``portable``: see Activation.portable)."""
    a = op.attributes
    fn = Activation.create(str(a["function"]), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
    if "clip" in a:
        bound = x.dtype.type(a["clip"])
        x = np.clip(x, -bound, bound)
    return fn.portable(x) if portable else fn(x)


@kernel("cim.activation")
def _activation(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    (x,) = args
    assert x is not None
    return [apply_activation(op, x)]


def mvm_input(op: Operation, args: Arrays) -> np.ndarray:
    """The row vector an MVM drives: its inputs side by side, then ``bias_rows`` ones."""
    inputs = [a for a in args if a is not None]
    lead = np.broadcast_shapes(*(a.shape[:-1] for a in inputs))
    parts = [np.broadcast_to(a, lead + a.shape[-1:]) for a in inputs]
    bias_rows = int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]
    if bias_rows:
        parts.append(np.ones(lead + (bias_rows,), inputs[0].dtype))
    return np.concatenate(parts, axis=-1)


def row_scales(op: Operation, rows: int) -> np.ndarray:
    """Each row's fraction r_i of the reference DAC full scale (1 without per-segment scales)."""
    value = op.attributes.get("row_scale")
    return value.array if isinstance(value, Tensor) else np.ones(rows)


def driven_input(op: Operation, x: np.ndarray) -> np.ndarray:
    """What the DAC drives: x_i / r_i, in the input's float type (the stored weights carry r_i)."""
    if "row_scale" not in op.attributes:
        return x
    r = row_scales(op, x.shape[-1])
    return x if bool((r == 1.0).all()) else x / r.astype(x.dtype)  # rows at the reference scale need no pass over x


def encoded_weights(op: Operation, dtype: np.dtype) -> np.ndarray:
    """The weights a conductance-form op encodes: (g_pos - g_neg) / g_scale per column."""
    g_pos, g_neg, scale = (_array(op, k).astype(np.float64) for k in ("g_pos", "g_neg", "g_scale"))
    return ((g_pos - g_neg) / scale).astype(dtype)


@kernel("cim.matvec")
def _matvec(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    x = mvm_input(op, args)
    return [x @ _array(op, "weights").astype(x.dtype, copy=False)]


@kernel("cim.crossbar_mvm")
def _crossbar(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    x = driven_input(op, mvm_input(op, args))
    weights = it.cached(op, lambda: encoded_weights(op, x.dtype))
    return [x @ weights]


@kernel("cim.tile_mvm")
def _tile(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    r0, r1 = op.attributes["rows"]  # type: ignore[misc]
    x = driven_input(op, mvm_input(op, args)[..., r0:r1])
    weights = it.cached(op, lambda: encoded_weights(op, x.dtype))
    return [x @ weights]


@kernel("cim.analog_sum")
def _analog_sum(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    parts = [a for a in args if a is not None]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return [total]


@kernel("cim.adc")
def _adc(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [args[0]]  # type: ignore[list-item]


def im2col(x: np.ndarray, kernel_shape: list[int], pads: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """[N, C, S...] -> [N, O..., C * prod(kernel)], patch entries ordered (C, k1, k2, ...) like ONNX Conv weights."""
    nd = len(kernel_shape)
    windows = sliding_windows(x, kernel_shape, pads, strides, dilations)  # [N, C, O..., k...]
    n, c = x.shape[:2]
    out = windows.shape[2:2 + nd]
    moved = np.moveaxis(windows, 1, 1 + nd)  # [N, O..., C, k...]
    return np.ascontiguousarray(moved).reshape(n, *out, c * int(np.prod(kernel_shape)))


@kernel("cim.im2col")
def _im2col(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    a = op.attributes
    return [im2col(args[0], list(a["kernel_shape"]), list(a["pads"]), list(a["strides"]), list(a["dilations"]))]  # type: ignore[arg-type]


@kernel("cim.ramp")
def _ramp(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [_array(op, "thresholds")]


@kernel("cim.nl_adc")
def _nl_adc(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    """Exact meaning of the conversion: the activation itself; its quantization is the simulator's job."""
    analog = args[0]
    assert analog is not None
    c0, c1 = op.attributes["cols"]  # type: ignore[misc]
    return [apply_activation(op, analog[..., c0:c1])]
