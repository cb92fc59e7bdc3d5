"""The ``onnx`` dialect: ONNX operators as the importer produces them.

Each op keeps ONNX's operand order and attribute names, in the form of the
newest opset: where older opsets had an attribute that later became an input
(``axes`` of Unsqueeze, ``pads`` of Pad, ``starts`` of Slice ...), the importer
passes it as an operand, so the interpreter and the passes see one form only.
Optional operands may be absent (``none``), exactly where ONNX allows an empty
input name.
"""

from __future__ import annotations

from cimc.dialects.registry import AttrSpec, VerifyError, attrs, define
from cimc.dialects.type_rules import elementwise, same_dtype, unary_same_type
from cimc.ir import Operation

RNN_ACTIVATIONS = (
    "Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu",
    "ScaledTanh", "HardSigmoid", "Elu", "Softsign", "Softplus",
)
_DIRECTIONS = ("forward", "reverse", "bidirectional")


def _recurrent_attrs(**extra: str | AttrSpec) -> dict[str, AttrSpec]:
    return attrs(
        hidden_size="int!",
        direction=AttrSpec("str", choices=_DIRECTIONS),
        activations="strs",
        activation_alpha="floats",
        activation_beta="floats",
        clip="float",
        layout=AttrSpec("int", choices=(0, 1)),
        **extra,
    )


def _verify_recurrent(op: Operation) -> None:
    x, w, r = op.operands[:3]
    assert x is not None and w is not None and r is not None
    if not x.type.is_float or x.type.dtype != w.type.dtype or w.type.dtype != r.type.dtype:
        raise VerifyError(op, f"type mismatch: X, W and R of '{op.name}' must share one float type")
    if x.type.rank != 3 or w.type.rank != 3 or r.type.rank != 3:
        raise VerifyError(op, f"'{op.name}' needs X, W and R of rank 3")
    for res in op.results:
        if res.type.dtype != x.type.dtype:
            raise VerifyError(op, f"type mismatch: result {res.type} of '{op.name}' differs from X's element type")
    hidden = op.attributes.get("hidden_size")
    gates = {"onnx.LSTM": 4, "onnx.GRU": 3}.get(op.name, 1)
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        if hidden < 1:
            raise VerifyError(op, f"hidden_size of '{op.name}' must be at least 1, got {hidden}")
        for name, t in (("W", w.type), ("R", r.type)):
            if isinstance(t.shape[1], int) and t.shape[1] != gates * hidden:
                raise VerifyError(op, f"{name} of '{op.name}' is {t}, but hidden_size {hidden} needs {gates * hidden} rows")
        if isinstance(x.type.shape[2], int) and isinstance(w.type.shape[2], int) and x.type.shape[2] != w.type.shape[2]:
            raise VerifyError(op, f"X of '{op.name}' is {x.type}, but W is {w.type}: their input sizes differ")
        if isinstance(r.type.shape[2], int) and r.type.shape[2] != hidden:
            raise VerifyError(op, f"R of '{op.name}' is {r.type}, but hidden_size {hidden} needs {hidden} columns")
    clip = op.attributes.get("clip")
    if isinstance(clip, float) and not clip > 0:
        raise VerifyError(op, f"clip of '{op.name}' must be positive, got {clip}")
    names = op.attributes.get("activations")
    if isinstance(names, tuple):
        unknown = [n for n in names if n.lower() not in {a.lower() for a in RNN_ACTIVATIONS}]
        if unknown:
            raise VerifyError(op, f"unknown activation '{unknown[0]}' (ONNX allows: {', '.join(RNN_ACTIVATIONS)})")


define("onnx.LSTM", "Long short-term memory over a whole sequence (gate order i, o, f, c).",
       operands="X, W, R, B?, sequence_lens?, initial_h?, initial_c?, P?", results="Y, Y_h, Y_c",
       attributes=_recurrent_attrs(input_forget=AttrSpec("int", choices=(0, 1))), verify=_verify_recurrent)
define("onnx.GRU", "Gated recurrent unit over a whole sequence (gate order z, r, h).",
       operands="X, W, R, B?, sequence_lens?, initial_h?", results="Y, Y_h",
       attributes=_recurrent_attrs(linear_before_reset=AttrSpec("int", choices=(0, 1))), verify=_verify_recurrent)
define("onnx.RNN", "Elman recurrent layer over a whole sequence.",
       operands="X, W, R, B?, sequence_lens?, initial_h?", results="Y, Y_h",
       attributes=_recurrent_attrs(), verify=_verify_recurrent)

