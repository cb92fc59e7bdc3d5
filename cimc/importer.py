"""Import an ONNX model into the ``onnx`` dialect.

What real exporters emit is handled here, not by the user: the model is
checked and shape-inferred; subgraphs over initializers (PyTorch's gate
reordering through Slice/Concat/Unsqueeze) and shape computations over static
shapes are folded into constants with the interpreter's own kernels; attributes
that later opsets turned into inputs become operands, so that the IR has one
form per op. Batch and sequence dims stay symbolic unless ``input_shapes``
fixes them. Every op's location is ``<model file>:<node name>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cimc.attributes import AttrValue, Tensor
from cimc.diagnostics import CimcError
from cimc.dialects import lookup
from cimc.interpreter import run_kernel
from cimc.ir import Block, Module, Operation, Value
from cimc.passes.dce import eliminate_dead_code
from cimc.types import Dim, TensorType, dtype_name
from cimc.verifier import verify

DimSpec = int | str | None

_RECURRENT = ("LSTM", "GRU", "RNN")
_NEVER_FOLD = {"LSTM", "GRU", "RNN"}
_FOLD_LIMIT = 1 << 24  # elements: a folded constant larger than this stays a computation
_ATTRS_TO_DROP = {("Cast", "saturate"), ("Gemm", "broadcast")}


def supported_ops() -> list[str]:
    from cimc.dialects import dialects

    return sorted(["Constant"] + [d.name.split(".", 1)[1] for d in dialects()["onnx"]])


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check a model file (external data is read from its folder)."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise CimcError(f"cannot read {path}: no such file") from None
    except Exception as e:  # noqa: BLE001  (protobuf raises several unrelated types for garbage)
        raise CimcError(f"cannot read {path}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise CimcError(f"{path} is not a valid ONNX model: {_first_line(e)}") from None
    return model


def import_onnx(path: str | Path, input_shapes: Mapping[str, Sequence[DimSpec]] | None = None) -> Module:
    """Import the model file at ``path``; see :func:`import_model`."""
    return import_model(load_onnx(path), Path(path).name, input_shapes)


def import_model(model: onnx.ModelProto, source: str = "model.onnx",
                 input_shapes: Mapping[str, Sequence[DimSpec]] | None = None) -> Module:
    """Build an ``onnx``-dialect module from a checked model.

    ``input_shapes`` fixes dims of graph inputs by name (an int fixes a dim, a
    string renames its symbol, None leaves it as the model has it).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _apply_input_shapes(model, input_shapes or {})
    # Exporters' own value_info can be stale (the dynamo exporter records traced
    # sizes for dims it declares symbolic); infer every intermediate type afresh.
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001  (onnx raises InferenceError and RuntimeError variants)
        raise CimcError(f"shape inference failed on {source}: {_first_line(e)}") from None
    return _Importer(model, source).build()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _apply_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[DimSpec]]) -> None:
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise CimcError(f"--input-shape names '{name}', but the model's inputs are: {', '.join(inputs)}")
        tensor_type = inputs[name].type.tensor_type
        old = tensor_type.shape.dim
        if len(old) != len(dims):
            raise CimcError(f"--input-shape gives {len(dims)} dims for '{name}', which has rank {len(old)}")
        for i, (d, new) in enumerate(zip(old, dims)):
            if new is None:
                continue
            if isinstance(new, int):
                if d.HasField("dim_value") and d.dim_value != new:
                    raise CimcError(f"--input-shape sets dim {i} of '{name}' to {new}, but the model fixes it at {d.dim_value}")
                d.dim_value = new
            else:
                d.dim_param = new


