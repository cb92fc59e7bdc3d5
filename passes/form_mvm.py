"""form-mvm: one crossbar MVM per weight block, over concatenated inputs with the bias as a row.

- A sum of ``cim.matvec`` ops and constant bias vectors (what decompose-rnn
  emits for a gate pre-activation: W x + R h [+ P c] + b) becomes one
  ``cim.matvec`` over [x; h; (c); 1]: the rows are stacked, and the bias is a
  row driven at a constant input of 1.
- ``onnx.Gemm`` and ``onnx.MatMul`` with a constant weight operand become
  ``cim.matvec`` (Gemm's alpha is folded into the weights, beta * C into the
  bias row when C is a vector).
- ``onnx.Conv`` with constant weights becomes ``cim.im2col`` (each output
  pixel's receptive field as one input row vector), one ``cim.matvec`` with a
  block-diagonal weight matrix for grouped convolutions, and a Transpose back
  to channels-first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.attributes import Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.dialects.builtin import constant_array, constant_tensor
from cimc.ir import Module, Operation, Value
from cimc.kernels.tensor_ops import conv_pads
from cimc.pass_manager import ModulePass, register_pass
from cimc.types import TensorType


def _weights(op: Operation) -> np.ndarray:
    value = op.attributes["weights"]
    assert isinstance(value, Tensor)
    return value.array


def _is_bias(value: Value, cols: int) -> np.ndarray | None:
    array = constant_array(value)
    if array is None or array.size != cols or array.shape[-1:] != (cols,) or not np.issubdtype(array.dtype, np.floating):
        return None
    return array.reshape(cols)


_TRANSPOSE_BLOCK = 16  # columns of a transposed part per block: a block's transpose stays in cache


def stack_rows(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """``np.concatenate(parts, dtype=dtype)``: the parts' rows, stacked into one fresh C-contiguous array.

    decompose-rnn's parts are transposed views of the ONNX W and R: a part whose transpose is C-contiguous is
    copied in blocks of its columns (rows of the transpose), since a one-pass copy of a large transpose strides
    through memory and runs several times slower than blocks whose transpose fits the cache.
    """
    out = np.empty((sum(p.shape[0] for p in parts), parts[0].shape[1]), dtype)
    r0 = 0
    for part in parts:
        target = out[r0:r0 + part.shape[0]]
        r0 += part.shape[0]
        if part.shape[0] > 1 and not part.flags.c_contiguous and part.T.flags.c_contiguous:
            source = part.T
            for c0 in range(0, source.shape[0], _TRANSPOSE_BLOCK):
                target[:, c0:c0 + _TRANSPOSE_BLOCK] = source[c0:c0 + _TRANSPOSE_BLOCK].T
        else:
            target[...] = part
    return out


def _collect(value: Value, cols: int, root: bool) -> list[Operation | np.ndarray] | None:
    """The matvec and bias leaves of the Add tree rooted at ``value``, or None if it is not such a tree."""
    op = getattr(value, "op", None)
    if op is None or (not root and len(value.uses) != 1):
        bias = _is_bias(value, cols) if op is not None else None
        return [bias] if bias is not None else None
    if op.name == "cim.matvec" and value.type.shape[-1:] == (cols,):
        return [op]
    bias = _is_bias(value, cols)
    if bias is not None:
        return [bias]
    if op.name == "onnx.Add":
        a, b = op.operands
        left = _collect(a, cols, False)  # type: ignore[arg-type]
        right = _collect(b, cols, False)  # type: ignore[arg-type]
        if left is not None and right is not None:
            return left + right
    return None


def merge_sum(root: Operation) -> bool:
    """Replace the Add tree at ``root`` by one matvec if it sums at least two matvecs or a matvec and a bias."""
    result = root.results[0]
    cols = result.type.shape[-1]
    if not isinstance(cols, int):
        return False
    leaves = _collect(result, cols, True)
    if leaves is None:
        return False
    mvms = [leaf for leaf in leaves if isinstance(leaf, Operation)]
    biases = [leaf for leaf in leaves if isinstance(leaf, np.ndarray)]
    if not mvms or len(leaves) < 2:
        return False
    dtype = result.type.np_dtype
    rows: dict[int, tuple[Value, np.ndarray]] = {}
    bias = np.zeros(cols, dtype)
    have_bias = bool(biases)
    for b in biases:
        bias = bias + b.astype(dtype)
    for mvm in mvms:
        w = _weights(mvm)
        offset = 0
        for x in mvm.operands:
            assert x is not None
            width = int(x.type.shape[-1])  # type: ignore[arg-type]
            part = w[offset:offset + width]
            offset += width
            if id(x) in rows:
                rows[id(x)] = (x, rows[id(x)][1] + part)
            else:
                rows[id(x)] = (x, part)
        if mvm.attributes.get("bias_rows", 0):
            bias = bias + w[offset]
            have_bias = True
    inputs = [x for x, _ in rows.values()]
    stacked = [p for _, p in rows.values()] + ([bias[None, :]] if have_bias else [])
    block = str(mvms[0].attributes.get("block", "mvm"))
    weights = Tensor.adopt(stack_rows(stacked, dtype), key=f"{block}.weights")
    b = Builder(root.parent, root, root.location)  # type: ignore[arg-type]
    merged = b.value("cim.matvec", inputs, result.type, {"weights": weights, "bias_rows": int(have_bias), "block": block})
    result.replace_all_uses_with(merged)
    return True


def _gemm(op: Operation, index: int) -> bool:
    a_val, b_val, *rest = op.operands
    w = constant_array(b_val)
    if w is None or w.ndim != 2 or a_val is None:
        return False
    attrs = op.attributes
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))  # type: ignore[arg-type]
    weights = w.T if attrs.get("transB", 0) else w  # a view: scaled by alpha in the MVM's copy
    b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
    x = a_val
    if attrs.get("transA", 0):
        x = b.value("onnx.Transpose", [x], TensorType(x.type.dtype, x.type.shape[::-1]), {"perm": (1, 0)})
    c_val = rest[0] if rest else None
    c = constant_array(c_val) if c_val is not None else None
    cols = weights.shape[1]
    bias = None
    if c is not None and c.size in (1, cols) and (c.ndim <= 1 or c.shape[:-1] == (1,) * (c.ndim - 1)):
        bias = np.broadcast_to(c.reshape(-1), (cols,)) * w.dtype.type(beta)
    elif c_val is not None:
        return _gemm_with_matrix_c(op, b, x, weights, alpha, c_val, beta, index)
    _replace_with_matvec(op, b, x, _weights_tensor(weights, bias, alpha, f"gemm{index}"), int(bias is not None), f"gemm{index}")
    return True


def _gemm_with_matrix_c(op: Operation, b: Builder, x: Value, weights: np.ndarray, alpha: float, c_val: Value, beta: float,
                        index: int) -> bool:
    result = op.results[0]
    y = b.value("cim.matvec", [x], result.type, {"weights": _weights_tensor(weights, None, alpha, f"gemm{index}"),
                                                 "block": f"gemm{index}"})
    scaled = c_val if beta == 1.0 else b.value("onnx.Mul", [c_val, b.const(np.array(beta, result.type.np_dtype))], c_val.type)
    result.replace_all_uses_with(b.value("onnx.Add", [y, scaled], result.type))
    return True


def _weights_tensor(weights: np.ndarray, bias: np.ndarray | None, alpha: float | None, block: str) -> Tensor:
    """An MVM's weights (times ``alpha``) over a bias row, in one fresh array: the one copy of the ONNX weights."""
    stacked = stack_rows([weights] + ([bias[None, :]] if bias is not None else []), weights.dtype)
    if alpha is not None:
        stacked[:weights.shape[0]] *= weights.dtype.type(alpha)
    return Tensor.adopt(stacked, key=f"{block}.weights")


