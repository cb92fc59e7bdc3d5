"""Interpreter kernels for the ``builtin``, ``onnx`` and structural ``cim`` ops.

Each kernel computes in the operands' own element type, as onnxruntime does,
so that float32 models agree with it to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from cimc.attributes import Tensor
from cimc.interpreter import Arrays, Interpreter, kernel, plain_attrs
from cimc.ir import Operation
from cimc.kernels import recurrent, tensor_ops


@kernel("builtin.constant")
def _constant(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    value = op.attributes["value"]
    assert isinstance(value, Tensor)
    return [value.array]


@kernel("cim.loop")
def _loop(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    trip, *carried = args
    assert trip is not None
    body = op.regions[0].block
    n_carried = len(carried)
    scans: list[list[np.ndarray]] = [[] for _ in op.results[n_carried:]]
    state = [a for a in carried if a is not None]
    for t in range(int(trip)):
        if it.carried_override is not None:
            state = it.carried_override(op, t, state)
        out = it.run_block(body, [np.array(t, dtype=np.int64), *state])
        state = out[:n_carried]
        for acc, value in zip(scans, out[n_carried:]):
            acc.append(value)
        if it.progress is not None:
            it.progress(op.location or op.name, t + 1, int(trip))
    stacked = []
    for acc, res in zip(scans, op.results[n_carried:]):
        if acc:
            stacked.append(np.stack(acc))
        else:
            shape = [0] + [d if isinstance(d, int) else it.symbols.get(str(d), 0) for d in res.type.shape[1:]]
            stacked.append(np.zeros(shape, res.type.np_dtype))
    return state + stacked


def _same(x: np.ndarray, result: np.ndarray) -> np.ndarray:
    return np.asarray(result).astype(x.dtype, copy=False)


def _binary(fn):  # noqa: ANN001, ANN202
    def run(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
        a, b = args
        assert a is not None and b is not None
        return [_same(a, fn(a, b))]

    return run


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(a.dtype)  # ONNX integer Div truncates toward zero
    return np.divide(a, b)


kernel("onnx.Add")(_binary(np.add))
kernel("onnx.Sub")(_binary(np.subtract))
kernel("onnx.Mul")(_binary(np.multiply))
kernel("onnx.Div")(_binary(_int_div))
kernel("onnx.Pow")(_binary(np.power))
kernel("onnx.MatMul")(_binary(np.matmul))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of -|x| never overflows; the two branches agree at 0.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_UNARY = {
    "onnx.Sigmoid": _sigmoid,
    "onnx.Tanh": np.tanh,
    "onnx.Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "onnx.Sqrt": np.sqrt,
    "onnx.Identity": lambda x: x,
    "onnx.Neg": np.negative,
    "onnx.Exp": np.exp,
    "onnx.Log": np.log,
    "onnx.Abs": np.abs,
}


@kernel(*_UNARY)
def _unary(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    (x,) = args
    assert x is not None
    return [_same(x, _UNARY[op.name](x))]


@kernel("onnx.HardSigmoid", "onnx.LeakyRelu", "onnx.Elu", "onnx.ThresholdedRelu", "onnx.Softsign", "onnx.Softplus")
def _parametric_activation(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    """The standalone operators share the RNN activations' functions and their defaults (see kernels.activations)."""
    from cimc.kernels.activations import Activation

    (x,) = args
    assert x is not None
    a = op.attributes
    act = Activation.create(op.name.removeprefix("onnx."), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]
    return [_same(x, act(x))]


@kernel("onnx.Clip")
def _clip(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    x, lo, hi = (list(args) + [None, None])[:3]
    assert x is not None
    lo = lo if lo is not None else op.attributes.get("min")
    hi = hi if hi is not None else op.attributes.get("max")
    out = x
    if lo is not None:
        out = np.maximum(out, np.asarray(lo, x.dtype))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi, x.dtype))
    return [_same(x, out)]