for _name in ("Add", "Sub", "Mul", "Div", "Pow"):
    define(f"onnx.{_name}", f"Elementwise {_name} with numpy broadcasting.", operands="A, B", results="C",
           verify=elementwise if _name != "Pow" else None)

for _name in ("Sigmoid", "Tanh", "Relu", "Sqrt", "Identity", "Neg", "Exp", "Log", "Abs"):
    define(f"onnx.{_name}", f"Elementwise {_name}.", operands="X", results="Y", verify=unary_same_type)

# Monotonic standalone activations (the ONNX RNN set's functions as operators): lift-activation maps them to
# cim.activation, so that fuse-activation can compute them in an NL-ADC.
define("onnx.HardSigmoid", "Elementwise max(0, min(1, alpha * x + beta)).", operands="X", results="Y",
       attributes=attrs(alpha="float", beta="float"), verify=unary_same_type)
for _name in ("LeakyRelu", "Elu", "ThresholdedRelu"):
    define(f"onnx.{_name}", f"Elementwise {_name} with parameter alpha.", operands="X", results="Y",
           attributes=attrs(alpha="float"), verify=unary_same_type)
for _name in ("Softsign", "Softplus"):
    define(f"onnx.{_name}", f"Elementwise {_name}.", operands="X", results="Y", verify=unary_same_type)
define("onnx.Clip", "Elementwise clamp to [min, max] (absent bound: unbounded; opset-6 attributes or opset-11 inputs).",
       operands="input, min?, max?", results="output", attributes=attrs(min="float", max="float"))

define("onnx.Softmax", "Softmax along one axis (opset 13 semantics).", operands="input", results="output",
       attributes=attrs(axis="int"), verify=unary_same_type)
define("onnx.LogSoftmax", "Log of softmax along one axis (opset 13 semantics).", operands="input", results="output",
       attributes=attrs(axis="int"), verify=unary_same_type)
define("onnx.Gemm", "alpha * A' B' + beta * C.", operands="A, B, C?", results="Y",
       attributes=attrs(alpha="float", beta="float", transA="int", transB="int"), verify=same_dtype)
define("onnx.MatMul", "Numpy-semantics matrix product.", operands="A, B", results="Y", verify=same_dtype)
define("onnx.Conv", "N-d convolution (1-D and 2-D supported).", operands="X, W, B?", results="Y",
       attributes=attrs(auto_pad=AttrSpec("str", choices=("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")),
                        dilations="ints", group="int", kernel_shape="ints", pads="ints", strides="ints"),
       verify=same_dtype)
define("onnx.Gather", "Take slices along an axis by index (embedding lookup).", operands="data, indices",
       results="output", attributes=attrs(axis="int"))
define("onnx.Pad", "Pad with a constant, reflection or edge values.", operands="data, pads, constant_value?, axes?",
       results="output", attributes=attrs(mode=AttrSpec("str", choices=("constant", "reflect", "edge", "wrap"))))
define("onnx.ReduceMean", "Mean over axes.", operands="data, axes?", results="reduced",
       attributes=attrs(keepdims="int", noop_with_empty_axes="int"))
define("onnx.ArgMax", "Index of the maximum along an axis.", operands="data", results="reduced",
       attributes=attrs(axis="int", keepdims="int", select_last_index="int"))
define("onnx.Slice", "Strided slice.", operands="data, starts, ends, axes?, steps?", results="output")
define("onnx.Concat", "Join tensors along an axis.", operands="inputs*", results="concat_result",
       attributes=attrs(axis="int!"), verify=same_dtype)
define("onnx.Unsqueeze", "Insert unit axes.", operands="data, axes", results="expanded")
define("onnx.Squeeze", "Remove unit axes.", operands="data, axes?", results="squeezed")
define("onnx.Transpose", "Permute axes.", operands="data", results="transposed", attributes=attrs(perm="ints"))
define("onnx.Reshape", "Change the shape.", operands="data, shape", results="reshaped", attributes=attrs(allowzero="int"))
define("onnx.Cast", "Convert the element type.", operands="input", results="output", attributes=attrs(to="int!"))
define("onnx.Shape", "The shape as an i64 vector.", operands="data", results="shape",
       attributes=attrs(start="int", end="int"))
define("onnx.Expand", "Broadcast to a shape.", operands="input, shape", results="output")
define("onnx.ConstantOfShape", "A tensor of the given shape filled with one value.", operands="input",
       results="output", attributes=attrs(value="tensor"))

define("onnx.Less", "Elementwise a < b (broadcasting), giving bool.", operands="A, B", results="C")
define("onnx.Where", "Elementwise select: condition ? X : Y (broadcasting).", operands="condition, X, Y", results="output")