def _replace_with_matvec(op: Operation, b: Builder, x: Value, weights: Tensor, bias_rows: int, block: str) -> None:
    attrs = {"weights": weights, "bias_rows": bias_rows, "block": block}
    op.results[0].replace_all_uses_with(b.value("cim.matvec", [x], op.results[0].type, attrs))


def _matmul(op: Operation, index: int) -> bool:
    a_val, b_val = op.operands
    constant = constant_tensor(b_val)  # its own (read-only, C-contiguous) array: shared, not copied
    if constant is None or constant.array.ndim != 2 or a_val is None or a_val.type.rank < 1:
        return False
    _replace_with_matvec(op, Builder(op.parent, op, op.location), a_val, constant.renamed(f"matmul{index}.weights"),  # type: ignore[arg-type]
                         0, f"matmul{index}")
    return True


def _conv(op: Operation, index: int) -> bool:
    x_val, w_val, *rest = op.operands
    w = constant_array(w_val)
    bias = constant_array(rest[0]) if rest and rest[0] is not None else None
    if w is None or x_val is None or (rest and rest[0] is not None and bias is None):
        return False
    a = op.attributes
    nd = w.ndim - 2
    kernel = [int(k) for k in w.shape[2:]]
    strides = list(a.get("strides", (1,) * nd))  # type: ignore[arg-type]
    dilations = list(a.get("dilations", (1,) * nd))  # type: ignore[arg-type]
    spatial = x_val.type.shape[2:]
    auto_pad = str(a.get("auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not all(isinstance(s, int) for s in spatial):
        raise CimcError(f"{op.location or op.name}: form-mvm needs static spatial dims for auto_pad={auto_pad}, got {x_val.type}")
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    begin, end = conv_pads(auto_pad, list(a["pads"]) if "pads" in a else None,  # type: ignore[arg-type]
                           tuple(int(s) if isinstance(s, int) else 0 for s in spatial), extent, tuple(strides))
    pads = begin + end
    group = int(a.get("group", 1))  # type: ignore[arg-type]
    out_ch, in_per_group = w.shape[:2]
    in_ch = in_per_group * group
    full = np.zeros((out_ch, in_ch, *kernel), w.dtype)
    per_out = out_ch // group
    for g in range(group):
        full[g * per_out:(g + 1) * per_out, g * in_per_group:(g + 1) * in_per_group] = w[g * per_out:(g + 1) * per_out]
    weights = full.reshape(out_ch, -1).T
    del full  # held by the view until the MVM's copy is made
    result = op.results[0]
    out_spatial = result.type.shape[2:]
    b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
    patch_type = TensorType(x_val.type.dtype, (x_val.type.shape[0], *out_spatial, weights.shape[0]))
    patches = b.value("cim.im2col", [x_val], patch_type,
                      {"kernel_shape": tuple(kernel), "pads": tuple(pads), "strides": tuple(strides), "dilations": tuple(dilations)})
    block = f"conv{index}"
    mvm_type = TensorType(result.type.dtype, (x_val.type.shape[0], *out_spatial, out_ch))
    tensor = _weights_tensor(weights, None if bias is None else bias.reshape(-1), None, block)
    del weights
    y = b.value("cim.matvec", [patches], mvm_type, {"weights": tensor, "bias_rows": int(bias is not None), "block": block})
    perm = (0, nd + 1, *range(1, nd + 1))
    result.replace_all_uses_with(b.value("onnx.Transpose", [y], result.type, {"perm": perm}))
    return True


_LOWER = {"onnx.Gemm": _gemm, "onnx.MatMul": _matmul, "onnx.Conv": _conv}


@register_pass
@dataclass(frozen=True)
class FormMVM(ModulePass):
    """Form one crossbar MVM per weight block: stacked inputs, bias as a constant-driven row.

    Cell gate sums, Gemm/MatMul with constant weights, and Conv (through an
    im2col row mapping) become ``cim.matvec``; everything else stays digital.
    """

    name = "form-mvm"

    def apply(self, module: Module) -> bool:
        from cimc.passes.dce import eliminate_dead_code, erase_if_dead

        eliminate_dead_code(module.body)  # the weights of decomposed RNNs: freed before the merged copies are made
        changed = False
        counter = 0
        for op in list(module.walk()):
            if op.parent is None:
                continue
            lower = _LOWER.get(op.name)
            if lower is not None and lower(op, counter):
                counter += 1
                changed = True
        for op in reversed(list(module.walk())):
            if op.parent is not None and op.name == "onnx.Add" and merge_sum(op):
                erase_if_dead([op.results[0]])  # the merged sum's parts, each MVM's weights freed as it merges
                changed = True
        eliminate_dead_code(module.body)
        for op in module.walk():  # a gate MVM nothing merged (no bias, one input) still holds a view of W or R
            weights = op.attributes.get("weights") if op.name == "cim.matvec" else None
            if isinstance(weights, Tensor) and not weights.array.flags.c_contiguous:
                op.attributes["weights"] = Tensor.adopt(stack_rows([weights.array], weights.array.dtype), key=weights.key)
                changed = True
        return changed