@kernel("onnx.Softmax", "onnx.LogSoftmax")
def _softmax(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    fn = tensor_ops.softmax if op.name == "onnx.Softmax" else tensor_ops.log_softmax
    return [fn(args[0], axis=int(op.attributes.get("axis", -1)), opset=13)]  # type: ignore[arg-type]


@kernel("onnx.Gemm")
def _gemm(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [tensor_ops.gemm(*args, **plain_attrs(op))]  # type: ignore[arg-type]


@kernel("onnx.Conv")
def _conv(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [tensor_ops.conv(*args, **plain_attrs(op))]  # type: ignore[arg-type]


@kernel("onnx.Pad")
def _pad(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, pads, value, axes = (args + [None, None])[:4]
    return [tensor_ops.pad(data, pads, value, axes, **plain_attrs(op))]  # type: ignore[arg-type]


@kernel("onnx.ReduceMean")
def _reduce_mean(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, axes = (args + [None])[:2]
    return [tensor_ops.reduce_mean(data, axes, **plain_attrs(op))]  # type: ignore[arg-type]


@kernel("onnx.ArgMax")
def _argmax(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [tensor_ops.argmax(args[0], **plain_attrs(op))]  # type: ignore[arg-type]


@kernel("onnx.LSTM")
def _lstm(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return list(recurrent.lstm(*(args + [None] * (8 - len(args))), **plain_attrs(op)))  # type: ignore[arg-type]


@kernel("onnx.GRU")
def _gru(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return list(recurrent.gru(*(args + [None] * (6 - len(args))), **plain_attrs(op)))  # type: ignore[arg-type]


@kernel("onnx.RNN")
def _rnn(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return list(recurrent.rnn(*(args + [None] * (6 - len(args))), **plain_attrs(op)))  # type: ignore[arg-type]


@kernel("onnx.Gather")
def _gather(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, indices = args
    assert data is not None and indices is not None
    axis = int(op.attributes.get("axis", 0))
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    return [np.take(data, idx, axis=axis)]


@kernel("onnx.Slice")
def _slice(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, starts, ends, axes, steps = (args + [None, None])[:5]
    assert data is not None and starts is not None and ends is not None
    axes_list = [int(a) % data.ndim for a in (axes if axes is not None else range(len(starts)))]
    steps_list = [int(s) for s in steps] if steps is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes_list, starts, ends, steps_list):
        index[axis] = slice(*_clamp_slice(int(start), int(end), step, data.shape[axis]))
    return [data[tuple(index)]]


def _clamp_slice(start: int, end: int, step: int, dim: int) -> tuple[int, int | None, int]:
    """ONNX Slice bounds as a Python slice (ONNX clamps large and very negative bounds)."""
    if step == 0:
        raise ValueError("Slice step cannot be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim), step
    start = min(max(start, 0), dim - 1)
    return start, (None if end < 0 else min(end, dim - 1)), step


@kernel("onnx.Concat")
def _concat(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [np.concatenate([a for a in args if a is not None], axis=int(op.attributes["axis"]))]  # type: ignore[arg-type]


@kernel("onnx.Unsqueeze")
def _unsqueeze(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, axes = args
    assert data is not None and axes is not None
    rank = data.ndim + len(axes)
    return [np.expand_dims(data, tuple(sorted(int(a) % rank for a in axes)))]


@kernel("onnx.Squeeze")
def _squeeze(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, axes = (args + [None])[:2]
    assert data is not None
    if axes is None:
        return [np.squeeze(data)]
    return [np.squeeze(data, tuple(int(a) % data.ndim for a in axes))]


@kernel("onnx.Transpose")
def _transpose(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    perm = op.attributes.get("perm")
    return [np.transpose(args[0], perm if perm is None else list(perm))]  # type: ignore[arg-type]


@kernel("onnx.Reshape")
def _reshape(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, shape = args
    assert data is not None and shape is not None
    target = [int(s) for s in shape]
    if not op.attributes.get("allowzero", 0):
        target = [data.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return [data.reshape(target)]


@kernel("onnx.Cast")
def _cast(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    from onnx.helper import tensor_dtype_to_np_dtype  # here: importing onnx costs a simulator process ~1 s otherwise

    return [args[0].astype(tensor_dtype_to_np_dtype(int(op.attributes["to"])))]  # type: ignore[union-attr]


@kernel("onnx.Shape")
def _shape(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data = args[0]
    assert data is not None
    start = int(op.attributes.get("start", 0))
    end = op.attributes.get("end")
    return [np.array(data.shape[start: None if end is None else int(end)], dtype=np.int64)]  # type: ignore[arg-type]


@kernel("onnx.Expand")
def _expand(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    data, shape = args
    assert data is not None and shape is not None
    target = np.broadcast_shapes(data.shape, tuple(int(s) for s in shape))
    return [np.array(np.broadcast_to(data, target))]


@kernel("onnx.ConstantOfShape")
def _constant_of_shape(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    value = op.attributes.get("value")
    fill = value.array.reshape(-1)[0] if isinstance(value, Tensor) else np.float32(0)
    return [np.full(tuple(int(s) for s in args[0]), fill, dtype=np.asarray(fill).dtype)]  # type: ignore[union-attr]


@kernel("onnx.Less")
def _less(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    return [np.less(args[0], args[1])]


@kernel("onnx.Where")
def _where_kernel(op: Operation, args: Arrays, it: Interpreter) -> list[np.ndarray]:
    cond, x, y = args
    assert x is not None
    return [np.where(cond, x, y).astype(x.dtype, copy=False)]
