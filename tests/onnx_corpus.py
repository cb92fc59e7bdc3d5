"""Corpus of small ONNX models that the cimc importer must accept, with reference outputs.

Why this exists: the importer has to cope with every attribute/input variant of
LSTM, GRU and RNN that the ONNX spec allows, plus the glue operators that real
exporters put around the cells (weight re-ordering subgraphs, zero-state shape
arithmetic, classifier heads, convolutions, embeddings, ...).  Writing these by
hand in each test would be repetitive and easy to get subtly wrong, so they are
generated here, deterministically, with seeded random weights and inputs.

Conventions worth knowing when reading the models:

* ``activation_alpha``/``activation_beta`` are *consumed* in activation order
  only by the functions that take the parameter (Affine, LeakyRelu,
  ThresholdedRelu, ScaledTanh, HardSigmoid, Elu take alpha; Affine, ScaledTanh,
  HardSigmoid take beta).  This is how onnxruntime reads the spec's "consumed
  in the order of activation functions" (checked empirically: an RNN with
  activations [Relu, LeakyRelu] and alpha [0.0, 0.3] uses 0.0 for LeakyRelu).
  Several cases mix parameter-less and parametrised functions so that an
  importer reading the lists positionally gets a different answer.
* Each parametrised function gets a different value in every slot, so mixing
  up slots is visible in the outputs.
* Clip cases feed larger inputs so the 3.0 clip really changes the result.
* Activation parameters left to their defaults are only used for HardSigmoid,
  LeakyRelu and Elu.  onnxruntime 1.32 does not apply the spec's defaults to
  the others: without activation_alpha, ThresholdedRelu thresholds at 0
  (behaves like Relu) instead of ThresholdedRelu's alpha=1.0, and Affine and
  ScaledTanh use alpha=beta=0 (output identically 0).

``reference_outputs`` runs onnxruntime.  onnxruntime refuses LSTM/GRU/RNN with
``layout=1`` ("Batchwise recurrent operations (layout == 1) are not
supported"); for those models the recurrent nodes are rewritten to the
equivalent ``layout=0`` node wrapped in Transposes, which is exactly the
relation the spec defines between the two layouts, and onnxruntime runs that.
``onnx.reference.ReferenceEvaluator`` is deliberately not the fallback: in
onnx 1.23 its LSTM/GRU/RNN kernels ignore ``sequence_lens``, ``clip``,
``input_forget`` and (LSTM/GRU) ``activations``, so it would silently produce
wrong references for most layout=1 cases.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import zlib
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
DIRECTIONS = ("forward", "reverse", "bidirectional")
SEQ_LENS_MODES = ("absent", "full", "variable")
CLIP_VALUE = 3.0
ALL_ACTIVATIONS = (
    "Relu",
    "Tanh",
    "Sigmoid",
    "Affine",
    "LeakyRelu",
    "ThresholdedRelu",
    "ScaledTanh",
    "HardSigmoid",
    "Elu",
    "Softsign",
    "Softplus",
)
#: Parameter values used when a case gives activation_alpha/beta explicitly;
#: scaled per slot (see ``_activation_params``).
ALPHA_BASE = {
    "Affine": 0.8,
    "LeakyRelu": 0.05,
    "ThresholdedRelu": 0.15,
    "ScaledTanh": 1.3,
    "HardSigmoid": 0.3,
    "Elu": 0.7,
}
BETA_BASE = {"Affine": 0.1, "ScaledTanh": 0.6, "HardSigmoid": 0.45}
GATE_COUNT = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
OUTPUT_NAMES = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
#: Formal input names in schema order; the importer must honour empty names in the middle.
INPUT_NAMES = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
BATCHWISE_REFUSAL = "Batchwise recurrent operations (layout == 1) are not supported"

# Non-default activation sets per direction.  ``None`` means "attribute absent".
# Together they use each of the eleven ONNX activation functions at least once per op.
LSTM_ACTIVATION_SETS: tuple[tuple[str, ...] | None, ...] = (
    None,
    ("Sigmoid", "Tanh", "Tanh"),  # the defaults, spelled out as some exporters do
    ("HardSigmoid", "Tanh", "Tanh"),  # Keras recurrent_activation="hard_sigmoid"
    ("Sigmoid", "Relu", "Relu"),
    ("Sigmoid", "Affine", "ScaledTanh"),
    ("HardSigmoid", "LeakyRelu", "Elu"),
    ("Sigmoid", "ThresholdedRelu", "Softsign"),
    ("Softsign", "Softplus", "Tanh"),
    ("Sigmoid", "Elu", "LeakyRelu"),
    ("Relu", "ScaledTanh", "Affine"),
    ("Sigmoid", "Softplus", "Softsign"),
    ("HardSigmoid", "Sigmoid", "ThresholdedRelu"),
)
GRU_ACTIVATION_SETS: tuple[tuple[str, ...] | None, ...] = (
    None,
    ("Sigmoid", "Tanh"),
    ("HardSigmoid", "Tanh"),
    ("Sigmoid", "Relu"),
    ("Sigmoid", "Affine"),
    ("HardSigmoid", "LeakyRelu"),
    ("Sigmoid", "ThresholdedRelu"),
    ("Softsign", "ScaledTanh"),
    ("Sigmoid", "Elu"),
    ("Sigmoid", "Softsign"),
    ("Relu", "Softplus"),
    ("HardSigmoid", "Sigmoid"),
)
RNN_ACTIVATION_SETS: tuple[tuple[str, ...] | None, ...] = (None, *((name,) for name in ALL_ACTIVATIONS))
ACTIVATION_SETS = {"LSTM": LSTM_ACTIVATION_SETS, "GRU": GRU_ACTIVATION_SETS, "RNN": RNN_ACTIVATION_SETS}
SHORT_ACTIVATION = {
    "Relu": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sig",
    "Affine": "aff",
    "LeakyRelu": "lrelu",
    "ThresholdedRelu": "trelu",
    "ScaledTanh": "stanh",
    "HardSigmoid": "hsig",
    "Elu": "elu",
    "Softsign": "ssign",
    "Softplus": "splus",
}
# Which outputs a case keeps: "Y" kept, "" explicitly empty; a shorter tuple omits trailing outputs.
OUTPUT_PATTERNS = {
    "LSTM": (
        ("Y", "Y_h", "Y_c"),
        ("Y",),
        ("", "Y_h", "Y_c"),
        ("Y", "", "Y_c"),
        ("Y", "Y_h"),
        ("", "", "Y_c"),
        ("Y", "Y_h", ""),
        ("", "Y_h"),
    ),
    "GRU": (("Y", "Y_h"), ("Y",), ("", "Y_h"), ("Y", "")),
    "RNN": (("Y", "Y_h"), ("Y",), ("", "Y_h"), ("Y", "")),
}


@dataclasses.dataclass(frozen=True)
class CorpusCase:
    """One corpus model with deterministic inputs.

    ``name`` is unique across ``all_cases()`` and usable as a pytest id.
    ``feeds`` holds float32 tensors for float inputs, int32 for
    ``sequence_lens`` and int64 for token ids.
    """

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]


def _seed(name: str) -> int:
    """Seed derived from a case name, so a case's data never depends on which other cases exist."""
    return zlib.crc32(name.encode("utf-8"))


