"""The step program of a programming image: a small, versioned op set, written as JSON.

The compiler's IR is the compiler's business; a chip's runtime (or the
simulator) needs only what happens per time step: which array is read with
which inputs and scales, how each column is converted, which digital ops
follow, and the loop around them. ``cimc-step/1`` says exactly that, and no
more: conductances live in the image's arrays, ramps in its manifest, and
compiler-only attributes (fusion reasons, value ranges, share keys) are not
written. Reading it needs ``json`` and nothing of the compiler: no grammar, no
verifier, no dialects. :func:`validate_program` checks a document against the
op set (operand and result counts, attribute names and kinds, values defined
before use, tensors present with their declared type, arrays and ramps that
exist), and :func:`program_to_module` builds the :class:`cimc.ir.Module` the
simulator and the error bounds execute directly from it.

Every op is one JSON object::

    {"op": "read", "operands": ["6", "4"], "results": [{"name": "7", "type": "f32[batch, 31]"}],
     "attrs": {"array": 0, ...}, "stage": 1, "loc": "kws_lstm.onnx:/lstm/LSTM"}

``operands`` name values (``null``: an absent optional operand), ``stage`` is
the op's schedule stage within its block, ``loc`` the ONNX node it came from,
and a ``loop`` has a ``body`` (``args`` and ``ops``). A tensor attribute is
``{"dtype", "shape", "data"}`` inline (at most :data:`INLINE_LIMIT` finite
elements) or ``{"dtype", "shape", "npy": "program/<key>.npy"}``. A float
attribute that is not finite is the string ``"NaN"``, ``"Infinity"`` or
``"-Infinity"``, so that the file is strict JSON. docs/image-format.md is the
reference of every op.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cimc.attributes import AttrValue, Tensor, is_annotation, normalize_attr
from cimc.diagnostics import CimcError
from cimc.ir import Block, Module, Operation, Region, Value
from cimc.printer import Printer, legal_name
from cimc.types import DTYPES, Dim, TensorType, dtype_name

OP_SET = "cimc-step/1"
INLINE_LIMIT = 16


@dataclass(frozen=True)
class Attr:
    """One attribute of an op of the set: its kind, whether it is required, and its name in the Module."""

    kind: str
    required: bool = False
    ir: str | None = None  # the Module's attribute name, when it differs


@dataclass(frozen=True)
class OpSpec:
    """An op of the set: the Module op it becomes, operand/result counts (None: any number), attributes."""

    ir: str
    summary: str
    operands: tuple[int, int | None] = (1, 1)
    results: tuple[int, int | None] = (1, 1)
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    body: bool = False
    terminator: bool = False


def _a(kind: str, required: bool = False, ir: str | None = None) -> Attr:
    return Attr(kind, required, ir)


_ANY = (0, None)
_FUNCTION = {"function": _a("str", True), "alpha": _a("float"), "beta": _a("float"), "clip": _a("float")}

ANALOG_OPS: dict[str, OpSpec] = {
    "read": OpSpec("cim.tile_mvm", "one read of one array: the inputs side by side (then bias_rows ones), rows "
                   "[rows[0], rows[1]) of them driven by the DAC as x / row_scale over the full scale "
                   "dac_full_scale, on word lines from word_line; the current of each weight column j (G+ on bit line "
                   "bit_line + 2q, G- on bit_line + 2q + 1, q = column_pairs[j], j when absent; row i on word line word_lines[i], word_line + i when absent) divided by column_scale[j] is the partial sum of block "
                   "columns [cols[0], cols[1]); z_lo/z_hi are each column's conversion range",
                   operands=(1, None),
                   attrs={"tile": _a("int", True, "image.tile"), "array": _a("int", True),
                          "word_line": _a("int", True, "array_row"), "bit_line": _a("int", True, "array_col"),
                          "rows": _a("ints", True), "cols": _a("ints", True), "bias_rows": _a("int"),
                          "dac_full_scale": _a("float", ir="input_scale"), "row_scale": _a("tensor"),
                          "column_scale": _a("tensor", True, "g_scale"), "z_lo": _a("tensor"), "z_hi": _a("tensor"),
                          "block": _a("str"), "reference": _a("int", ir="image.weights"),
                          "column_pairs": _a("ints"), "word_lines": _a("ints")}),
    "analog_sum": OpSpec("cim.analog_sum", "column currents of row-split reads added on shared bit lines",
                         operands=(1, None)),
    "adc": OpSpec("cim.adc", "linear conversion of each column over the z_lo/z_hi of the read it converts, "
                  "2^bits levels", attrs={"bits": _a("int", True)}),
    "ramp": OpSpec("cim.ramp", "an NL-ADC ramp column of the manifest (its thresholds are the value)", operands=(0, 0),
                   attrs={"ramp": _a("int", True, "image.ramp")}),
    "nl_adc": OpSpec("cim.nl_adc", "columns [cols[0], cols[1]) of an analog value compared against a ramp: the code "
                     "is f(clip(z)) quantized to the ramp's output levels", operands=(2, 2),
                     attrs={"cols": _a("ints", True)}),
}

STRUCTURE_OPS: dict[str, OpSpec] = {
    "const": OpSpec("builtin.constant", "a constant tensor", operands=(0, 0), attrs={"value": _a("tensor", True)}),
    "loop": OpSpec("cim.loop", "runs its body trip-count times: operands are the trip count and the initial carried "
                   "values; the body's args are the step index and the carried values; results are the final carried "
                   "values, then the per-step scan values stacked on a new leading axis", operands=(1, None),
                   results=_ANY, attrs={"stages": _a("int", ir="sched.stages")}, body=True),
    "yield": OpSpec("cim.yield", "ends a loop body: next carried values, then this step's scan values",
                    operands=_ANY, results=(0, 0), terminator=True),
    "return": OpSpec("builtin.return", "ends the program: its outputs", operands=_ANY, results=(0, 0), terminator=True),
}

# Digital ops that survive the pipeline, with ONNX semantics (opset 13+ forms; attributes as in ONNX). Anything else
# left in a scheduled module is refused when the image is emitted.
_ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Less")
_ELEMENTWISE_UNARY = ("Sigmoid", "Tanh", "Relu", "Sqrt", "Identity", "Neg", "Exp", "Log", "Abs", "Softsign", "Softplus")
DIGITAL_OPS: dict[str, OpSpec] = {
    **{f"onnx.{n}": OpSpec(f"onnx.{n}", f"ONNX {n}, numpy broadcasting", operands=(2, 2)) for n in _ELEMENTWISE_BINARY},
    **{f"onnx.{n}": OpSpec(f"onnx.{n}", f"ONNX {n}, elementwise") for n in _ELEMENTWISE_UNARY},
    **{f"onnx.{n}": OpSpec(f"onnx.{n}", f"ONNX {n}, elementwise", attrs={"alpha": _a("float")})
       for n in ("LeakyRelu", "Elu", "ThresholdedRelu")},
    "onnx.HardSigmoid": OpSpec("onnx.HardSigmoid", "ONNX HardSigmoid", attrs={"alpha": _a("float"), "beta": _a("float")}),
    "onnx.Clip": OpSpec("onnx.Clip", "ONNX Clip (min, max as inputs or opset-6 attributes)", operands=(1, 3),
                        attrs={"min": _a("float"), "max": _a("float")}),
    "onnx.Where": OpSpec("onnx.Where", "ONNX Where", operands=(3, 3)),
    "onnx.Softmax": OpSpec("onnx.Softmax", "ONNX Softmax (opset 13)", attrs={"axis": _a("int")}),
    "onnx.LogSoftmax": OpSpec("onnx.LogSoftmax", "ONNX LogSoftmax (opset 13)", attrs={"axis": _a("int")}),
    "onnx.ArgMax": OpSpec("onnx.ArgMax", "ONNX ArgMax", attrs={"axis": _a("int"), "keepdims": _a("int"),
                                                              "select_last_index": _a("int")}),
    "onnx.ReduceMean": OpSpec("onnx.ReduceMean", "ONNX ReduceMean (opset 18: axes as input)", operands=(1, 2),
                              attrs={"keepdims": _a("int"), "noop_with_empty_axes": _a("int")}),
    "onnx.MatMul": OpSpec("onnx.MatMul", "ONNX MatMul of two digital values", operands=(2, 2)),
    "onnx.Cast": OpSpec("onnx.Cast", "ONNX Cast (to: an ONNX TensorProto element type)", attrs={"to": _a("int", True)}),
    "onnx.Gather": OpSpec("onnx.Gather", "ONNX Gather", operands=(2, 2), attrs={"axis": _a("int")}),
    "onnx.Slice": OpSpec("onnx.Slice", "ONNX Slice (opset 10+: starts, ends, axes, steps as inputs)", operands=(3, 5)),
    "onnx.Concat": OpSpec("onnx.Concat", "ONNX Concat", operands=(1, None), attrs={"axis": _a("int", True)}),
    "onnx.Unsqueeze": OpSpec("onnx.Unsqueeze", "ONNX Unsqueeze (opset 13: axes as input)", operands=(2, 2)),
    "onnx.Squeeze": OpSpec("onnx.Squeeze", "ONNX Squeeze (opset 13: axes as input)", operands=(1, 2)),
    "onnx.Transpose": OpSpec("onnx.Transpose", "ONNX Transpose", attrs={"perm": _a("ints")}),
    "onnx.Reshape": OpSpec("onnx.Reshape", "ONNX Reshape", operands=(2, 2), attrs={"allowzero": _a("int")}),
    "onnx.Expand": OpSpec("onnx.Expand", "ONNX Expand", operands=(2, 2)),
    "onnx.Pad": OpSpec("onnx.Pad", "ONNX Pad (opset 18: pads, constant_value, axes as inputs)", operands=(2, 4),
                       attrs={"mode": _a("str")}),
    "onnx.Shape": OpSpec("onnx.Shape", "ONNX Shape", attrs={"start": _a("int"), "end": _a("int")}),
    "onnx.ConstantOfShape": OpSpec("onnx.ConstantOfShape", "ONNX ConstantOfShape", attrs={"value": _a("tensor")}),
    "activation": OpSpec("cim.activation", "a digital activation f(clip(x)) of the ONNX recurrent set (one that "
                         "was not fused into an NL-ADC)", attrs=_FUNCTION),
    "im2col": OpSpec("cim.im2col", "unfolds convolution windows: [N, C, S...] -> [N, O..., C * prod(kernel)], "
                     "entries ordered (C, k...) like ONNX Conv weights",
                     attrs={k: _a("ints", True) for k in ("kernel_shape", "pads", "strides", "dilations")}),
}

OPS: dict[str, OpSpec] = {**STRUCTURE_OPS, **ANALOG_OPS, **DIGITAL_OPS}
_BY_IR = {spec.ir: name for name, spec in OPS.items()}
# Whole-model facts the tools print or read, kept as program metadata; every other module attribute is the compiler's.
METADATA = ("input_names", "output_names", "input_ranges", "bound_dims", "opset", "source", "arrays_used",
            "graph_stages", "fuse.activations", "fuse.ramps", "lift.activations", "share.groups")
_STAGE = "sched.stage"
# Attributes the Module's ramp and NL-ADC ops take from the manifest's ramp (recorded once, there).
RAMP_FUNCTION_KEYS = ("function", "alpha", "beta", "clip", "bits")


@dataclass
class StepProgram:
    """``program.json`` as a document, and the tensors it names (``program/<key>.npy`` -> array)."""

    document: dict[str, Any]
    tensors: dict[str, np.ndarray]

    def ops(self) -> Iterator[dict[str, Any]]:
        """Every op, loop bodies included, in program order."""
        return _walk(self.document["ops"])


def _walk(ops: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for op in ops:
        yield op
        if "body" in op:
            yield from _walk(op["body"]["ops"])


# --- Module -> program (the emit side) ----------------------------------------------------------------------------

def _float_json(x: float) -> float | str:
    """A float as strict JSON: itself, or the name of a non-finite value."""
    return x if math.isfinite(x) else ("NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity")


def _json_float(value: object) -> float:
    """The float a JSON value stands for (a number, or a non-finite value's name); ValueError for anything else."""
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value not in special:
            raise ValueError(f"not a float: {value!r}")
        return special[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a float: {value!r}")
    return float(value)


_EXPECTED = {"int": int, "float": (int, float), "str": str}
_ABSENT = object()


class _Emitter:
    """Writes a module's ops as the op set's JSON objects.

    A large model has thousands of near-identical reads, so what repeats is
    looked up once: each op's attribute plan (op-set key, Module name, kind),
    the text of each result type, each dtype's name, and each tensor's entry.
    """

    def __init__(self, module: Module, extra: Mapping[int, Mapping[str, AttrValue]]) -> None:
        # value names as the IR text names them (verification matches ONNX names by them)
        self._names = Printer(module).names
        self.extra = extra
        self.tensors: dict[str, np.ndarray] = {}
        self._keys: dict[object, str | list[str]] = {}  # content key (see _entry) -> its entry or entries
        # id -> (tensor, dtype name, its entry or None when inline), the tensor kept alive so that its id stays its own
        self._entries: dict[int, tuple[Tensor, str, str | None]] = {}
        self._types: dict[TensorType, str] = {}

    def name(self, value: Value) -> str:
        return self._names[id(value)]

    def type_text(self, value: Value) -> str:
        text = self._types.get(value.type)
        if text is None:
            text = self._types[value.type] = str(value.type)
        return text

    def tensor(self, tensor: Tensor) -> dict[str, Any]:
        seen = self._entries.get(id(tensor))
        if seen is None:
            seen = self._entries[id(tensor)] = (tensor, _dtype_name(tensor.array.dtype), self._entry(tensor))
        _, dtype, entry = seen
        array = tensor.array
        if entry is None:  # inline: small and finite
            return {"dtype": dtype, "shape": list(array.shape), "data": array.reshape(-1).tolist()}
        return {"dtype": dtype, "shape": list(array.shape), "npy": entry}

    def _entry(self, tensor: Tensor) -> str | None:
        """None for a tensor written inline; else its entry: one per distinct content (dtype, shape and bytes, so
        -0.0 is not 0.0), named after the first tensor of that content.

        Entries are found by a key of the content: for a small tensor (nearly all
        of them: every read's column scales and ranges, thousands in a large model)
        the hash of its bytes, cheaper than its digest and an int to keep rather
        than the bytes; for a larger one its digest (computed once per tensor).
        Equal contents have equal sizes, so they take the same branch, and the two
        kinds of key never compare equal. An entry is taken only if its content is
        equal, so the bytes do not depend on the keys (nor on hash randomization).
        """
        array = tensor.array
        if array.size <= INLINE_LIMIT and (array.dtype.kind != "f" or np.isfinite(array).all()):
            return None
        data = array.tobytes() if array.nbytes <= _BYTES_KEY_LIMIT else None
        content = _content_key(tensor, data)
        found = self._keys.get(content)
        stored = () if found is None else (found,) if type(found) is str else found
        for entry in stored:  # the entries with this key: the one of equal content, if any (a key is not unique)
            other = self.tensors[entry]
            if other.dtype == array.dtype and other.shape == array.shape and \
                    other.tobytes() == (array.tobytes() if data is None else data):
                return entry
        base = legal_name(tensor.key) or "tensor"
        entry, n = f"program/{base}.npy", 0
        while entry in self.tensors:
            n += 1
            entry = f"program/{base}_{n}.npy"
        self.tensors[entry] = array
        self._keys[content] = entry if found is None else [*stored, entry]
        return entry

    def attr(self, kind: str, value: AttrValue, key: str, op: str) -> Any:
        """The JSON value of attribute ``key`` of op ``op`` (named only in the message of a value of another kind)."""
        if kind == "tensor":
            if not isinstance(value, Tensor):
                raise CimcError(f"cannot emit the image: attribute '{key}' of '{op}' must be a tensor, got {value!r}")
            return self.tensor(value)
        if kind in ("ints", "floats"):
            if not isinstance(value, tuple):
                raise CimcError(f"cannot emit the image: attribute '{key}' of '{op}' must be a list, got {value!r}")
            if kind == "ints" and all(type(v) is int for v in value):  # the common case, without a call per item
                return list(value)
            return [self.attr(kind[:-1], v, key, op) for v in value]
        if not isinstance(value, _EXPECTED[kind]):
            raise CimcError(f"cannot emit the image: attribute '{key}' of '{op}' must be {kind}, got {value!r}")
        return _float_json(float(value)) if kind == "float" else value  # type: ignore[arg-type]

    def op(self, op: Operation) -> dict[str, Any]:
        name = _BY_IR.get(op.name)
        if name is None:
            where = f" at {op.location}" if op.location else ""
            raise CimcError(f"cannot emit the image: '{op.name}'{where} is not in the step op set {OP_SET} (see "
                            f"docs/image-format.md); the pipeline must lower it first")
        spec = OPS[name]
        if name not in ANALOG_OPS:  # an attribute the op set does not know would change what the op computes
            known = _known_attributes(name)
            unknown = sorted(k for k in op.attributes if not is_annotation(k) and k not in known)
            if unknown:
                raise CimcError(f"cannot emit the image: '{op.name}'{' at ' + op.location if op.location else ''} has "
                                f"attributes {unknown} that the step op set {OP_SET} does not define")
        extra = self.extra.get(id(op))
        values = {**op.attributes, **extra} if extra else op.attributes
        out: dict[str, Any] = {"op": name}
        if op.operands:
            names = self._names
            out["operands"] = [None if v is None else names[id(v)] for v in op.operands]
        if op.results:
            out["results"] = [{"name": self._names[id(r)], "type": self.type_text(r)} for r in op.results]
        attrs = {}
        for key, ir, kind, required in _attribute_plan(name):
            value = values.get(ir, _ABSENT)
            if value is _ABSENT:
                if required:
                    raise CimcError(f"cannot emit the image: '{op.name}' lacks '{ir}' (the module is not fully lowered)")
            elif kind == "int" and type(value) is int or kind == "str" and type(value) is str:  # the common cases, inline
                attrs[key] = value
            elif kind == "tensor" and type(value) is Tensor:
                attrs[key] = self.tensor(value)
            elif kind == "float" and type(value) is float and math.isfinite(value):
                attrs[key] = value
            elif kind == "ints" and type(value) is tuple and len(value) == 2 and type(value[0]) is int and \
                    type(value[1]) is int:  # a read's rows and cols
                attrs[key] = [value[0], value[1]]
            else:
                attrs[key] = self.attr(kind, value, key, name)  # type: ignore[arg-type]
        if attrs:
            out["attrs"] = attrs
        stage = values.get(_STAGE, _ABSENT)
        if stage is not _ABSENT:
            out["stage"] = int(stage)  # type: ignore[arg-type]
        if op.location is not None:
            out["loc"] = op.location
        if spec.body:
            block = op.regions[0].block
            out["body"] = {"args": [{"name": self.name(a), "type": self.type_text(a)} for a in block.args],
                           "ops": [self.op(o) for o in block.ops]}
        return out


@functools.cache
def _attribute_plan(name: str) -> tuple[tuple[str, str, str, bool], ...]:
    """(op-set key, Module attribute name, kind, required) of each attribute of op ``name``, in the op set's order."""
    return tuple((key, a.ir or key, a.kind, a.required) for key, a in OPS[name].attrs.items())


@functools.cache
def _known_attributes(name: str) -> frozenset[str]:
    return frozenset(ir for _, ir, _, _ in _attribute_plan(name))


_BYTES_KEY_LIMIT = 4096  # bytes: a read's per-column scales and ranges (a few hundred bytes each) are far below


def _content_key(tensor: Tensor, data: bytes | None) -> object:
    """The key entries are found by (see _Emitter._entry): the hash of a small tensor's bytes ``data``, else the
    tensor's digest."""
    return tensor.digest if data is None else hash(data)


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype_name``, remembered per dtype (the tensors of a program have a handful of types)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype_name(dtype)
    return name


def _metadata_json(value: AttrValue) -> Any:
    if isinstance(value, tuple):
        return [_metadata_json(v) for v in value]
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, Tensor):
        raise CimcError("cannot emit the image: a tensor in the program metadata")
    return value


def module_to_program(module: Module, extra: Mapping[int, Mapping[str, AttrValue]] | None = None) -> StepProgram:
    """The step program of a scheduled module; ``extra`` adds attributes per op (``id(op)``) without touching it.

    Only the attributes of the op set are written: every op not in it is refused, naming it.
    """
    emitter = _Emitter(module, extra or {})
    document = {
        "format": OP_SET, "name": module.name,
        "metadata": {k: _metadata_json(module.attributes[k]) for k in METADATA if k in module.attributes},
        "inputs": [{"name": emitter.name(a), "type": str(a.type)} for a in module.inputs],
        "ops": [emitter.op(op) for op in module.body.ops],
    }
    return StepProgram(document, emitter.tensors)


# --- validation -----------------------------------------------------------------------------------------------------

_TYPE = re.compile(r"([a-z0-9]+)\[(.*)\]")


def parse_type(text: object) -> TensorType:
    """``f32[batch, 31]`` -> TensorType; a dim is an integer, a symbol, or ``?``."""
    if not isinstance(text, str):
        raise ValueError(f"not a type: {text!r}")
    return _parse_type(text)


@functools.lru_cache(maxsize=4096)  # a program spells few distinct types, many times
def _parse_type(text: str) -> TensorType:
    match = _TYPE.fullmatch(text)
    if match is None or match.group(1) not in DTYPES:
        raise ValueError(f"not a type: {text!r}")
    dims: list[Dim] = []
    for part in (p.strip() for p in match.group(2).split(",")) if match.group(2).strip() else ():
        if part == "?":
            dims.append(None)
        elif part.isdigit():
            dims.append(int(part))
        elif part.isidentifier():
            dims.append(part)
        else:
            raise ValueError(f"not a dim: {part!r} in {text!r}")
    return TensorType(match.group(1), tuple(dims))


class ProgramError(CimcError):
    """program.json does not follow the op set."""


class _Validator:
    def __init__(self, program: StepProgram, manifest: Mapping[str, Any]) -> None:
        self.program = program
        self.arrays = {int(a["index"]): (int(a["rows"]), int(a["cols"])) for a in manifest.get("arrays", [])}
        self.ramps = {int(r["id"]): r for r in manifest.get("ramps", [])}
        self.references = set(manifest.get("reference", {}).get("tiles", []))
        self.producers: dict[str, str] = {}  # value name in scope -> op that produced it ("" for arguments)
        self.names: set[str] = set()  # every value name so far: names are unique in the whole program
        self.tiles: set[int] = set()

    def fail(self, where: str, message: str) -> None:
        raise ProgramError(f"program.json: {where}: {message}")

    def define(self, where: str, entry: object, producer: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            self.fail(where, f"a value must be {{\"name\", \"type\"}}, got {entry!r}")
        try:
            parse_type(entry["type"])  # type: ignore[index]
        except (ValueError, KeyError) as e:
            self.fail(where, str(e))
        name = entry["name"]  # type: ignore[index]
        if name in self.names:
            self.fail(where, f"value '{name}' is defined twice")
        self.names.add(name)
        self.producers[name] = producer

    def tensor(self, where: str, value: object) -> None:
        if not isinstance(value, dict) or value.get("dtype") not in DTYPES or not isinstance(value.get("shape"), list) \
                or not all(isinstance(d, int) and d >= 0 for d in value["shape"]):
            self.fail(where, f"a tensor must be {{\"dtype\", \"shape\", \"data\" | \"npy\"}}, got {str(value)[:80]}")
        assert isinstance(value, dict)
        shape = tuple(value["shape"])
        if "npy" in value:
            array = self.program.tensors.get(value["npy"])
            if array is None:
                self.fail(where, f"tensor entry {value['npy']!r} is missing")
            assert array is not None
            if dtype_name(array.dtype) != value["dtype"] or array.shape != shape:
                self.fail(where, f"{value['npy']} is {array.dtype}{list(array.shape)}, declared {value['dtype']}{list(shape)}")
        elif not isinstance(value.get("data"), list) or len(value["data"]) != math.prod(shape):
            self.fail(where, f"inline tensor data must be a list of {math.prod(shape)} values")

    def attr(self, where: str, key: str, kind: str, value: object) -> None:
        """An attribute's value has its kind; ``where`` and ``key`` name it in the message (formatted only then)."""
        if kind == "tensor":
            self.tensor(f"{where} attribute '{key}'", value)
            return
        if kind in ("ints", "floats") and not isinstance(value, list):
            self.fail(f"{where} attribute '{key}'", f"expected a list ({kind}), got {value!r}")
        ok = _KIND_CHECKS[kind](value)
        if not ok:
            self.fail(f"{where} attribute '{key}'", f"expected {kind}, got {value!r}")

    def ops(self, ops: object, where: str, terminator: str) -> None:
        if not isinstance(ops, list) or not ops:
            self.fail(where, "a block must be a non-empty list of ops")
        assert isinstance(ops, list)
        for i, op in enumerate(ops):
            self.op(op, f"{where} op #{i}", last=i == len(ops) - 1, terminator=terminator)

    def op(self, op: object, where: str, last: bool, terminator: str) -> None:
        if not isinstance(op, dict):
            self.fail(where, "an op must be a JSON object")
        assert isinstance(op, dict)
        name = op.get("op")
        spec = OPS.get(name)  # type: ignore[arg-type]
        if spec is None:
            self.fail(where, f"unknown op {name!r}: not in {OP_SET}")
        assert spec is not None
        where = f"{where} ('{name}'{' at ' + op['loc'] if isinstance(op.get('loc'), str) else ''})"
        unknown = set(op) - {"op", "operands", "results", "attrs", "stage", "loc", "body"}
        if unknown:
            self.fail(where, f"unknown fields {sorted(unknown)}")
        if spec.terminator != last or (spec.terminator and name != terminator):
            self.fail(where, f"a block must end with '{terminator}', and only there")
        operands, results = op.get("operands", []), op.get("results", [])
        if not isinstance(operands, list) or not isinstance(results, list):
            self.fail(where, "operands and results must be lists")
        for label, items, (lo, hi) in (("operands", operands, spec.operands), ("results", results, spec.results)):
            if len(items) < lo or (hi is not None and len(items) > hi):
                self.fail(where, f"{len(items)} {label}; '{name}' takes {lo}{'' if hi == lo else '..' + str(hi) if hi else ' or more'}")
        for v in operands:
            if v is not None and v not in self.producers:
                self.fail(where, f"operand '{v}' is not defined before its use")
        if "stage" in op and not (isinstance(op["stage"], int) and op["stage"] >= 0):
            self.fail(where, f"stage must be a non-negative integer, got {op['stage']!r}")
        if "loc" in op and not isinstance(op["loc"], str):
            self.fail(where, "loc must be a string")
        attrs = op.get("attrs", {})
        if not isinstance(attrs, dict):
            self.fail(where, "attrs must be an object")
        unknown = set(attrs) - set(spec.attrs)
        if unknown:
            self.fail(where, f"unknown attributes {sorted(unknown)} (known: {', '.join(spec.attrs) or 'none'})")
        for key, a in spec.attrs.items():
            if key in attrs:
                self.attr(where, key, a.kind, attrs[key])
            elif a.required:
                self.fail(where, f"missing attribute '{key}'")
        self.semantics(name, op, attrs, where)  # type: ignore[arg-type]
        if spec.body:
            body = op.get("body")
            if not isinstance(body, dict) or not isinstance(body.get("args"), list) or len(body["args"]) != len(operands):
                self.fail(where, "a loop needs a body with one argument per operand (the step index, then each carried value)")
            assert isinstance(body, dict)
            outer = dict(self.producers)
            for arg in body["args"]:
                self.define(where, arg, "")
            self.ops(body.get("ops"), f"{where} body", "yield")
            yielded = body["ops"][-1].get("operands", [])
            if len(yielded) != len(results) or len(results) < len(operands) - 1:
                self.fail(where, f"the body yields {len(yielded)} values for {len(results)} results and "
                                 f"{len(operands) - 1} carried values")
            self.producers = outer  # the body's values are not visible after the loop
        elif "body" in op:
            self.fail(where, f"'{name}' has no body")
        for r in results:
            self.define(where, r, name)  # type: ignore[arg-type]

    def semantics(self, name: str, op: dict[str, Any], attrs: dict[str, Any], where: str) -> None:
        """What the op set requires beyond kinds: reads inside their arrays, ramps that exist, analog operands."""
        for key in ("rows", "cols"):
            if key in attrs and len(attrs[key]) != 2:
                self.fail(where, f"'{key}' must be [start, end], got {attrs[key]!r}")
        if name == "read":
            k = attrs["array"]
            if k not in self.arrays:
                self.fail(where, f"array {k} is not in the manifest")
            (r0, r1), (c0, c1) = attrs["rows"], attrs["cols"]
            rows, cols = self.arrays[k]
            if not (0 <= r0 < r1 and 0 <= c0 < c1) or attrs["word_line"] + r1 - r0 > rows or \
                    attrs["bit_line"] + 2 * (c1 - c0) > cols or attrs["word_line"] < 0 or attrs["bit_line"] < 0:
                self.fail(where, f"rows {r0}:{r1}, cols {c0}:{c1} at word line {attrs['word_line']}, bit line "
                                 f"{attrs['bit_line']} do not fit array {k} of {rows} x {cols}")
            if attrs["tile"] in self.tiles:
                self.fail(where, f"tile {attrs['tile']} is read by two ops")
            self.tiles.add(attrs["tile"])
            if "reference" in attrs and attrs["reference"] not in self.references:
                self.fail(where, f"reference weights {attrs['reference']} are not in the manifest")
        elif name == "ramp" and attrs["ramp"] not in self.ramps:
            self.fail(where, f"ramp {attrs['ramp']} is not in the manifest")
        if name in ("adc", "nl_adc", "analog_sum"):
            analog = op["operands"] if name == "analog_sum" else op["operands"][:1]
            if any(self.producers.get(v) not in ("read", "analog_sum") for v in analog):
                self.fail(where, f"'{name}' converts analog values, i.e. results of 'read' or 'analog_sum'")
        if name == "nl_adc" and self.producers.get(op["operands"][1]) != "ramp":
            self.fail(where, "the second operand of 'nl_adc' must be a 'ramp'")


def _is_float(value: object) -> bool:
    """Whether ``_json_float`` takes ``value`` (a JSON number, not a bool, or a non-finite value's name)."""
    kind = type(value)
    return kind is float or kind is int or (kind is str and value in ("NaN", "Infinity", "-Infinity"))


def _is_int(value: object) -> bool:
    return type(value) is int  # a JSON integer (a bool is not one)


_KIND_CHECKS = {"int": _is_int, "float": _is_float, "str": lambda v: isinstance(v, str),
                "ints": lambda v: all(map(_is_int, v)), "floats": lambda v: all(map(_is_float, v))}


def validate_program(program: StepProgram, manifest: Mapping[str, Any]) -> None:
    """Check a step program against the op set and the manifest it belongs to; a violation is a ProgramError."""
    doc = program.document
    v = _Validator(program, manifest)
    if not isinstance(doc, dict) or doc.get("format") != OP_SET:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise ProgramError(f"program.json: op set {fmt!r}; this cimc reads {OP_SET}")
    if not isinstance(doc.get("inputs"), list) or not isinstance(doc.get("metadata", {}), dict):
        v.fail("the program", "needs a list of inputs and a metadata object")
    for arg in doc["inputs"]:
        v.define("inputs", arg, "")
    v.ops(doc.get("ops"), "the program", "return")
    unused = set(program.tensors) - {t["npy"] for op in program.ops() for t in _tensors(op)}
    if unused:
        v.fail("the program", f"tensor entries no op refers to: {sorted(unused)}")


def _tensors(op: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = OPS[op["op"]]
    for key, value in op.get("attrs", {}).items():
        if spec.attrs[key].kind == "tensor" and "npy" in value:
            yield value


# --- program -> Module (the load side) ------------------------------------------------------------------------------

class _Builder:
    def __init__(self, program: StepProgram, manifest: Mapping[str, Any]) -> None:
        self.tensors = program.tensors
        self.ramps = {int(r["id"]): r for r in manifest.get("ramps", [])}
        self.values: dict[str, Value] = {}
        self.ramp_of: dict[str, int] = {}  # value name of a ramp op -> its manifest id
        self._tensors: dict[str, Tensor] = {}

    def attr(self, kind: str, value: Any) -> AttrValue:
        """The Module's attribute value (the immutable kinds of cimc.attributes) of a validated JSON value."""
        if kind == "tensor":
            if "npy" not in value:
                return Tensor(np.array(value["data"], DTYPES[value["dtype"]]).reshape(value["shape"]))
            entry = value["npy"]
            if entry not in self._tensors:  # one Tensor per entry, however many ops share it
                self._tensors[entry] = Tensor(self.tensors[entry], entry[len("program/"):-len(".npy")])
            return self._tensors[entry]
        if kind == "float":
            return _json_float(value)
        if kind == "floats":
            return tuple(_json_float(v) for v in value)
        return tuple(value) if kind == "ints" else value

    def block(self, ops: list[dict[str, Any]], block: Block) -> None:
        for entry in ops:
            block.append(self.op(entry))

    def op(self, entry: dict[str, Any]) -> Operation:
        name = entry["op"]
        spec = OPS[name]
        attrs: dict[str, object] = {}
        for key, value in entry.get("attrs", {}).items():
            a = spec.attrs[key]
            attrs[a.ir or key] = self.attr(a.kind, value)
        operands = [None if v is None else self.values[v] for v in entry.get("operands", [])]
        results = entry.get("results", [])
        if name == "ramp":
            attrs.update(self._ramp_attrs(self.ramps[attrs["image.ramp"]]))  # type: ignore[index]
        elif name == "nl_adc":
            ramp = self.ramps[self.ramp_of[entry["operands"][1]]]
            attrs.update({k: normalize_attr(ramp[k]) for k in RAMP_FUNCTION_KEYS if k in ramp})
        if "stage" in entry:
            attrs[_STAGE] = entry["stage"]
        regions = []
        if spec.body:
            body = entry["body"]
            block = Block([parse_type(a["type"]) for a in body["args"]], [a["name"] for a in body["args"]])
            for arg, spec_arg in zip(block.args, body["args"]):
                self.values[spec_arg["name"]] = arg
            self.block(body["ops"], block)
            regions.append(Region(block))
        op = Operation(spec.ir, operands, [parse_type(r["type"]) for r in results], None, regions, entry.get("loc"),
                       [r["name"] for r in results])
        op.attributes = attrs  # type: ignore[assignment]  (already of the attribute kinds: no second normalization)
        for result, r in zip(op.results, results):
            self.values[r["name"]] = result
        if name == "ramp":
            self.ramp_of[results[0]["name"]] = int(attrs["image.ramp"])  # type: ignore[arg-type]
        return op

    @staticmethod
    def _ramp_attrs(ramp: Mapping[str, Any]) -> dict[str, object]:
        """What the Module's ``cim.ramp`` carries, from the manifest's ramp: its placement, function and thresholds."""
        out: dict[str, object] = {k: ramp[k] for k in RAMP_FUNCTION_KEYS if k in ramp}
        out.update(array=ramp["array"], array_col=ramp["bit_line"], z_lo=ramp["z_lo"], z_hi=ramp["z_hi"],
                   g_per_z=ramp["g_per_z"], gain=ramp["gain"], step_devices=ramp["step_devices"],
                   inl_lsb=ramp["inl_lsb"], thresholds=Tensor(np.asarray(ramp["thresholds"], np.float64)))
        return {k: normalize_attr(v) for k, v in out.items()}


def program_to_module(program: StepProgram, manifest: Mapping[str, Any]) -> Module:
    """The Module the simulator runs, built from a validated program: IR op names, the attributes the tools read."""
    doc = program.document
    builder = _Builder(program, manifest)
    inputs = doc["inputs"]
    body = Block([parse_type(a["type"]) for a in inputs], [a["name"] for a in inputs])
    for arg, spec in zip(body.args, inputs):
        builder.values[spec["name"]] = arg
    builder.block(doc["ops"], body)
    metadata = dict(doc.get("metadata", {}))
    if "input_ranges" in metadata:  # the only float-valued metadata (the ranges random verify inputs are drawn from)
        metadata["input_ranges"] = [[_json_float(x) for x in pair] for pair in metadata["input_ranges"]]
    return Module(doc.get("name", "main"), body, metadata)


# --- reading it -----------------------------------------------------------------------------------------------------

def op_counts(program: StepProgram) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.ops():
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    return dict(sorted(counts.items()))


def format_program(program: StepProgram) -> str:
    """A readable listing: one line per op, ``%results = op(%operands) {attrs} : types @stage``, loop bodies indented."""
    lines = ["(" + ", ".join(f"%{a['name']}: {a['type']}" for a in program.document["inputs"]) + ")"]

    def value(v: str | None) -> str:
        return "none" if v is None else f"%{v}"

    def attr(a: Any) -> str:
        if isinstance(a, dict):
            return f"<{a['dtype']}{a['shape']}: {a['npy']}>" if "npy" in a else \
                f"{a['dtype']}{a['shape']}{a['data']}" if len(a["data"]) > 1 else repr(a["data"][0])
        return repr(a) if not isinstance(a, list) else "[" + ", ".join(attr(x) for x in a) + "]"

    def block(ops: list[dict[str, Any]], depth: int) -> None:
        for op in ops:
            results = op.get("results", [])
            text = "  " * depth + (", ".join(f"%{r['name']}" for r in results) + " = " if results else "")
            text += op["op"] + "(" + ", ".join(value(v) for v in op.get("operands", [])) + ")"
            if op.get("attrs"):
                text += " {" + ", ".join(f"{k}={attr(v)}" for k, v in op["attrs"].items()) + "}"
            if results:
                text += " : " + ", ".join(r["type"] for r in results)
            if "stage" in op:
                text += f" @{op['stage']}"
            if "body" in op:
                lines.append(text + " {")
                lines.append("  " * (depth + 1) + "^(" + ", ".join(f"%{a['name']}: {a['type']}" for a in op["body"]["args"]) + ")")
                block(op["body"]["ops"], depth + 1)
                lines.append("  " * depth + "}")
            else:
                lines.append(text)

    block(program.document["ops"], 1)
    return "\n".join(lines) + "\n"
