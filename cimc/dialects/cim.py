"""The ``cim`` dialect: ops of the lowered, hardware-level program.

``cim.loop`` is the structured recurrence: one body executed ``trip_count``
times. Operands after the trip count are the initial loop-carried values; the
body's block arguments are the iteration index and the carried values; its
``cim.yield`` returns the next carried values followed by per-step *scan*
values, which the loop stacks along a new leading axis in iteration order.
The results are the final carried values followed by the stacked scans.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cimc.attributes import Tensor
from cimc.dialects.registry import VerifyError, attrs, define
from cimc.dialects.type_rules import broadcast_shapes, elementwise, present, unary_same_type
from cimc.ir import Operation
from cimc.types import TensorType, scalar


def _verify_loop(op: Operation) -> None:
    trip, *inits = op.operands
    if trip is None or trip.type != scalar("i64"):
        raise VerifyError(op, "type mismatch: the trip count must be of type i64[]")
    if any(v is None for v in inits):
        raise VerifyError(op, "loop-carried initial values cannot be absent")
    block = op.regions[0].block
    if len(block.args) != 1 + len(inits):
        raise VerifyError(op, f"the body takes {len(block.args)} arguments; expected the index and {len(inits)} carried values")
    if block.args[0].type != scalar("i64"):
        raise VerifyError(op, "type mismatch: the body's first argument (the index) must be of type i64[]")
    for i, (arg, init) in enumerate(zip(block.args[1:], inits)):
        assert init is not None
        if arg.type != init.type:
            raise VerifyError(op, f"type mismatch: carried value #{i} is {init.type} but the body argument is {arg.type}")
    term = block.terminator
    if term is None or term.name != "cim.yield":
        raise VerifyError(op, "the loop body must end with 'cim.yield'")
    yielded = term.operands
    if len(yielded) < len(inits):
        raise VerifyError(op, f"'cim.yield' returns {len(yielded)} values, fewer than the {len(inits)} carried values")
    if len(op.results) != len(yielded):
        raise VerifyError(op, f"the loop has {len(op.results)} results but its body yields {len(yielded)} values")
    for i, (res, val) in enumerate(zip(op.results, yielded)):
        assert val is not None
        if i < len(inits):
            expected = val.type
        else:
            expected = TensorType(val.type.dtype, (res.type.shape[:1] or (None,)) + val.type.shape)
        if res.type != expected or (i >= len(inits) and res.type.rank != val.type.rank + 1):
            what = "carried" if i < len(inits) else "scan"
            raise VerifyError(op, f"type mismatch: {what} result #{i} is {res.type} but the body yields {val.type}")


LOOP = define(
    "cim.loop",
    "Structured recurrence: runs its body trip_count times, carrying state and stacking scan values.",
    operands="trip_count, inits*",
    results="results*",
    num_regions=1,
    verify=_verify_loop,
)

YIELD = define(
    "cim.yield",
    "Ends a loop body: next carried values, then this step's scan values.",
    operands="values*",
    terminator=True,
    pure=False,
)


# --- ops of the lowered program -------------------------------------------------------------

def _verify_activation(op: Operation) -> None:
    from cimc.dialects.onnx import RNN_ACTIVATIONS

    unary_same_type(op)
    fn = op.attributes["function"]
    if fn not in RNN_ACTIVATIONS:
        raise VerifyError(op, f"unknown activation function '{fn}' (known: {', '.join(RNN_ACTIVATIONS)})")
    clip = op.attributes.get("clip")
    if clip is not None and not clip > 0:  # type: ignore[operator]
        raise VerifyError(op, f"clip must be positive, got {clip}")


def activation_key(op: Operation) -> str:
    """Names the function an activation op computes; equal keys can share one NL-ADC ramp."""
    a = op.attributes
    params = ", ".join(f"{k}={a[k]!r}" for k in ("alpha", "beta", "clip") if k in a)
    return f"{a['function']}({params})" if params else str(a["function"])


ACTIVATION = define(
    "cim.activation",
    "Elementwise activation f(clip(x)) of the ONNX recurrent set; digital until fuse-activation maps it to an NL-ADC.",
    operands="x",
    results="y",
    attributes=attrs(function="str!", alpha="float", beta="float", clip="float"),
    verify=_verify_activation,
)


def segment_rows(op: Operation) -> int:
    """Rows driven by an MVM's operands (their last dims) plus its constant bias rows."""
    width = 0
    for v in op.operands:
        assert v is not None
        shape = v.type.shape
        last = shape[-1] if shape else None
        if not isinstance(last, int):
            raise VerifyError(op, f"'{op.name}' needs a static last dim on every input, got {v.type}")
        width += last
    return width + int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]