def _symbol(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else "d" + cleaned


def _onnx_type(type_proto: onnx.TypeProto, what: str) -> TensorType | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    tt = type_proto.tensor_type
    dtype = _dtype(tt.elem_type, what)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(_symbol(d.dim_param))
        else:
            dims.append(None)
    return TensorType(dtype, tuple(dims))


def _dtype(elem_type: int, what: str) -> str:
    try:
        return dtype_name(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        raise CimcError(f"{what} has element type {onnx.TensorProto.DataType.Name(elem_type)}, which cimc does not support") from None


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.model = model
        self.graph = model.graph
        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.types: dict[str, TensorType] = {}
        for info in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            t = _onnx_type(info.type, f"value '{info.name}'")
            if t is not None:
                self.types[info.name] = t
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.block = Block()

    def build(self) -> Module:
        initializers = {init.name: init for init in self.graph.initializer}
        input_names: list[str] = []
        for inp in self.graph.input:
            if inp.name in initializers:
                continue  # IR < 4 lists initializers as inputs too; they are weights
            t = self.types.get(inp.name)
            if t is None:
                raise CimcError(f"graph input '{inp.name}' has no tensor type")
            self.values[inp.name] = self.block.add_arg(t, inp.name)
            input_names.append(inp.name)
        for init in self.graph.initializer:
            self._constant(init.name, numpy_helper.to_array(init), location=None)
        for index, node in enumerate(self.graph.node):
            self._node(node, index)
        outputs = []
        for out in self.graph.output:
            if out.name not in self.values:
                raise CimcError(f"graph output '{out.name}' is not produced by any node")
            outputs.append(self.values[out.name])
        self.block.append(Operation("builtin.return", outputs))
        eliminate_dead_code(self.block)
        module = Module(self.graph.name or Path(self.source).stem, self.block, {
            "source": self.source,
            "opset": self.opset,
            "input_names": tuple(input_names),
            "output_names": tuple(o.name for o in self.graph.output),
        })
        verify(module)
        return module

    def _location(self, node: onnx.NodeProto, index: int) -> str:
        return f"{self.source}:{node.name or f'{node.op_type}_{index}'}"

    def _constant(self, name: str, array: np.ndarray, location: str | None) -> Value:
        array = np.asarray(array)
        try:
            tensor = Tensor(array, key=name)
            op = Operation("builtin.constant", [], [tensor.type], {"value": tensor}, location=location, result_names=[name])
        except KeyError:
            raise CimcError(f"constant '{name}' has element type {array.dtype}, which cimc does not support") from None
        self.block.append(op)
        self.values[name] = op.result
        self.constants[name] = array
        return op.result

    def _node(self, node: onnx.NodeProto, index: int) -> None:
        loc = self._location(node, index)
        if node.domain not in ("", "ai.onnx") or (node.op_type != "Constant" and lookup(f"onnx.{node.op_type}") is None):
            domain = f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            raise CimcError(
                f"node '{node.name or node.op_type + '_' + str(index)}' has op type '{node.op_type}'{domain} "
                f"(opset {self.opset}), which cimc cannot import; supported ops: {', '.join(supported_ops())}")
        attrs = {a.name: _attr_value(a, node, loc) for a in node.attribute}
        if node.op_type == "Constant":
            self._constant(node.output[0], _constant_value(attrs, loc), loc)
            return
        inputs = [n or None for n in node.input]
        op_type, inputs, attrs = self._modernize(node.op_type, inputs, attrs, loc)
        for name in inputs:
            if name is not None and name not in self.values:
                raise CimcError(f"{loc}: input '{name}' is not defined before node '{node.name}' (nodes must be in topological order)")
        opdef = lookup(f"onnx.{op_type}")
        assert opdef is not None
        for key in list(attrs):
            if key not in opdef.attributes:
                if (op_type, key) in _ATTRS_TO_DROP:
                    del attrs[key]
                else:
                    raise CimcError(f"{loc}: attribute '{key}' of {op_type} is not supported (supported: {', '.join(opdef.attributes) or 'none'})")
        while inputs and inputs[-1] is None:
            inputs.pop()
        if self._try_fold(node, op_type, inputs, attrs, loc):
            return
        result_types = self._result_types(node, op_type, inputs, attrs, loc)
        op = Operation(f"onnx.{op_type}", [self.values[n] if n else None for n in inputs], result_types, attrs,
                       location=loc, result_names=[n or None for n in node.output] + [None] * (len(result_types) - len(node.output)))
        self.block.append(op)
        for name, result in zip(node.output, op.results):
            if name:
                self.values[name] = result

    def _try_fold(self, node: onnx.NodeProto, op_type: str, inputs: list[str | None], attrs: dict[str, AttrValue], loc: str) -> bool:
        if op_type in _NEVER_FOLD:
            return False
        if op_type == "Shape":
            source = self.values[inputs[0]].type  # type: ignore[index]
            if not source.is_static:
                return False
            args: list[np.ndarray | None] = [np.zeros(source.shape, np.int8)]
        elif all(n is None or n in self.constants for n in inputs):
            args = [None if n is None else self.constants[n] for n in inputs]
        else:
            return False
        try:
            results = run_kernel(f"onnx.{op_type}", attrs, args)
        except CimcError as e:
            raise CimcError(f"{loc}: cannot evaluate {op_type} on its constant inputs: {e.message}") from None
        if any(r.size > _FOLD_LIMIT for r in results):
            return False
        for name, array in zip(node.output, results):
            if name:
                self._constant(name, array, loc)
        return True

    def _result_types(self, node: onnx.NodeProto, op_type: str, inputs: list[str | None],
                      attrs: dict[str, AttrValue], loc: str) -> list[TensorType]:
        opdef = lookup(f"onnx.{op_type}")
        assert opdef is not None
        count = len(opdef.results)
        names = list(node.output) + [""] * (count - len(node.output))
        types: list[TensorType] = []
        for i, name in enumerate(names):
            t = self.types.get(name) if name else None
            if t is None and op_type in _RECURRENT:
                t = _recurrent_result_type(self.values[inputs[0]].type, attrs, i)  # type: ignore[index]
            if t is None:
                raise CimcError(f"{loc}: shape inference could not type output '{name}' of {op_type}")
            types.append(t)
        return types

    def _modernize(self, op_type: str, inputs: list[str | None], attrs: dict[str, AttrValue],
                   loc: str) -> tuple[str, list[str | None], dict[str, AttrValue]]:
        """Rewrite opset-specific forms into the newest opset's form."""
        def moved(attr: str, dtype: type = np.int64, default: object = None) -> str | None:
            value = attrs.pop(attr, default)
            if value is None:
                return None
            name = f"{loc}:{attr}"
            self._constant(name, np.asarray(value, dtype=dtype), loc)
            return name

        if op_type in ("Unsqueeze", "Squeeze") and self.opset < 13:
            return op_type, [inputs[0], moved("axes")], attrs
        if op_type == "ReduceMean" and self.opset < 18:
            return op_type, [inputs[0], moved("axes")], attrs
        if op_type == "Slice" and self.opset < 10:
            return op_type, [inputs[0], moved("starts"), moved("ends"), moved("axes")], attrs
        if op_type == "Pad" and self.opset < 11:
            pads = moved("pads")
            value = moved("value", np.float32, 0.0)
            return op_type, [inputs[0], pads, value], attrs
        if op_type in ("Softmax", "LogSoftmax") and self.opset < 13:
            return self._legacy_softmax(op_type, inputs, attrs, loc)
        return op_type, inputs, attrs

    def _legacy_softmax(self, op_type: str, inputs: list[str | None], attrs: dict[str, AttrValue],
                        loc: str) -> tuple[str, list[str | None], dict[str, AttrValue]]:
        """Before opset 13, Softmax flattened to 2-D at ``axis``; that equals opset 13 on the last axis only."""
        x = self.values[inputs[0]]  # type: ignore[index]
        axis = int(attrs.get("axis", 1)) % max(x.type.rank, 1)  # type: ignore[arg-type]
        if axis == x.type.rank - 1:
            return op_type, inputs, {"axis": -1}
        raise CimcError(f"{loc}: {op_type} (opset {self.opset}) over axis {axis} of a rank-{x.type.rank} tensor "
                        "flattens the trailing axes; cimc supports the legacy form only on the last axis")


def _recurrent_result_type(x: TensorType, attrs: Mapping[str, AttrValue], index: int) -> TensorType:
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    hidden = int(attrs["hidden_size"])  # type: ignore[arg-type]
    batch_first = attrs.get("layout", 0) == 1
    seq, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    if index == 0:
        shape = (batch, seq, directions, hidden) if batch_first else (seq, directions, batch, hidden)
    else:
        shape = (batch, directions, hidden) if batch_first else (directions, batch, hidden)
    return TensorType(x.dtype, shape)


def _attr_value(attr: onnx.AttributeProto, node: onnx.NodeProto, loc: str) -> AttrValue:
    A = onnx.AttributeProto
    if attr.type in (A.GRAPH, A.GRAPHS, A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS, A.TENSORS):
        raise CimcError(f"{loc}: attribute '{attr.name}' of {node.op_type} has kind {A.AttributeType.Name(attr.type)}, which cimc does not support")
    value = onnx.helper.get_attribute_value(attr)
    if attr.type == A.TENSOR:
        return Tensor(numpy_helper.to_array(value))
    if attr.type == A.STRING:
        return value.decode("utf-8")
    if attr.type == A.STRINGS:
        return tuple(v.decode("utf-8") for v in value)
    if attr.type == A.FLOAT:
        return float(value)
    if attr.type == A.FLOATS:
        return tuple(float(v) for v in value)
    if attr.type == A.INTS:
        return tuple(int(v) for v in value)
    return int(value)


def _constant_value(attrs: Mapping[str, AttrValue], loc: str) -> np.ndarray:
    if "value" in attrs:
        return attrs["value"].array  # type: ignore[union-attr]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise CimcError(f"{loc}: Constant with attributes {sorted(attrs)} is not supported (strings and sparse tensors are not)")
