"""Import an ONNX model into the ``onnx`` dialect.

What real exporters emit is handled here, not by the user: the model is
checked and shape-inferred; subgraphs over initializers (PyTorch's gate
reordering through Slice/Concat/Unsqueeze) and shape computations over static
shapes are folded into constants with the interpreter's own kernels; attributes
that later opsets turned into inputs become operands, so that the IR has one
form per op. Batch and sequence dims stay symbolic unless ``input_shapes``
fixes them. Every op's location is ``<model file>:<node name>``.

onnx's shape inference loses symbols at shape arithmetic: the dynamo exporter
reshapes through ``Shape -> Slice -> Mul -> Concat -> Reshape``, and onnx
types the result ``[seq, batch, unk__0]`` even though the last dim is 16.  The
importer therefore tracks the *elements* of every small integer tensor as dims
(``[seq, batch, 1, 16]``), types Reshape/Expand/ConstantOfShape from them, and
re-infers every node whose onnx type has an invented or unknown dim from its
operands' (already resolved) types.  The width an MVM contracts is taken
from its constant weights where the operand's type lost it; one that nothing
fixes is an error naming the tensor, not a surprise in a later pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cimc.attributes import AttrValue, Tensor
from cimc.bound_dims import bind_input_dims, describe, dims_bound_by_initializers
from cimc.diagnostics import CimcError
from cimc.dialects import VerifyError, lookup
from cimc.interpreter import run_kernel
from cimc.ir import Block, Module, Operation, Value
from cimc.onnx_reader import read_model
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
    """Load and check a model file (external data is read from its folder).

    The checker runs on the model's skeleton (:func:`_skeleton`: large initializers as typed inputs), not on the
    file: it would parse the whole file once more (0.2 s and twice the weights in memory for 67 MB of them). What
    it leaves out of the large initializers is their data, which :func:`numpy_helper.to_array` then reads and
    refuses (as unreadable) where it does not fill its dims.
    """
    return _read_checked(path, lambda name: (onnx.load(name), []))[0]


def import_onnx(path: str | Path, input_shapes: Mapping[str, Sequence[DimSpec]] | None = None) -> Module:
    """Import the model file at ``path``; see :func:`import_model`.

    The file is read by :func:`cimc.onnx_reader.read_model`: the large initializers' data goes from the file
    straight into the arrays the module's constants hold, so that the import holds the weights once (``onnx.load``
    then ``to_array`` held them three times at its peak, twice after).
    """
    model, arrays = _read_checked(path, read_model)
    return import_model(model, Path(path).name, input_shapes, arrays)


def _read_checked(path: str | Path, read: Callable[[str], tuple[onnx.ModelProto, list[np.ndarray | None]]]
                  ) -> tuple[onnx.ModelProto, list[np.ndarray | None]]:
    """``read(path)`` (a model and its taken-out arrays, as ``read_model`` gives them), checked as :func:`load_onnx` says."""
    try:
        model, arrays = read(str(path))
    except FileNotFoundError:
        raise CimcError(f"cannot read {path}: no such file") from None
    except Exception as e:  # noqa: BLE001  (protobuf raises several unrelated types for garbage)
        raise CimcError(f"cannot read {path}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    try:
        onnx.checker.check_model(_skeleton(model, declared_outputs=True))
    except onnx.checker.ValidationError as e:
        raise CimcError(f"{path} is not a valid ONNX model: {_first_line(e)}") from None
    except UnicodeDecodeError:  # the checker's own message quotes a name that is not UTF-8
        raise CimcError(f"{path} is not a valid ONNX model: it holds a name or string that is not UTF-8") from None
    return model, arrays


def import_model(model: onnx.ModelProto, source: str = "model.onnx",
                 input_shapes: Mapping[str, Sequence[DimSpec]] | None = None,
                 arrays: Sequence[np.ndarray | None] = ()) -> Module:
    """Build an ``onnx``-dialect module from a checked model.

    ``input_shapes`` fixes dims of graph inputs by name (an int fixes a dim, a
    string renames its symbol, None leaves it as the model has it). ``arrays``
    holds, per entry of ``graph.initializer``, the data of an initializer whose
    message has none (as :func:`cimc.onnx_reader.read_model` gives it), or None:
    each array is taken over as it is, and must be the only reference to its data.
    """
    skeleton = _skeleton(model)
    _apply_input_shapes(skeleton, input_shapes or {})
    skeleton = _infer_shapes(skeleton, source)
    bound = dims_bound_by_initializers(skeleton, model.graph.initializer)
    if bound:  # an initial state fixes the batch: infer again with it bound (see cimc.bound_dims)
        skeleton.graph.ClearField("value_info")
        bind_input_dims(skeleton, bound)
        skeleton = _infer_shapes(skeleton, source)
    declared = {o.name: t for o in model.graph.output if (t := _onnx_type(o.type, f"output '{o.name}'")) is not None}
    initializers = list(model.graph.initializer)
    module = _Importer(skeleton, initializers, list(arrays) + [None] * (len(initializers) - len(arrays)),
                       declared, source).build()
    if bound:
        module.attributes["bound_dims"] = describe(bound)
    return module


def _infer_shapes(skeleton: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001  (onnx raises InferenceError and RuntimeError variants)
        raise CimcError(f"shape inference failed on {source}: {_first_line(e)}") from None


_SKELETON_LIMIT = 1024  # elements: initializers up to this size keep their data for onnx's data propagation


def _skeleton(model: onnx.ModelProto, declared_outputs: bool = False) -> onnx.ModelProto:
    """The model without its large initializers' data, for shape inference.

    Weights only matter to inference by their types, so they enter as typed
    graph inputs: the weights are then never serialized or copied (onnx's
    inference round-trips the whole model through bytes). Exporters' own
    ``value_info`` and the graph outputs' declared shapes are left out: they can
    be stale (the dynamo exporter records traced sizes for dims it declares
    symbolic), so every type is inferred afresh; a declared output dim only
    fills in one inference could not name. ``declared_outputs`` keeps them, for
    the checker (which wants the shape field of a typed output).
    """
    skeleton = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(skeleton, field, getattr(model, field))
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    for output in graph.output if not declared_outputs else ():
        output.type.tensor_type.ClearField("shape")
    declared = {i.name for i in source.input}
    for init in source.initializer:
        if int(np.prod(init.dims)) <= _SKELETON_LIMIT or init.data_location == onnx.TensorProto.EXTERNAL:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skeleton


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
    def __init__(self, model: onnx.ModelProto, initializers: list[onnx.TensorProto], arrays: list[np.ndarray | None],
                 declared_outputs: Mapping[str, TensorType], source: str) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = initializers
        self.arrays = arrays
        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.types: dict[str, TensorType] = {}
        for info in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            t = _onnx_type(info.type, f"value '{info.name}'")
            if t is not None:
                self.types[info.name] = t
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        # The elements of small 1-D/0-D integer tensors computed from shapes, as dims.
        self.shape_values: dict[str, tuple[Dim, ...]] = {}
        # Symbols the graph inputs declare; any other symbol onnx reports is one it invented.
        self.input_symbols = {d for inp in self.graph.input for d in (self.types[inp.name].shape if inp.name in self.types else ())
                              if isinstance(d, str)}
        for name, declared in declared_outputs.items():
            inferred = self.types.get(name)
            self.types[name] = declared if inferred is None else _merge(inferred, declared, self._is_known)
        self.block = Block()

    def build(self) -> Module:
        initializers = {init.name for init in self.initializers}
        input_names: list[str] = []
        for inp in self.graph.input:
            if inp.name in initializers:
                continue  # IR < 4 lists initializers as inputs too; they are weights
            t = self.types.get(inp.name)
            if t is None:
                raise CimcError(f"graph input '{inp.name}' has no tensor type")
            self.values[inp.name] = self.block.add_arg(t, inp.name)
            input_names.append(inp.name)
        for index, init in enumerate(self.initializers):
            array, self.arrays[index] = self.arrays[index], None  # handed over: the constant's Tensor is its only holder
            if array is None:
                try:
                    array = numpy_helper.to_array(init)
                except (ValueError, TypeError, KeyError, OSError) as e:  # data that does not fill its dims, an unknown type
                    raise CimcError(f"{self.source}: initializer '{init.name}' is unreadable: {_first_line(e)}") from None
            self._constant(init.name, array, location=None)
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
        try:
            verify(module)
        except VerifyError as e:  # an attribute value onnx.checker lets through (direction = "sideways")
            where = f"{e.op.location}: " if e.op is not None and e.op.location else f"{self.source}: "
            raise CimcError(where + str(e)) from None
        return module

    def _location(self, node: onnx.NodeProto, index: int) -> str:
        return f"{self.source}:{node.name or f'{node.op_type}_{index}'}"

    def _constant(self, name: str, array: np.ndarray, location: str | None) -> Value:
        array = np.asarray(array)
        try:
            tensor = Tensor.adopt(array, key=name)  # a fresh array (to_array's) is taken over, a view is copied
            op = Operation("builtin.constant", [], [tensor.type], {"value": tensor}, location=location, result_names=[name])
        except KeyError:
            raise CimcError(f"constant '{name}' has element type {array.dtype}, which cimc does not support") from None
        self.block.append(op)
        self.values[name] = op.result
        self.constants[name] = tensor.array
        return op.result

    def _node(self, node: onnx.NodeProto, index: int) -> None:
        loc = self._location(node, index)
        if node.domain not in ("", "ai.onnx") or (node.op_type != "Constant" and lookup(f"onnx.{node.op_type}") is None):
            domain = f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            raise CimcError(
                f"node '{node.name or node.op_type + '_' + str(index)}' has op type '{node.op_type}'{domain} "
                f"(opset {self.opset}), which cimc cannot import; supported ops: {', '.join(supported_ops())}")
        try:
            attrs = {a.name: _attr_value(a, node, loc) for a in node.attribute}
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as e:  # a string that is not UTF-8, a bad tensor
            raise CimcError(f"{loc}: an attribute of {node.op_type} is unreadable: {_first_line(e)}") from None
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
        self._track_shape_value(node, op_type, inputs, attrs, result_types)
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
        reinferred: dict[str, TensorType] | None = None
        for i, name in enumerate(names):
            t = self.types.get(name) if name else None
            if t is None and op_type in _RECURRENT:
                t = _recurrent_result_type(self.values[inputs[0]].type, attrs, i, loc)  # type: ignore[index]
            if t is None:
                raise CimcError(f"{loc}: shape inference could not type output '{name}' of {op_type}")
            if i == 0 and self._is_stale(t):
                derived = self._shape_rule(op_type, inputs, attrs, t)
                if derived is not None:
                    t = _merge(t, derived, self._is_known)
            if self._is_stale(t):
                if reinferred is None:
                    reinferred = self._reinfer(node)
                if name in reinferred:
                    t = _merge(t, reinferred[name], self._is_known)
            types.append(t)
        self._require_static_features(op_type, inputs, attrs, loc)
        return types

    def _is_known(self, dim: Dim) -> bool:
        return isinstance(dim, int) or dim in self.input_symbols

    def _is_stale(self, t: TensorType) -> bool:
        """Whether a dim of ``t`` is one onnx invented (``unk__0``) or lost (``?``) while the inputs did not have it."""
        return any(not self._is_known(d) for d in t.shape)

    def _require_static_features(self, op_type: str, inputs: list[str | None], attrs: dict[str, AttrValue], loc: str) -> None:
        """The dim a weight matrix contracts must be known: it is the number of crossbar rows.

        Other dims may stay symbolic or unknown (a Pad over ``seq`` gives an
        extent no symbol names).  The contracted dim is taken from the constant
        weight when the operand's type lost it (a valid model must agree with
        its weights), and refused with a clear error when nothing fixes it.
        """
        weight_axis = {"LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2), "Conv": (1, 1),
                       "Gemm": (1, 1 if attrs.get("transB", 0) else 0), "MatMul": (1, -2)}
        if op_type not in weight_axis:
            return
        axis = 0 if op_type == "Gemm" and attrs.get("transA", 0) else 1 if op_type == "Conv" else -1
        name = inputs[0]
        value = self.values[name]  # type: ignore[index]
        t = value.type
        if t.rank < 2 or isinstance(t.shape[axis], int):
            return
        which, waxis = weight_axis[op_type]
        weight = self.constants.get(inputs[which]) if len(inputs) > which and inputs[which] else None
        if weight is not None and weight.ndim >= 2:
            width = int(weight.shape[waxis]) * (int(attrs.get("group", 1)) if op_type == "Conv" else 1)  # type: ignore[arg-type]
            shape = list(t.shape)
            shape[axis] = width
            value.type = t.with_shape(tuple(shape))
            return
        if op_type == "MatMul":
            return  # a product of two computed tensors stays digital; its width is not a crossbar's
        args = ", ".join(f"{a.name}: {a.type}" for a in self.block.args)
        raise CimcError(
            f"{loc}: the feature dim of '{name}' ({t}), the input of {op_type}, cannot be resolved from the graph "
            f"inputs ({args}) and initializers; fix the inputs' dims with --input-shape NAME=D0,D1,...")

    def _reinfer(self, node: onnx.NodeProto) -> dict[str, TensorType]:
        """Run onnx's inference on this one node, with the operands' resolved types and constant data."""
        schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        types: dict[str, onnx.TypeProto] = {}
        data: dict[str, onnx.TensorProto] = {}
        for name in node.input:
            if not name:
                continue
            t = self.values[name].type
            types[name] = onnx.helper.make_tensor_type_proto(
                onnx.helper.np_dtype_to_tensor_dtype(t.np_dtype), [d for d in t.shape])
            if name in self.constants:
                data[name] = numpy_helper.from_array(self.constants[name], name)
            elif name in self.shape_values and all(isinstance(d, int) for d in self.shape_values[name]):
                data[name] = numpy_helper.from_array(
                    np.asarray(self.shape_values[name], np.int64).reshape(t.shape if t.is_static else (-1,)), name)
        try:
            out = onnx.shape_inference.infer_node_outputs(schema, node, types, data, opset_imports=list(self.model.opset_import))
        except Exception:  # noqa: BLE001  (onnx raises InferenceError and RuntimeError variants)
            return {}
        return {k: t for k, v in out.items() if (t := _onnx_type(v, f"value '{k}'")) is not None}

    def _dims_of(self, name: str | None) -> tuple[Dim, ...] | None:
        """The elements of an integer tensor as dims, if they are known."""
        if name is None:
            return None
        if name in self.shape_values:
            return self.shape_values[name]
        array = self.constants.get(name)
        if array is not None and array.dtype.kind in "iu" and array.ndim <= 1 and array.size <= 64:
            return tuple(int(v) for v in array.reshape(-1))
        return None

    def _shape_rule(self, op_type: str, inputs: list[str | None], attrs: dict[str, AttrValue],
                    inferred: TensorType) -> TensorType | None:
        """Type the ops whose result shape is an operand's *value*, from the tracked dims."""
        if op_type == "Reshape":
            target = self._dims_of(inputs[1])
            if target is None:
                return None
            return inferred.with_shape(_reshape_dims(self.values[inputs[0]].type.shape, target,  # type: ignore[index]
                                                     bool(attrs.get("allowzero", 0))))
        if op_type == "Expand":
            target = self._dims_of(inputs[1])
            if target is None:
                return None
            return inferred.with_shape(_broadcast_dims(self.values[inputs[0]].type.shape, target))  # type: ignore[index]
        if op_type == "ConstantOfShape":
            target = self._dims_of(inputs[0])
            return None if target is None else inferred.with_shape(target)
        return None

    def _track_shape_value(self, node: onnx.NodeProto, op_type: str, inputs: list[str | None],
                           attrs: dict[str, AttrValue], result_types: list[TensorType]) -> None:
        """Record the elements of a shape computation's result as dims (Shape, Slice, Concat, Gather, arithmetic)."""
        result = result_types[0]
        if result.dtype not in ("i64", "i32") or result.rank > 1 or not node.output or not node.output[0]:
            return
        dims: tuple[Dim, ...] | None = None
        if op_type == "Shape":
            shape = self.values[inputs[0]].type.shape  # type: ignore[index]
            rank = len(shape)
            start = int(attrs.get("start", 0))  # type: ignore[arg-type]
            end = int(attrs.get("end", rank))  # type: ignore[arg-type]
            dims = tuple(shape[max(start + rank if start < 0 else start, 0):end + rank if end < 0 else end])
        elif op_type == "Concat":
            parts = [self._dims_of(n) for n in inputs]
            if all(p is not None for p in parts):
                dims = tuple(d for p in parts for d in p)  # type: ignore[union-attr]
        elif op_type == "Slice":
            source, starts, ends = self._dims_of(inputs[0]), self._dims_of(inputs[1]), self._dims_of(inputs[2])
            axes = self._dims_of(inputs[3]) if len(inputs) > 3 else (0,)
            steps = self._dims_of(inputs[4]) if len(inputs) > 4 else (1,)
            if source is not None and starts and ends and axes in ((0,), (-1,)) and steps and len(starts) == 1:
                dims = source[slice(starts[0], ends[0], steps[0])]  # type: ignore[misc]
        elif op_type == "Gather":
            source, index = self._dims_of(inputs[0]), self._dims_of(inputs[1])
            if source is not None and index is not None and all(isinstance(i, int) for i in index):
                dims = tuple(source[i] for i in index)  # type: ignore[index]
        elif op_type in ("Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity"):
            dims = self._dims_of(inputs[0])
        elif op_type in ("Mul", "Add", "Sub", "Div"):
            a, b = self._dims_of(inputs[0]), self._dims_of(inputs[1])
            if a is not None and b is not None and (len(a) == len(b) or 1 in (len(a), len(b))):
                n = max(len(a), len(b))
                dims = tuple(_dim_arith(op_type, a[i % len(a)], b[i % len(b)]) for i in range(n))
        if dims is not None:
            self.shape_values[node.output[0]] = dims

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