def _verify_mvm_io(op: Operation, rows: int, cols: int) -> None:
    inputs = present(op)
    if not inputs:
        raise VerifyError(op, f"'{op.name}' needs at least one input")
    dtype = inputs[0].type.dtype
    if any(v.type.dtype != dtype for v in inputs) or op.results[0].type.dtype != dtype or not inputs[0].type.is_float:
        raise VerifyError(op, f"type mismatch: '{op.name}' needs one float element type for inputs and result")
    if segment_rows(op) != rows:
        raise VerifyError(op, f"'{op.name}' drives {segment_rows(op)} rows but its weights have {rows}")
    result = op.results[0].type
    if result.shape[-1:] != (cols,):
        raise VerifyError(op, f"type mismatch: '{op.name}' has {cols} columns but its result is {result}")
    lead = [v.type.shape[:-1] for v in inputs]
    if any(len(s) != len(result.shape) - 1 for s in lead) or broadcast_shapes(lead + [result.shape[:-1]]) is None:
        raise VerifyError(op, f"type mismatch: the inputs' leading dims {lead} do not match the result {result}")


def _tensor(op: Operation, name: str, rank: int) -> Tensor:
    value = op.attributes[name]
    if type(value) is not Tensor or value.array.ndim != rank or value.array.dtype.kind != "f":
        raise VerifyError(op, f"attribute '{name}' of '{op.name}' must be a float tensor of rank {rank}")
    return value


# Set by the ranges pass: the reference DAC full scale of the inputs, each row's fraction of it (per input segment),
# and each column's value range (of the whole column sum).
_RANGE_ATTRS = dict(input_scale="float", row_scale="tensor", z_lo="tensor", z_hi="tensor")


def _verify_row_scale(op: Operation, rows: int) -> None:
    if "row_scale" in op.attributes:
        t = _tensor(op, "row_scale", 1)
        lo, hi = t.extrema()
        if t.array.shape != (rows,) or (rows and not (0 < lo and hi <= 1)):
            raise VerifyError(op, f"'{op.name}' row_scale must hold {rows} values in (0, 1], got shape {t.array.shape}")


def _verify_matvec(op: Operation) -> None:
    rows, cols = _tensor(op, "weights", 2).array.shape
    _verify_mvm_io(op, rows, cols)
    _verify_row_scale(op, rows)


MATVEC = define(
    "cim.matvec",
    "Logical matrix-vector product: concat(inputs, ones[bias_rows]) @ weights, over the last axis.",
    operands="inputs*",
    results="y",
    attributes=attrs(weights="tensor!", bias_rows="int", block="str", **_RANGE_ATTRS),
    verify=_verify_matvec,
)


def _verify_conductances(op: Operation) -> tuple[int, int]:
    pos, neg, scales = _tensor(op, "g_pos", 2), _tensor(op, "g_neg", 2), _tensor(op, "g_scale", 1)
    g_pos, g_neg, scale = pos.array, neg.array, scales.array
    if g_pos.shape != g_neg.shape or scale.shape != g_pos.shape[1:]:
        raise VerifyError(op, f"'{op.name}' conductance shapes disagree: g_pos {g_pos.shape}, g_neg {g_neg.shape}, g_scale {scale.shape}")
    # Tensor.minimum: computed once per (immutable) tensor, not in every verifier run, and not at all for a tile's
    # window of a checked MVM (any_below) (the answers of g.min(initial=0) < 0 and not scale.min(initial=inf) > 0,
    # NaN included).
    if pos.any_below(0) or neg.any_below(0) or not scales.minimum() > 0:
        raise VerifyError(op, f"'{op.name}' needs non-negative conductances and positive scales")
    return g_pos.shape


def _verify_crossbar(op: Operation) -> None:
    rows, cols = _verify_conductances(op)
    _verify_mvm_io(op, rows, cols)
    _verify_row_scale(op, rows)


_CONDUCTANCE_ATTRS = dict(g_pos="tensor!", g_neg="tensor!", g_scale="tensor!", bias_rows="int", block="str", **_RANGE_ATTRS)

CROSSBAR_MVM = define(
    "cim.crossbar_mvm",
    "An MVM as differential conductance pairs: y = (x / row_scale) @ ((g_pos - g_neg) / g_scale[col]), all in uS; "
    "the stored weights carry the row scales (w r), the DAC drives x / r.",
    operands="inputs*",
    results="y",
    attributes=attrs(**_CONDUCTANCE_ATTRS),
    verify=_verify_crossbar,
)