class _Builder:
    """Accumulates the pieces of one graph; keeps case builders short and uniform."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rng = np.random.default_rng(_seed(name))
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[tuple[str, int]] = []
        self.feeds: dict[str, np.ndarray] = {}
        self._counter = itertools.count()

    def fresh(self, stem: str) -> str:
        """Return a graph-unique tensor name."""
        return f"{stem}_{next(self._counter)}"

    def initializer(self, stem: str, array: np.ndarray) -> str:
        """Add ``array`` as an initializer under a fresh name."""
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, stem: str, shape: Sequence[int], scale: float = 1.0) -> str:
        """Add a uniform(-scale, scale) float32 initializer."""
        return self.initializer(stem, self.rng.uniform(-scale, scale, size=tuple(shape)).astype(np.float32))

    def ints(self, values: Sequence[int]) -> str:
        """Add a 1-D int64 initializer (shape/axes/starts operands)."""
        return self.initializer("const", np.asarray(values, dtype=np.int64))

    def constant_node(self, array: np.ndarray) -> str:
        """Emit a Constant node, the way the TorchScript exporter materialises operands."""
        name = self.fresh("Constant_output")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array))))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        """Emit a single-output node and return its output name."""
        return self.op_multi(op_type, inputs, 1, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int, **attrs: object) -> list[str]:
        """Emit a node with explicit (possibly empty) output names, or ``outputs`` fresh ones."""
        names = [self.fresh(op_type) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names

    def graph_input(self, name: str, shape: Sequence[int | str], value: np.ndarray) -> str:
        """Declare a graph input with (possibly symbolic) ``shape`` and record its feed."""
        elem_type = helper.np_dtype_to_tensor_dtype(value.dtype)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        self.feeds[name] = value
        return name

    def float_input(self, name: str, shape: Sequence[int | str], concrete: Sequence[int], scale: float = 1.0) -> str:
        """Declare a float32 graph input fed with seeded normal data of shape ``concrete``."""
        value = (scale * self.rng.standard_normal(tuple(concrete))).astype(np.float32)
        return self.graph_input(name, shape, value)

    def graph_output(self, name: str, elem_type: int = TensorProto.FLOAT) -> None:
        """Mark ``name`` as a graph output; its shape is filled in by shape inference."""
        self.outputs.append((name, elem_type))

    def build(self, opset: int, ir_version: int | None = None) -> CorpusCase:
        """Assemble, shape-infer and check the model.

        ``ir_version`` below 4 lists every initializer as a graph input, as old
        exporters did (and as IR 3 requires).
        """
        inputs = list(self.inputs)
        opsets = [helper.make_opsetid("", opset)]
        ir = ir_version if ir_version is not None else helper.find_min_ir_version_for(opsets)
        if ir < 4:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.initializers]
        graph = helper.make_graph(
            self.nodes,
            self.name.replace("-", "_"),
            inputs,
            [helper.make_tensor_value_info(name, elem_type, None) for name, elem_type in self.outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="cimc-test-corpus")
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        del model.graph.output[:]
        model.graph.output.extend(inferred.graph.output)
        onnx.checker.check_model(model, full_check=True)
        return CorpusCase(self.name, model, self.feeds)


# ---------------------------------------------------------------------------
# Single recurrent node cases
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _RecurrentSpec:
    """Every knob of one single-node recurrent case."""

    op: str
    direction: str
    layout: int
    seq_lens: str
    clip: bool
    initial_states: bool
    bias: bool
    activations: tuple[str, ...] | None  # all directions concatenated
    activation_params: bool  # give activation_alpha/beta explicitly
    outputs: tuple[str, ...]
    opset: int
    symbolic: bool
    explicit_defaults: bool  # write direction/layout/... even when at default values
    trailing_empty_inputs: bool  # pad the input list with "" up to the schema's arity
    peepholes: bool = False
    input_forget: bool = False
    linear_before_reset: bool = False
    ir_version: int | None = None
    dims: tuple[int, int, int, int] = (4, 2, 3, 3)  # T, B, input_size, hidden_size
    tag: str = ""  # extra name suffix for cases outside the main matrix

    def present_inputs(self) -> set[str]:
        """Formal names of the optional inputs this case supplies, plus the required ones."""
        present = {"X", "W", "R"}
        present |= {"B"} if self.bias else set()
        present |= set() if self.seq_lens == "absent" else {"sequence_lens"}
        present |= (
            ({"initial_h", "initial_c"} if self.op == "LSTM" else {"initial_h"}) if self.initial_states else set()
        )
        present |= {"P"} if self.peepholes else set()
        return present

    @property
    def has_trailing_empty_inputs(self) -> bool:
        """Whether the node's input list ends with explicit empty names."""
        return self.trailing_empty_inputs and INPUT_NAMES[self.op][-1] not in self.present_inputs()

    @property
    def name(self) -> str:
        """Pytest-friendly unique name listing every non-default knob."""
        parts = [self.op.lower(), self.direction, f"layout{self.layout}"]
        parts += ["clip"] if self.clip else []
        parts += [] if self.seq_lens == "absent" else [f"seqlens-{'full' if self.seq_lens == 'full' else 'var'}"]
        parts += ["init"] if self.initial_states else []
        parts += [] if self.bias else ["nobias"]
        parts += ["peep"] if self.peepholes else []
        parts += ["coupled"] if self.input_forget else []
        parts += ["lbr"] if self.linear_before_reset else []
        if self.activations is not None:
            parts.append("act-" + ".".join(SHORT_ACTIVATION[a] for a in self.activations))
        parts.append("out-" + ".".join(o.lower().replace("_", "") or "x" for o in self.outputs))
        parts += ["trailempty"] if self.has_trailing_empty_inputs else []
        parts.append(f"opset{self.opset}")
        parts += [self.tag] if self.tag else []
        return "-".join(parts)


def _activation_params(activations: Sequence[str]) -> tuple[list[float], list[float]]:
    """alpha/beta lists in the consumed-by-users-only convention, with a distinct value per slot."""
    alpha = [round(ALPHA_BASE[a] * (1 + 0.25 * slot), 4) for slot, a in enumerate(activations) if a in ALPHA_BASE]
    beta = [round(BETA_BASE[a] * (1 + 0.25 * slot), 4) for slot, a in enumerate(activations) if a in BETA_BASE]
    return alpha, beta