def _merge(inferred: TensorType, derived: TensorType, known: Callable[[Dim], bool]) -> TensorType:
    """Keep onnx's dims where they are known, take the derived ones where onnx lost them."""
    if derived.rank != inferred.rank:
        return inferred
    return inferred.with_shape(tuple(d if known(d) else e for d, e in zip(inferred.shape, derived.shape)))


def _dim_arith(op_type: str, a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        if op_type == "Div":
            return a // b if b else None
        return {"Mul": a * b, "Add": a + b, "Sub": a - b}[op_type]
    if op_type in ("Mul", "Div") and b == 1:
        return a
    if op_type == "Mul" and a == 1:
        return b
    if op_type in ("Add", "Sub") and b == 0:
        return a
    return None


def _product(dims: Sequence[Dim]) -> tuple[int, Counter[str]] | None:
    """A product of dims as coefficient times symbols; None if a dim is unknown."""
    coef, symbols = 1, Counter[str]()
    for d in dims:
        if isinstance(d, int):
            coef *= d
        elif d is None:
            return None
        else:
            symbols[d] += 1
    return coef, symbols


def _reshape_dims(source: tuple[Dim, ...], target: tuple[Dim, ...], allowzero: bool) -> tuple[Dim, ...]:
    """Reshape's output dims: 0 copies the input dim (unless allowzero), one -1 takes what is left."""
    dims = [source[i] if d == 0 and not allowzero and i < len(source) else d for i, d in enumerate(target)]
    if -1 in dims:
        at = dims.index(-1)
        total, rest = _product(source), _product(dims[:at] + dims[at + 1:])
        dims[at] = None
        if total is not None and rest is not None and rest[0] and total[0] % rest[0] == 0 and not rest[1] - total[1]:
            coef, left = total[0] // rest[0], total[1] - rest[1]
            symbols = sorted(left.elements())
            if not symbols:
                dims[at] = coef
            elif coef == 1 and len(symbols) == 1:
                dims[at] = symbols[0]
    return tuple(dims)


def _broadcast_dims(source: tuple[Dim, ...], target: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max(len(source), len(target))
    a = (1,) * (rank - len(source)) + source
    b = (1,) * (rank - len(target)) + target
    return tuple(y if x == 1 else x if y == 1 else (x if isinstance(x, int) or not isinstance(y, int) else y)
                 for x, y in zip(a, b))


def _recurrent_result_type(x: TensorType, attrs: Mapping[str, AttrValue], index: int, loc: str) -> TensorType:
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    hidden = attrs.get("hidden_size")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        # onnxruntime refuses such a node as well: its RNN kernels require a positive hidden_size.
        raise CimcError(f"{loc}: a recurrent node needs a positive integer attribute hidden_size, got {hidden!r}")
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