def check_tile_lines(attrs: Mapping[str, object], rows: int, cols: int, physical: tuple[int, int] | None) -> str | None:
    """Why a tile's ``word_lines`` / ``column_pairs`` are unusable (None if fine): one distinct line per row and
    one distinct pair per column, inside the ``physical`` array (word lines, bit lines) when it is known."""
    lines, pairs = attrs.get("word_lines"), attrs.get("column_pairs")
    if lines is not None and (len(lines) != rows or len(set(lines)) != rows or min(lines, default=0) < 0):
        return f"word_lines must be {rows} distinct word lines >= 0"
    if pairs is not None and (len(pairs) != cols or len(set(pairs)) != cols or min(pairs, default=0) < 0):
        return f"column_pairs must be {cols} distinct bit-line pairs >= 0"
    if physical is not None and "array_row" in attrs:
        r, c = int(attrs["array_row"]), int(attrs["array_col"])
        top = max(lines) if lines is not None else r + rows - 1
        right = c + 2 * (max(pairs) if pairs is not None else cols - 1) + 1
        if rows and cols and (top >= physical[0] or right >= physical[1]):
            return f"its devices reach word line {top} and bit line {right} of a {physical[0]} x {physical[1]} array"
    return None


def _verify_tile(op: Operation) -> None:
    a = op.attributes
    r0, r1 = a["rows"]  # type: ignore[misc]
    c0, c1 = a["cols"]  # type: ignore[misc]
    if "g_pos" in a or "g_neg" in a:
        rows, cols = _verify_conductances(op)
    elif "array" in a:
        rows, cols = r1 - r0, c1 - c0  # a programming image's tile: the devices live in the image's arrays
    else:
        raise VerifyError(op, f"'{op.name}' needs its conductances, or an array placement that holds them")
    if r1 - r0 != rows or c1 - c0 != cols or r0 < 0 or c0 < 0:
        raise VerifyError(op, f"'{op.name}' covers rows [{r0}, {r1}) and cols [{c0}, {c1}) but holds {rows} x {cols} devices")
    if r1 > segment_rows(op):
        raise VerifyError(op, f"'{op.name}' reads rows up to {r1} of an input of {segment_rows(op)} rows")
    if "word_lines" in a or "column_pairs" in a:
        problem = check_tile_lines(a, rows, cols, None)  # type: ignore[arg-type]
        if problem:
            raise VerifyError(op, f"'{op.name}' {problem}")
    if op.results[0].type.shape[-1:] != (cols,):
        raise VerifyError(op, f"type mismatch: '{op.name}' has {cols} columns but its result is {op.results[0].type}")
    if "row_scale" in a:
        _verify_row_scale(op, rows)
    placed = ("array" in a) + ("array_row" in a) + ("array_col" in a)
    if placed and placed != 3:
        raise VerifyError(op, f"'{op.name}' placement needs array, array_row and array_col together")


TILE_MVM = define(
    "cim.tile_mvm",
    "The part of an MVM that one array computes: rows [r0, r1) x cols [c0, c1) of a block; yields a partial sum "
    "(row_scale: the tile's rows' DAC scale fractions, as in cim.crossbar_mvm; column_pairs: the bit-line pair of "
    "each column and word_lines: the word line of each row, both set by map-defects, the tile's own lines in order "
    "when absent).",
    operands="inputs*",
    results="partial",
    attributes=attrs(**{**_CONDUCTANCE_ATTRS, "g_pos": "tensor", "g_neg": "tensor"}, rows="ints!", cols="ints!",
                     array="int", array_row="int", array_col="int", share="str", column_pairs="ints",
                     word_lines="ints"),
    verify=_verify_tile,
)

_ANALOG_PRODUCERS = ("cim.tile_mvm", "cim.analog_sum")


def _verify_analog_inputs(op: Operation) -> None:
    for v in present(op):
        producer = getattr(v, "op", None)
        if producer is None or producer.name not in _ANALOG_PRODUCERS:
            raise VerifyError(op, f"'{op.name}' reads analog partial sums, i.e. results of {' or '.join(_ANALOG_PRODUCERS)}")
    elementwise(op)


ANALOG_SUM = define(
    "cim.analog_sum",
    "Partial sums of row-tiled arrays added as currents on shared bit lines, before one conversion.",
    operands="partials*",
    results="sum",
    verify=_verify_analog_inputs,
)

ADC = define(
    "cim.adc",
    "Linear conversion of an analog column value to digital.",
    operands="analog",
    results="digital",
    attributes=attrs(bits="int!"),
    verify=_verify_analog_inputs,
)


def _verify_im2col(op: Operation) -> None:
    x = present(op)[0].type
    kernel = op.attributes["kernel_shape"]
    if x.rank != 2 + len(kernel):  # type: ignore[arg-type]
        raise VerifyError(op, f"'{op.name}' with a {len(kernel)}-D kernel needs a rank-{2 + len(kernel)} input, got {x}")  # type: ignore[arg-type]