def _recurrent_case(spec: _RecurrentSpec) -> CorpusCase:
    """Build the one-node model described by ``spec``."""
    b = _Builder(spec.name)
    steps, batch, input_size, hidden = spec.dims
    num_dir = 2 if spec.direction == "bidirectional" else 1
    gates = GATE_COUNT[spec.op]
    seq_dim: int | str = "seq" if spec.symbolic else steps
    batch_dim: int | str = "batch" if spec.symbolic else batch
    x_shape = [seq_dim, batch_dim, input_size] if spec.layout == 0 else [batch_dim, seq_dim, input_size]
    x_concrete = [steps, batch, input_size] if spec.layout == 0 else [batch, steps, input_size]
    # Larger inputs in clip cases so pre-activations exceed the clip threshold even with input_size 1.
    x = b.float_input("X", x_shape, x_concrete, scale=6.0 if spec.clip else 1.0)

    operands: dict[str, str] = {
        "X": x,
        "W": b.weight("W", (num_dir, gates * hidden, input_size), scale=2.0 if spec.clip else 1.0),
        "R": b.weight("R", (num_dir, gates * hidden, hidden)),
    }
    if spec.bias:
        operands["B"] = b.weight("B", (num_dir, 2 * gates * hidden), scale=0.5)
    if spec.seq_lens != "absent":
        lengths = np.full(batch, steps, dtype=np.int32)
        if spec.seq_lens == "variable":
            lengths = b.rng.integers(1, steps + 1, size=batch).astype(np.int32)
            lengths[b.rng.integers(batch)] = b.rng.integers(1, steps)
        operands["sequence_lens"] = b.graph_input("sequence_lens", [batch_dim], lengths)
    state_shape = [num_dir, batch_dim, hidden] if spec.layout == 0 else [batch_dim, num_dir, hidden]
    state_concrete = [num_dir, batch, hidden] if spec.layout == 0 else [batch, num_dir, hidden]
    if spec.initial_states:
        operands["initial_h"] = b.float_input("initial_h", state_shape, state_concrete, scale=0.5)
        if spec.op == "LSTM":
            operands["initial_c"] = b.float_input("initial_c", state_shape, state_concrete, scale=0.5)
    if spec.peepholes:
        operands["P"] = b.weight("P", (num_dir, 3 * hidden), scale=0.5)

    inputs = [operands.get(name, "") for name in INPUT_NAMES[spec.op]]
    if not spec.has_trailing_empty_inputs:
        while inputs[-1] == "":
            inputs.pop()

    attrs: dict[str, object] = {"hidden_size": hidden}
    if spec.direction != "forward" or spec.explicit_defaults:
        attrs["direction"] = spec.direction
    if spec.opset >= 14 and (spec.layout or spec.explicit_defaults):
        attrs["layout"] = spec.layout
    if spec.clip:
        attrs["clip"] = CLIP_VALUE
    if spec.op == "LSTM" and (spec.input_forget or spec.explicit_defaults):
        attrs["input_forget"] = int(spec.input_forget)
    if spec.op == "GRU" and (spec.linear_before_reset or spec.explicit_defaults):
        attrs["linear_before_reset"] = int(spec.linear_before_reset)
    if spec.activations is not None:
        attrs["activations"] = list(spec.activations)
        alpha, beta = _activation_params(spec.activations)
        if spec.activation_params and alpha:
            attrs["activation_alpha"] = alpha
        if spec.activation_params and beta:
            attrs["activation_beta"] = beta

    b.op_multi(spec.op, inputs, list(spec.outputs), **attrs)
    for name in spec.outputs:
        if name:
            b.graph_output(name)
    return b.build(spec.opset, spec.ir_version)


def _activations_for(op: str, index: int, direction: str) -> tuple[str, ...] | None:
    """Activation list for case ``index``; the reverse half of a bidirectional node uses another set."""
    sets = ACTIVATION_SETS[op]
    forward = sets[index % len(sets)]
    if forward is None:
        return None
    if direction != "bidirectional":
        return forward
    backward = sets[(index + 5) % len(sets)] or DEFAULT_ACTIVATIONS[op]
    return forward + backward


def _balanced(rng: np.random.Generator, count: int, values: Sequence[object]) -> list[object]:
    """``count`` values cycling through ``values`` in shuffled order, so each appears equally often."""
    pool = [values[i % len(values)] for i in range(count)]
    rng.shuffle(pool)
    return pool


def _matrix_specs(op: str) -> list[_RecurrentSpec]:
    """Full product direction x layout x sequence_lens x clip, other knobs spread evenly over it."""
    primary = list(itertools.product(DIRECTIONS, (0, 1), SEQ_LENS_MODES, (False, True)))
    n = len(primary)
    rng = np.random.default_rng(_seed("matrix-" + op))
    initial = _balanced(rng, n, (False, True))
    bias = _balanced(rng, n, (True, False))
    outputs = _balanced(rng, n, OUTPUT_PATTERNS[op])
    opsets = _balanced(rng, n, (14, 22))
    symbolic = _balanced(rng, n, (True, True, True, False))
    explicit = _balanced(rng, n, (False, True))
    trailing = _balanced(rng, n, (False, False, True))
    peep = _balanced(rng, n, (False, True))
    coupled = _balanced(rng, n, (False, True))
    lbr = _balanced(rng, n, (False, True))
    specs = []
    for k, (direction, layout, seq_lens, clip) in enumerate(primary):
        # Variable lengths need two sequences of two steps; clip needs a few inputs to reach the threshold.
        steps = int(rng.integers(2 if seq_lens == "variable" or clip else 1, 7))
        batch = int(rng.integers(2 if seq_lens == "variable" else 1, 4))
        dims = (steps, batch, int(rng.integers(2 if clip else 1, 6)), int(rng.integers(2 if clip else 1, 5)))
        specs.append(
            _RecurrentSpec(
                op=op,
                direction=direction,
                layout=layout,
                seq_lens=seq_lens,
                clip=clip,
                initial_states=bool(initial[k]),
                bias=bool(bias[k]),
                activations=_activations_for(op, k, direction),
                activation_params=True,
                outputs=tuple(outputs[k]),  # type: ignore[arg-type]
                opset=int(opsets[k]),  # type: ignore[call-overload]
                symbolic=bool(symbolic[k]),
                explicit_defaults=bool(explicit[k]),
                trailing_empty_inputs=bool(trailing[k]),
                peepholes=op == "LSTM" and bool(peep[k]),
                input_forget=op == "LSTM" and bool(coupled[k]),
                linear_before_reset=op == "GRU" and bool(lbr[k]),
                dims=dims,
            )
        )
    return specs


def _extra_specs(op: str) -> list[_RecurrentSpec]:
    """Cases outside the matrix: opset 7 (incl. IR 3 with initializers as inputs) and defaulted alpha/beta."""
    full = OUTPUT_NAMES[op]
    common = dict(op=op, layout=0, explicit_defaults=False, trailing_empty_inputs=False, symbolic=True)
    # Only functions whose onnxruntime default matches the spec (see module docstring).
    acts_with_defaults = {
        "LSTM": ("HardSigmoid", "LeakyRelu", "Elu"),
        "GRU": ("HardSigmoid", "Elu"),
        "RNN": ("LeakyRelu",),
    }[op]
    return [
        _RecurrentSpec(
            **common,
            direction="forward",
            seq_lens="absent",
            clip=False,
            initial_states=False,
            bias=True,
            activations=None,
            activation_params=False,
            outputs=full,
            opset=7,
            ir_version=3,
            dims=(5, 2, 3, 4),
            tag="ir3",
        ),
        _RecurrentSpec(
            **common,
            direction="bidirectional",
            seq_lens="variable",
            clip=True,
            initial_states=True,
            bias=True,
            activations=_activations_for(op, 4, "bidirectional"),
            activation_params=True,
            outputs=full,
            opset=7,
            peepholes=op == "LSTM",
            linear_before_reset=op == "GRU",
            ir_version=4,
            dims=(4, 3, 2, 3),
        ),
        _RecurrentSpec(
            **common,
            direction="reverse",
            seq_lens="full",
            clip=False,
            initial_states=True,
            bias=False,
            activations=None,
            activation_params=False,
            outputs=full[:1],
            opset=7,
            input_forget=op == "LSTM",
            ir_version=4,
            dims=(3, 2, 5, 2),
        ),
        _RecurrentSpec(
            **common,
            direction="forward",
            seq_lens="absent",
            clip=False,
            initial_states=True,
            bias=True,
            activations=acts_with_defaults,
            activation_params=False,
            outputs=full,
            opset=14,
            dims=(6, 2, 3, 3),
            tag="defaultparams",
        ),
        _RecurrentSpec(
            **common,
            direction="bidirectional",
            seq_lens="full",
            clip=False,
            initial_states=True,
            bias=True,
            activations=None,
            activation_params=False,
            outputs=full,
            opset=22,
            dims=(1, 1, 2, 2),
            tag="t1b1",
        ),
    ]


def recurrent_cases() -> list[CorpusCase]:
    """Single LSTM/GRU/RNN node models covering the attribute/input space.

    Per op: the full product direction x layout x sequence_lens x clip (36
    cases) with initial states, bias, outputs kept, opset (14/22), symbolic
    dims, explicit default attributes, trailing empty inputs, peepholes,
    input_forget and linear_before_reset spread evenly over it, activation sets
    cycled so that each set meets every direction; plus opset-7 and
    defaulted-parameter cases.
    """
    return [_recurrent_case(spec) for op in RECURRENT_OPS for spec in _matrix_specs(op) + _extra_specs(op)]


# ---------------------------------------------------------------------------
# Multi-layer stacks
# ---------------------------------------------------------------------------


def _cell(
    b: _Builder,
    op: str,
    x: str,
    input_size: int,
    hidden: int,
    direction: str = "forward",
    initial: Sequence[str] = (),
    **attrs: object,
) -> list[str]:
    """Emit one recurrent node with fresh weights; returns [Y, Y_h(, Y_c)]."""
    num_dir = 2 if direction == "bidirectional" else 1
    gates = GATE_COUNT[op]
    w = b.weight("W", (num_dir, gates * hidden, input_size))
    r = b.weight("R", (num_dir, gates * hidden, hidden))
    bias = b.weight("B", (num_dir, 2 * gates * hidden), scale=0.5)
    inputs = [x, w, r, bias, *(["", *initial] if initial else [])]
    outputs = [b.fresh(f"{op}_{o}") for o in OUTPUT_NAMES[op]]
    return b.op_multi(op, inputs, outputs, hidden_size=hidden, direction=direction, **attrs)


def _merge_directions(b: _Builder, y: str) -> str:
    """[T, D, B, H] -> [T, B, D*H] with Transpose + Reshape, as PyTorch exports bidirectional layers."""
    return b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])


def _squeeze(b: _Builder, x: str, axis: int) -> str:
    """Squeeze one axis using the opset-13+ axes input."""
    return b.op("Squeeze", [x, b.ints([axis])])