IM2COL = define(
    "cim.im2col",
    "Unfold convolution windows: [N, C, S...] -> [N, O..., C * prod(kernel)], so a Conv becomes one MVM.",
    operands="x",
    results="patches",
    attributes=attrs(kernel_shape="ints!", pads="ints!", strides="ints!", dilations="ints!"),
    verify=_verify_im2col,
)


def _verify_ramp(op: Operation) -> None:
    a = op.attributes
    bits = int(a["bits"])  # type: ignore[arg-type]
    thresholds = _tensor(op, "thresholds", 1).array
    steps = _tensor(op, "steps_us", 1).array
    if thresholds.shape != ((1 << bits) - 1,) or steps.shape != thresholds.shape:
        raise VerifyError(op, f"a {bits}-bit ramp needs {(1 << bits) - 1} thresholds and steps")
    if (np.diff(thresholds) < 0).any():
        raise VerifyError(op, "ramp thresholds must not decrease")
    if op.results[0].type != TensorType("f64", thresholds.shape):
        raise VerifyError(op, f"type mismatch: a {bits}-bit ramp has type f64[{thresholds.shape[0]}], not {op.results[0].type}")
    gain = a.get("gain", 1.0)
    if not gain > 0:  # type: ignore[operator]
        raise VerifyError(op, f"a ramp's gain (column-to-comparator current ratio) must be positive, got {gain}")
    if "device_levels" in a and len(a["device_levels"]) != sum(a["step_devices"]):  # type: ignore[arg-type]
        raise VerifyError(op, f"a ramp with {sum(a['step_devices'])} step devices records {len(a['device_levels'])} device levels")  # type: ignore[arg-type]


_FUNCTION_ATTRS = dict(function="str!", alpha="float", beta="float", clip="float", bits="int!")

RAMP = define(
    "cim.ramp",
    "A ramp column: the pre-distorted staircase whose k-th level is the k-th decision threshold of f; "
    "its value is the thresholds in z units.",
    results="thresholds",
    attributes=attrs(**_FUNCTION_ATTRS, array="int!", array_col="int!", rows="int!", z_lo="float!", z_hi="float!",
                     g_per_z="float!", thresholds="tensor!", steps_us="tensor!", step_devices="ints!", offset_us="float!",
                     calibration_devices="int!", quantization="str!", inl_lsb="float!", gain="float",
                     device_levels="ints", offset_levels="ints"),
    verify=_verify_ramp,
)


def _verify_nl_adc(op: Operation) -> None:
    analog, ramp = op.operands
    producer = getattr(analog, "op", None)
    if producer is None or producer.name not in _ANALOG_PRODUCERS:
        raise VerifyError(op, f"'{op.name}' converts an analog column value, i.e. a result of {' or '.join(_ANALOG_PRODUCERS)}")
    ramp_op = getattr(ramp, "op", None)
    if ramp_op is None or ramp_op.name != "cim.ramp":
        raise VerifyError(op, f"'{op.name}' compares against a 'cim.ramp'")
    for key in ("function", "alpha", "beta", "clip", "bits"):
        if op.attributes.get(key) != ramp_op.attributes.get(key):
            raise VerifyError(op, f"'{op.name}' {key} = {op.attributes.get(key)!r} but its ramp has {ramp_op.attributes.get(key)!r}")
    c0, c1 = op.attributes["cols"]  # type: ignore[misc]
    assert analog is not None
    width = analog.type.shape[-1]
    if not (0 <= c0 < c1) or (isinstance(width, int) and c1 > width) or op.results[0].type.shape[-1:] != (c1 - c0,):
        raise VerifyError(op, f"'{op.name}' converts columns [{c0}, {c1}) of {analog.type} into {op.results[0].type}")


NL_ADC = define(
    "cim.nl_adc",
    "Nonlinear ramp conversion: the code of columns [c0, c1) against the ramp is f(clip(z)), quantized to 2^bits levels.",
    operands="analog, ramp",
    results="y",
    attributes=attrs(**_FUNCTION_ATTRS, cols="ints!"),
    verify=_verify_nl_adc,
)


IDENTITY_SUFFIX = ".identity"


def is_identity_tile(op: Operation) -> bool:
    """Whether ``op`` is a tile of identity columns (fuse-activation routes a digital value through them into an
    NL-ADC; their block is the activation's location + ``IDENTITY_SUFFIX``). Its DAC full scale is the activation's
    informative range (``cimc.ramp.informative_range``), beyond which the code does not change."""
    return op.name == "cim.tile_mvm" and str(op.attributes.get("block", "")).endswith(IDENTITY_SUFFIX)