def stack_cases() -> list[CorpusCase]:
    """Multi-layer and multi-op stacks as exporters emit them."""
    cases = []

    b = _Builder("stack-lstm-2layer")
    x = b.float_input("x", ["seq", "batch", 4], [5, 2, 4])
    y1, h1, c1 = _cell(b, "LSTM", x, 4, 3)
    y2, h2, c2 = _cell(b, "LSTM", _squeeze(b, y1, 1), 3, 3)
    b.op_multi("Squeeze", [y2, b.ints([1])], ["y"])
    b.op_multi("Concat", [h1, h2], ["h_n"], axis=0)
    b.op_multi("Concat", [c1, c2], ["c_n"], axis=0)
    for name in ("y", "h_n", "c_n"):
        b.graph_output(name)
    cases.append(b.build(17))

    b = _Builder("stack-gru-3layer-lbr")
    x = b.float_input("x", ["seq", "batch", 5], [4, 3, 5])
    h = x
    finals = []
    for size in (5, 4, 4):
        y, h_n = _cell(b, "GRU", h, size, 4, linear_before_reset=1)
        h = _squeeze(b, y, 1)
        finals.append(h_n)
    b.op_multi("Identity", [h], ["y"])
    b.op_multi("Concat", finals, ["h_n"], axis=0)
    b.graph_output("y")
    b.graph_output("h_n")
    cases.append(b.build(14))

    b = _Builder("stack-rnn-2layer-relu")
    x = b.float_input("x", ["seq", "batch", 3], [6, 2, 3])
    y1, _ = _cell(b, "RNN", x, 3, 4, activations=["Relu"])
    y2, _ = _cell(b, "RNN", _squeeze(b, y1, 1), 4, 2, activations=["Relu"])
    b.op_multi("Squeeze", [y2, b.ints([1])], ["y"])
    b.graph_output("y")
    cases.append(b.build(17))

    b = _Builder("stack-lstm-bidirectional-2layer")
    x = b.float_input("x", ["seq", "batch", 4], [5, 2, 4])
    y1, _, _ = _cell(b, "LSTM", x, 4, 3, direction="bidirectional")
    y2, h2, _ = _cell(b, "LSTM", _merge_directions(b, y1), 6, 3, direction="bidirectional")
    b.op_multi("Reshape", [b.op("Transpose", [y2], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])], ["y"])
    b.op_multi("Identity", [h2], ["h_n"])
    b.graph_output("y")
    b.graph_output("h_n")
    cases.append(b.build(17))

    # TorchScript slices a user-supplied h0 [layers*dirs, B, H] per layer.
    b = _Builder("stack-gru-bidirectional-2layer-h0")
    x = b.float_input("x", ["seq", "batch", 3], [4, 3, 3])
    h0 = b.float_input("h0", [4, "batch", 2], [4, 3, 2], scale=0.5)
    axis0 = b.ints([0])
    h0_l0 = b.op("Slice", [h0, b.ints([0]), b.ints([2]), axis0])
    h0_l1 = b.op("Slice", [h0, b.ints([2]), b.ints([4]), axis0])
    y1, hn1 = _cell(b, "GRU", x, 3, 2, direction="bidirectional", initial=[h0_l0], linear_before_reset=1)
    y2, hn2 = _cell(
        b, "GRU", _merge_directions(b, y1), 4, 2, direction="bidirectional", initial=[h0_l1], linear_before_reset=1
    )
    b.op_multi("Reshape", [b.op("Transpose", [y2], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])], ["y"])
    b.op_multi("Concat", [hn1, hn2], ["h_n"], axis=0)
    b.graph_output("y")
    b.graph_output("h_n")
    cases.append(b.build(14))

    # User-supplied h0/c0 [layers, B, H] sliced per layer, as TorchScript does for nn.LSTM(h0, c0).
    b = _Builder("stack-lstm-2layer-h0-c0-inputs")
    x = b.float_input("x", ["seq", "batch", 3], [4, 2, 3])
    h0 = b.float_input("h0", [2, "batch", 4], [2, 2, 4], scale=0.5)
    c0 = b.float_input("c0", [2, "batch", 4], [2, 2, 4], scale=0.5)
    h, finals_h, finals_c = x, [], []
    for layer, size in enumerate((3, 4)):
        per_layer = [b.op("Slice", [s, b.ints([layer]), b.ints([layer + 1]), b.ints([0])]) for s in (h0, c0)]
        y, h_n, c_n = _cell(b, "LSTM", h, size, 4, initial=per_layer)
        h = _squeeze(b, y, 1)
        finals_h.append(h_n)
        finals_c.append(c_n)
    b.op_multi("Identity", [h], ["y"])
    b.op_multi("Concat", finals_h, ["h_n"], axis=0)
    b.op_multi("Concat", finals_c, ["c_n"], axis=0)
    for name in ("y", "h_n", "c_n"):
        b.graph_output(name)
    cases.append(b.build(17))

    b = _Builder("stack-rnn-bidirectional-2layer")
    x = b.float_input("x", ["seq", "batch", 2], [5, 3, 2])
    y1, _ = _cell(b, "RNN", x, 2, 3, direction="bidirectional")
    y2, _ = _cell(b, "RNN", _merge_directions(b, y1), 6, 3, direction="bidirectional")
    b.op_multi("Reshape", [b.op("Transpose", [y2], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])], ["y"])
    b.graph_output("y")
    cases.append(b.build(14))

    b = _Builder("stack-lstm-gemm-classifier")
    x = b.float_input("x", ["seq", "batch", 5], [6, 3, 5])
    _, h_n, _ = _cell(b, "LSTM", x, 5, 4)
    features = _squeeze(b, h_n, 0)
    b.op_multi("Gemm", [features, b.weight("fc_weight", (3, 4)), b.weight("fc_bias", (3,))], ["logits"], transB=1)
    b.graph_output("logits")
    cases.append(b.build(17))

    # nn.LSTM(batch_first=True) + Linear on out[:, -1, :], as TorchScript exports it.
    b = _Builder("stack-lstm-batchfirst-last-step-gemm")
    x = b.float_input("x", ["batch", "seq", 4], [2, 5, 4])
    y, _, _ = _cell(b, "LSTM", b.op("Transpose", [x], perm=[1, 0, 2]), 4, 3)
    seq_out = b.op("Transpose", [_squeeze(b, y, 1)], perm=[1, 0, 2])
    last = b.op("Gather", [seq_out, b.constant_node(np.array(-1, dtype=np.int64))], axis=1)
    b.op_multi("Gemm", [last, b.weight("fc_weight", (2, 3)), b.weight("fc_bias", (2,))], ["logits"], transB=1)
    b.graph_output("logits")
    cases.append(b.build(17))

    b = _Builder("stack-gru-matmul-softmax")
    x = b.float_input("x", ["seq", "batch", 3], [5, 2, 3])
    y, _ = _cell(b, "GRU", x, 3, 4)
    scores = b.op("Add", [b.op("MatMul", [_squeeze(b, y, 1), b.weight("proj", (4, 6))]), b.weight("proj_bias", (6,))])
    b.op_multi("Softmax", [scores], ["probs"], axis=-1)
    b.graph_output("probs")
    cases.append(b.build(17))

    b = _Builder("stack-lstm-layout1-2layer")
    x = b.float_input("x", ["batch", "seq", 3], [2, 4, 3])
    y1, _, _ = _cell(b, "LSTM", x, 3, 4, layout=1)
    y2, _, _ = _cell(b, "LSTM", b.op("Reshape", [y1, b.ints([0, 0, -1])]), 4, 2, layout=1)
    b.op_multi("Reshape", [y2, b.ints([0, 0, -1])], ["y"])
    b.graph_output("y")
    cases.append(b.build(14))

    b = _Builder("stack-lstm-into-gru")
    x = b.float_input("x", ["seq", "batch", 4], [5, 2, 4])
    y1, _, _ = _cell(b, "LSTM", x, 4, 3)
    _, h2 = _cell(b, "GRU", _squeeze(b, y1, 1), 3, 2)
    b.op_multi("Squeeze", [h2, b.ints([0])], ["h"])
    b.graph_output("h")
    cases.append(b.build(17))
    return cases


# ---------------------------------------------------------------------------
# Operators around the cells
# ---------------------------------------------------------------------------


def _torch_reorder(b: _Builder, tensor: str, hidden: int, intervals: Sequence[tuple[int, int]]) -> str:
    """Re-order gate blocks of a PyTorch weight with Slice(Constant operands) + Concat.

    This is the ``do_constant_folding=False`` TorchScript pattern: PyTorch
    stores LSTM gates as i,f,g,o and GRU gates as r,z,n; ONNX wants i,o,f,c
    and z,r,h, so the exporter slices gate blocks along axis 0 and concatenates
    them in the new order (LSTM intervals (0,1),(3,4),(1,3); GRU (1,2),(0,1),(2,3)).
    """
    pieces = []
    for start, end in intervals:
        axes = b.constant_node(np.array([0], dtype=np.int64))
        starts = b.constant_node(np.array([start * hidden], dtype=np.int64))
        ends = b.constant_node(np.array([end * hidden], dtype=np.int64))
        pieces.append(b.op("Slice", [tensor, starts, ends, axes]))
    return b.op("Concat", pieces, axis=0)


def _torch_lstm_operands(b: _Builder, input_size: int, hidden: int, intervals: Sequence[tuple[int, int]]) -> list[str]:
    """PyTorch-layout LSTM parameters turned into ONNX W, R, B by a re-ordering subgraph."""
    w_ih = b.weight("weight_ih_l0", (4 * hidden, input_size))
    w_hh = b.weight("weight_hh_l0", (4 * hidden, hidden))
    b_ih = b.weight("bias_ih_l0", (4 * hidden,), scale=0.5)
    b_hh = b.weight("bias_hh_l0", (4 * hidden,), scale=0.5)
    w = _torch_reorder(b, w_ih, hidden, intervals)
    r = _torch_reorder(b, w_hh, hidden, intervals)
    bias = b.op(
        "Concat", [_torch_reorder(b, b_ih, hidden, intervals), _torch_reorder(b, b_hh, hidden, intervals)], axis=0
    )
    axes = b.constant_node(np.array([0], dtype=np.int64))
    return [b.op("Unsqueeze", [t, axes]) for t in (w, r, bias)]


def _zero_state_constant_of_shape(b: _Builder, x: str, batch_axis: int, leading: int, hidden: int) -> str:
    """Shape -> Gather(batch) -> Unsqueeze -> Concat -> ConstantOfShape: TorchScript's zero h0/c0."""
    batch = b.op("Gather", [b.op("Shape", [x]), b.constant_node(np.array(batch_axis, dtype=np.int64))], axis=0)
    batch_1d = b.op("Unsqueeze", [batch, b.constant_node(np.array([0], dtype=np.int64))])
    lead = b.constant_node(np.array([leading], dtype=np.int64))
    tail = b.constant_node(np.array([hidden], dtype=np.int64))
    shape = b.op("Concat", [lead, batch_1d, tail], axis=0)
    return b.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))


def _zero_state_expand(b: _Builder, x: str, batch_axis: int, shape_around: tuple[list[int], list[int]]) -> str:
    """Shape -> Gather(batch) -> Unsqueeze -> Concat -> Expand(0.0): the other common zero-state idiom."""
    batch = b.op("Gather", [b.op("Shape", [x]), b.initializer("batch_index", np.array(batch_axis, dtype=np.int64))])
    batch_1d = b.op("Unsqueeze", [batch, b.ints([0])])
    before, after = shape_around
    parts = ([b.ints(before)] if before else []) + [batch_1d] + ([b.ints(after)] if after else [])
    shape = b.op("Concat", parts, axis=0)
    return b.op("Expand", [b.initializer("zero", np.array(0.0, dtype=np.float32)), shape])


def surrounding_cases() -> list[CorpusCase]:
    """Models exercising the operators exporters place around recurrent cells."""
    cases = []

    # Exactly TorchScript's unfolded nn.LSTM: 3 Slices per tensor, zero states from ConstantOfShape.
    b = _Builder("surround-torch-lstm-gate-reorder-3slice-constantofshape")
    x = b.float_input("x", ["seq", "batch", 4], [5, 2, 4])
    w, r, bias = _torch_lstm_operands(b, 4, 3, ((0, 1), (3, 4), (1, 3)))
    zeros = _zero_state_constant_of_shape(b, x, 1, 1, 3)
    y, _, _ = b.op_multi("LSTM", [x, w, r, bias, "", zeros, zeros], 3, hidden_size=3)
    b.op_multi("Squeeze", [y, b.constant_node(np.array([1], dtype=np.int64))], ["y"])
    b.graph_output("y")
    cases.append(b.build(17))

    # One Slice per gate (i, f, g, o -> i, o, f, g), operands as initializers, zero states by Expand.
    b = _Builder("surround-lstm-gate-reorder-4slice-expand")
    x = b.float_input("x", ["seq", "batch", 3], [4, 3, 3])
    w, r, bias = _torch_lstm_operands(b, 3, 2, ((0, 1), (3, 4), (1, 2), (2, 3)))
    zeros = _zero_state_expand(b, x, 1, ([1], [2]))
    y, h_n, c_n = b.op_multi("LSTM", [x, w, r, bias, "", zeros, zeros], ["y", "h_n", "c_n"], hidden_size=2)
    for name in (y, h_n, c_n):
        b.graph_output(name)
    cases.append(b.build(13))

    # Bidirectional GRU: r,z,n -> z,r,n per direction, directions stacked with Concat.
    b = _Builder("surround-torch-gru-bidirectional-gate-reorder")
    x = b.float_input("x", ["seq", "batch", 3], [4, 2, 3])
    hidden = 2
    gru_intervals = ((1, 2), (0, 1), (2, 3))
    per_direction: list[list[str]] = [[], [], []]
    for suffix in ("", "_reverse"):
        w_ih = b.weight("weight_ih_l0" + suffix, (3 * hidden, 3))
        w_hh = b.weight("weight_hh_l0" + suffix, (3 * hidden, hidden))
        b_ih = b.weight("bias_ih_l0" + suffix, (3 * hidden,), scale=0.5)
        b_hh = b.weight("bias_hh_l0" + suffix, (3 * hidden,), scale=0.5)
        bias = b.op(
            "Concat",
            [_torch_reorder(b, b_ih, hidden, gru_intervals), _torch_reorder(b, b_hh, hidden, gru_intervals)],
            axis=0,
        )
        for slot, tensor in enumerate(
            (_torch_reorder(b, w_ih, hidden, gru_intervals), _torch_reorder(b, w_hh, hidden, gru_intervals), bias)
        ):
            per_direction[slot].append(b.op("Unsqueeze", [tensor, b.constant_node(np.array([0], dtype=np.int64))]))
    w, r, bias = (b.op("Concat", pair, axis=0) for pair in per_direction)
    zeros = _zero_state_constant_of_shape(b, x, 1, 2, hidden)
    y, h_n = b.op_multi(
        "GRU", [x, w, r, bias, "", zeros], 2, hidden_size=hidden, direction="bidirectional", linear_before_reset=1
    )
    b.op_multi(
        "Reshape",
        [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.constant_node(np.array([0, 0, -1], dtype=np.int64))],
        ["y"],
    )
    b.op_multi("Identity", [h_n], ["h_n"])
    b.graph_output("y")
    b.graph_output("h_n")
    cases.append(b.build(17))

    # Weights stored in other dtypes/layouts and folded into shape: Cast, Transpose, Squeeze, Reshape.
    b = _Builder("surround-fold-cast-transpose-squeeze-reshape")
    x = b.float_input("x", ["seq", "batch", 3], [5, 2, 3])
    w_half = b.initializer("w_fp16", b.rng.uniform(-1, 1, (3, 8)).astype(np.float16))
    w = b.op("Unsqueeze", [b.op("Transpose", [b.op("Cast", [w_half], to=TensorProto.FLOAT)], perm=[1, 0]), b.ints([0])])
    r = b.op("Squeeze", [b.weight("r_4d", (1, 1, 8, 2)), b.ints([0])])
    bias = b.op("Reshape", [b.weight("b_2x8", (2, 8), scale=0.5), b.ints([1, 16])])
    b.op_multi("LSTM", [x, w, r, bias], ["y", "y_h"], hidden_size=2)
    b.graph_output("y")
    b.graph_output("y_h")
    cases.append(b.build(13))

    # Per-layer weights picked from stacked tensors with Gather; a shared R reached through Identity.
    b = _Builder("surround-fold-gather-layer-weights-identity")
    x = b.float_input("x", ["seq", "batch", 3], [4, 2, 3])
    w_all = b.weight("w_layers", (2, 9, 3))
    r_shared = b.weight("r_shared", (1, 9, 3))
    h = x
    for layer in range(2):
        w = b.op(
            "Unsqueeze",
            [b.op("Gather", [w_all, b.initializer("layer", np.array(layer, dtype=np.int64))], axis=0), b.ints([0])],
        )
        y, _ = b.op_multi("GRU", [h, w, b.op("Identity", [r_shared])], 2, hidden_size=3)
        h = _squeeze(b, y, 1)
    b.op_multi("Identity", [h], ["y"])
    b.graph_output("y")
    cases.append(b.build(17))

    # Batch-first GRU (layout=1): the batch dimension is axis 0 of X and of the zero state.
    b = _Builder("surround-zero-state-expand-gru-layout1")
    x = b.float_input("x", ["batch", "seq", 4], [3, 5, 4])
    zeros = _zero_state_expand(b, x, 0, ([], [1, 3]))
    y, h_n = b.op_multi(
        "GRU",
        [x, b.weight("W", (1, 9, 4)), b.weight("R", (1, 9, 3)), "", "", zeros],
        ["y", "h_n"],
        hidden_size=3,
        layout=1,
    )
    b.graph_output(y)
    b.graph_output(h_n)
    cases.append(b.build(14))

    b = _Builder("surround-zero-state-constantofshape-rnn-bidirectional")
    x = b.float_input("x", ["seq", "batch", 2], [3, 2, 2])
    zeros = _zero_state_constant_of_shape(b, x, 1, 2, 3)
    b.op_multi(
        "RNN",
        [x, b.weight("W", (2, 3, 2)), b.weight("R", (2, 3, 3)), b.weight("B", (2, 6)), "", zeros],
        ["", "h_n"],
        hidden_size=3,
        direction="bidirectional",
    )
    b.graph_output("h_n")
    cases.append(b.build(14))

    # Keyword-spotting style: explicit Pad, grouped/strided/dilated Conv1d, Relu, then LSTM over time.
    b = _Builder("surround-pad-conv1d-lstm-gemm")
    x = b.float_input("x", ["batch", 4, "seq"], [2, 4, 12])
    padded = b.op(
        "Pad",
        [x, b.ints([0, 0, 1, 0, 0, 1]), b.initializer("pad_value", np.array(0.0, dtype=np.float32))],
        mode="constant",
    )
    conv = b.op(
        "Conv",
        [padded, b.weight("conv_w", (6, 2, 3)), b.weight("conv_b", (6,))],
        pads=[1, 1],
        strides=[2],
        dilations=[2],
        group=2,
        kernel_shape=[3],
    )
    seq = b.op("Transpose", [b.op("Relu", [conv])], perm=[2, 0, 1])
    _, h_n, _ = _cell(b, "LSTM", seq, 6, 4)
    b.op_multi(
        "Gemm",
        [_squeeze(b, h_n, 0), b.weight("fc_w", (4, 3)), b.weight("fc_b", (1, 3))],
        ["logits"],
        alpha=0.5,
        beta=2.0,
    )
    b.graph_output("logits")
    cases.append(b.build(17))

    # CRNN: Conv2d feature extractor, width becomes time, bidirectional GRU, per-frame LogSoftmax.
    b = _Builder("surround-crnn-conv2d-gru-logsoftmax")
    x = b.float_input("image", ["batch", 2, 8, "width"], [2, 2, 8, 10])
    conv = b.op(
        "Conv",
        [x, b.weight("conv_w", (4, 1, 3, 3)), b.weight("conv_b", (4,))],
        pads=[1, 1, 1, 1],
        strides=[2, 1],
        dilations=[1, 2],
        group=2,
    )
    frames = b.op("Reshape", [b.op("Transpose", [b.op("Relu", [conv])], perm=[3, 0, 1, 2]), b.ints([0, 0, 16])])
    y, _ = _cell(b, "GRU", frames, 16, 3, direction="bidirectional", linear_before_reset=1)
    scores = b.op("MatMul", [_merge_directions(b, y), b.weight("head", (6, 5))])
    b.op_multi("LogSoftmax", [scores], ["log_probs"], axis=2)
    b.graph_output("log_probs")
    cases.append(b.build(17))

    # Input normalisation with broadcasting Sub/Div/Mul/Add, Tanh on the output sequence.
    b = _Builder("surround-broadcast-normalize-lstm-tanh")
    x = b.float_input("x", ["seq", "batch", 3], [5, 2, 3])
    centred = b.op("Sub", [x, b.weight("mean", (3,))])
    scaled = b.op("Div", [centred, b.initializer("std", np.array([0.5, 1.5, 2.0], dtype=np.float32))])
    shifted = b.op(
        "Add",
        [b.op("Mul", [scaled, b.initializer("gain", np.array([1.5], dtype=np.float32))]), b.weight("shift", (1, 1, 3))],
    )
    y, _, _ = _cell(b, "LSTM", shifted, 3, 2)
    b.op_multi("Tanh", [b.op("Add", [_squeeze(b, y, 1), b.weight("out_bias", (1, 2))])], ["y"])
    b.graph_output("y")
    cases.append(b.build(17))

    # Language model: int64 token ids -> embedding Gather -> LSTM with int64 lengths Cast to int32 -> ArgMax.
    b = _Builder("surround-embedding-lstm-softmax-argmax")
    tokens = b.graph_input("tokens", ["seq", "batch"], b.rng.integers(0, 7, size=(5, 3)).astype(np.int64))
    lengths = b.graph_input("lengths", ["batch"], np.array([5, 2, 4], dtype=np.int64))
    embedded = b.op("Gather", [b.weight("embedding", (7, 4)), tokens], axis=0)
    gates = GATE_COUNT["LSTM"]
    y, _, _ = b.op_multi(
        "LSTM",
        [
            embedded,
            b.weight("W", (1, gates * 3, 4)),
            b.weight("R", (1, gates * 3, 3)),
            b.weight("B", (1, 2 * gates * 3)),
            b.op("Cast", [lengths], to=TensorProto.INT32),
        ],
        3,
        hidden_size=3,
    )
    logits = b.op(
        "Add", [b.op("MatMul", [_squeeze(b, y, 1), b.weight("decoder", (3, 7))]), b.weight("decoder_bias", (7,))]
    )
    b.op_multi("Softmax", [logits], ["probs"], axis=-1)
    b.op_multi("ArgMax", ["probs"], ["next_token"], axis=-1, keepdims=0)
    b.graph_output("probs")
    b.graph_output("next_token", TensorProto.INT64)
    cases.append(b.build(17))

    # Layer norm decomposed into ReduceMean/Sub/Pow/Sqrt/Div (opset 17: ReduceMean axes attribute).
    b = _Builder("surround-layernorm-decomposed-lstm-sigmoid")
    x = b.float_input("x", ["seq", "batch", 4], [4, 2, 4])
    y, _, _ = _cell(b, "LSTM", x, 4, 4)
    h = _squeeze(b, y, 1)
    centred = b.op("Sub", [h, b.op("ReduceMean", [h], axes=[-1], keepdims=1)])
    variance = b.op(
        "ReduceMean",
        [b.op("Pow", [centred, b.initializer("two", np.array(2.0, dtype=np.float32))])],
        axes=[-1],
        keepdims=1,
    )
    std = b.op("Sqrt", [b.op("Add", [variance, b.initializer("eps", np.array(1e-5, dtype=np.float32))])])
    normed = b.op("Add", [b.op("Mul", [b.op("Div", [centred, std]), b.weight("gamma", (4,))]), b.weight("beta", (4,))])
    b.op_multi("Sigmoid", [normed], ["y"])
    b.graph_output("y")
    cases.append(b.build(17))

    # Opset 18: ReduceMean takes axes as an input; pooled GRU states through an MLP head.
    b = _Builder("surround-reducemean-opset18-gru-mlp")
    x = b.float_input("x", ["seq", "batch", 3], [6, 2, 3])
    y, _ = _cell(b, "GRU", x, 3, 4)
    pooled = b.op("ReduceMean", [_squeeze(b, y, 1), b.ints([0])], keepdims=0)
    hidden_layer = b.op("Relu", [b.op("Gemm", [pooled, b.weight("fc1_w", (5, 4)), b.weight("fc1_b", (5,))], transB=1)])
    b.op_multi("Sigmoid", [b.op("Gemm", [hidden_layer, b.weight("fc2_w", (5, 1)), b.weight("fc2_b", (1,))])], ["score"])
    b.graph_output("score")
    cases.append(b.build(18))

    # Keras-style (tf2onnx): batch-major input transposed to time-major, hard_sigmoid gates,
    # lengths as an input, last frame taken with Slice, Y_h through a dense sigmoid head.
    b = _Builder("surround-keras-style-lstm-seqlens-slice-last")
    x = b.float_input("x", ["batch", "seq", 4], [3, 5, 4])
    lengths = b.graph_input("lengths", ["batch"], np.array([5, 3, 1], dtype=np.int32))
    gates = GATE_COUNT["LSTM"]
    y, y_h, _ = b.op_multi(
        "LSTM",
        [
            b.op("Transpose", [x], perm=[1, 0, 2]),
            b.weight("W", (1, gates * 3, 4)),
            b.weight("R", (1, gates * 3, 3)),
            b.weight("B", (1, 2 * gates * 3)),
            lengths,
        ],
        3,
        hidden_size=3,
        activations=["HardSigmoid", "Tanh", "Tanh"],
        activation_alpha=[0.2],
        activation_beta=[0.5],
    )
    last = b.op("Slice", [_squeeze(b, y, 1), b.ints([-1]), b.ints([np.iinfo(np.int64).max]), b.ints([0])])
    b.op_multi("Squeeze", [last, b.ints([0])], ["last_frame"])
    dense = b.op("Add", [b.op("MatMul", [_squeeze(b, y_h, 0), b.weight("dense_w", (3, 1))]), b.weight("dense_b", (1,))])
    b.op_multi("Sigmoid", [dense], ["score"])
    b.graph_output("last_frame")
    b.graph_output("score")
    cases.append(b.build(13))

    # Weights as Constant nodes (value tensors), R through Identity, RNN output passed through Relu.
    b = _Builder("surround-constant-node-weights-rnn-relu")
    x = b.float_input("x", ["seq", "batch", 2], [5, 2, 2])
    w = b.constant_node(b.rng.uniform(-1, 1, (1, 3, 2)).astype(np.float32))
    r = b.op("Identity", [b.constant_node(b.rng.uniform(-1, 1, (1, 3, 3)).astype(np.float32))])
    bias = b.constant_node(b.rng.uniform(-0.5, 0.5, (1, 6)).astype(np.float32))
    y, _ = b.op_multi("RNN", [x, w, r, bias], 2, hidden_size=3)
    b.op_multi("Relu", [y], ["y"])
    b.graph_output("y")
    cases.append(b.build(14))
    return cases


def all_cases() -> list[CorpusCase]:
    """Every corpus case: recurrent, stacks, then surrounding-op models."""
    return recurrent_cases() + stack_cases() + surrounding_cases()


# ---------------------------------------------------------------------------
# Reference outputs
# ---------------------------------------------------------------------------


def _run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` on onnxruntime's CPU provider; outputs keyed by graph output name."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the refusal below is expected; don't spam the test log
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, feeds), strict=True))


def timewise_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every layout=1 LSTM/GRU/RNN node as layout=0 between Transposes.

    By the spec, layout=1 only permutes X/initial_h/initial_c ([B,T,I] and
    [B,D,H]) and Y/Y_h/Y_c ([B,T,D,H] and [B,D,H]) relative to layout=0, so
    the rewritten model computes the same function and onnxruntime accepts it.
    """
    rewritten = copy.deepcopy(model)
    graph = rewritten.graph
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx") or layout != 1:
            nodes.append(node)
            continue
        prefix = f"cimc_timewise_{index}"
        new_inputs = list(node.input)
        for slot in (0, 5, 6):  # X, initial_h, initial_c
            if slot < len(new_inputs) and new_inputs[slot]:
                moved = f"{prefix}_in{slot}"
                nodes.append(helper.make_node("Transpose", [new_inputs[slot]], [moved], perm=[1, 0, 2]))
                new_inputs[slot] = moved
        new_outputs = list(node.output)
        after: list[onnx.NodeProto] = []
        for slot, name in enumerate(node.output):
            if name:
                new_outputs[slot] = f"{prefix}_out{slot}"
                perm = [2, 0, 1, 3] if slot == 0 else [1, 0, 2]
                after.append(helper.make_node("Transpose", [new_outputs[slot]], [name], perm=perm))
        attrs = [a for a in node.attribute if a.name != "layout"]
        timewise = helper.make_node(node.op_type, new_inputs, new_outputs, name=node.name)
        timewise.attribute.extend(attrs)
        nodes += [timewise, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def reference_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected outputs of ``model`` on ``feeds``, keyed by graph output name.

    onnxruntime first; if it refuses batchwise (layout=1) recurrent nodes, the
    model is rewritten by ``timewise_equivalent`` and run again (see the module
    docstring for why not ReferenceEvaluator).  Any other refusal propagates.
    """
    try:
        return _run_onnxruntime(model, feeds)
    except OrtFail as error:
        if BATCHWISE_REFUSAL not in str(error):
            raise
    return _run_onnxruntime(timewise_equivalent(model), feeds)
