"""The numpy reference kernels against onnxruntime on single-node ONNX models.

onnxruntime refuses ``layout=1`` for the recurrent ops, so those cases are
checked two ways: against onnxruntime on the equivalent layout-0 problem
(layout is defined as a transposition), and, for the feature subset it
implements, against ``onnx.reference.ReferenceEvaluator`` running layout 1
itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from cimc.kernels import recurrent, tensor_ops
from cimc.kernels.activations import SUPPORTED, Activation, resolve_activations, takes_alpha, takes_beta

RTOL, ATOL = 1e-5, 1e-6
DIRECTIONS = ["forward", "reverse", "bidirectional"]
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
KERNELS = {"LSTM": recurrent.lstm, "GRU": recurrent.gru, "RNN": recurrent.rnn}
INPUT_NAMES = {
    "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"],
    "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
    "RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
}
OUTPUT_NAMES = {"LSTM": ["Y", "Y_h", "Y_c"], "GRU": ["Y", "Y_h"], "RNN": ["Y", "Y_h"]}
T, BATCH, INPUT, HIDDEN = 5, 3, 4, 3
LENGTHS = np.array([T, 2, 4], dtype=np.int32)

_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def _model(
    op_type: str,
    inputs: list[tuple[str, np.ndarray | None]],
    outputs: list[str],
    attrs: dict,
    opset: int,
) -> onnx.ModelProto:
    """A one-node model; absent optional inputs become empty names."""
    names = [name if value is not None else "" for name, value in inputs]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op_type, names, outputs, **{k: v for k, v in attrs.items() if v is not None})
    graph = helper.make_graph(
        [node],
        op_type.lower(),
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in inputs
            if value is not None
        ],
        [onnx.ValueInfoProto(name=name) for name in outputs],
    )
    opset_id = helper.make_opsetid("", opset)
    return helper.make_model(
        graph, opset_imports=[opset_id], ir_version=helper.find_min_ir_version_for([opset_id])
    )


def _feeds(inputs: list[tuple[str, np.ndarray | None]]) -> dict[str, np.ndarray]:
    return {name: value for name, value in inputs if value is not None}


def _onnxruntime(
    op_type: str, inputs: list[tuple[str, np.ndarray | None]], outputs: list[str], attrs: dict, opset: int
) -> list[np.ndarray]:
    model = _model(op_type, inputs, outputs, attrs, opset)
    session = ort.InferenceSession(
        model.SerializeToString(), _SESSION_OPTIONS, providers=["CPUExecutionProvider"]
    )
    return session.run(None, _feeds(inputs))


def _reference_evaluator(
    op_type: str, inputs: list[tuple[str, np.ndarray | None]], outputs: list[str], attrs: dict, opset: int
) -> list[np.ndarray]:
    return ReferenceEvaluator(_model(op_type, inputs, outputs, attrs, opset)).run(None, _feeds(inputs))


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# Recurrent ops


def _recurrent_inputs(
    op: str,
    direction: str,
    *,
    layout: int = 0,
    seq_lens: bool = False,
    initial: bool = False,
    peephole: bool = False,
    bias: bool = True,
) -> dict[str, np.ndarray | None]:
    """A small random problem; X is scaled so a clip of 0.8 bites."""
    rng = np.random.default_rng(0)
    D, G, H = (2 if direction == "bidirectional" else 1), GATES[op], HIDDEN

    def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.uniform(-scale, scale, shape).astype(np.float32)

    batch_major = layout == 1
    inputs: dict[str, np.ndarray | None] = {
        "X": rand(BATCH, T, INPUT, scale=2.0) if batch_major else rand(T, BATCH, INPUT, scale=2.0),
        "W": rand(D, G * H, INPUT),
        "R": rand(D, G * H, H),
        "B": rand(D, 2 * G * H) if bias else None,
        "sequence_lens": LENGTHS if seq_lens else None,
    }
    state_shape = (BATCH, D, H) if batch_major else (D, BATCH, H)
    inputs["initial_h"] = rand(*state_shape) if initial else None
    if op == "LSTM":
        inputs["initial_c"] = rand(*state_shape) if initial else None
        inputs["P"] = rand(D, 3 * H) if peephole else None
    return inputs


def _run_kernel(op: str, inputs: dict[str, np.ndarray | None], attrs: dict) -> tuple:
    return KERNELS[op](*(inputs.get(n) for n in INPUT_NAMES[op]), **attrs)


def _onnxruntime_recurrent(
    op: str, inputs: dict[str, np.ndarray | None], attrs: dict, layout: int = 0, opset: int = 14
) -> list[np.ndarray]:
    """onnxruntime's outputs; a layout-1 problem is transposed to layout 0 and back."""
    if layout == 1:
        inputs = {
            name: value.transpose(1, 0, 2) if value is not None and name in ("X", "initial_h", "initial_c") else value
            for name, value in inputs.items()
        }
    outputs = _onnxruntime(op, [(n, inputs.get(n)) for n in INPUT_NAMES[op]], OUTPUT_NAMES[op], attrs, opset)
    if layout == 1:
        outputs = [outputs[0].transpose(2, 0, 1, 3), *(state.transpose(1, 0, 2) for state in outputs[1:])]
    return outputs


def _check_recurrent(op: str, inputs: dict[str, np.ndarray | None], attrs: dict, layout: int = 0) -> None:
    actual = _run_kernel(op, inputs, {**attrs, "layout": layout})
    expected = _onnxruntime_recurrent(op, inputs, attrs, layout)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        _assert_close(a, e)


@pytest.mark.parametrize("input_forget", [0, 1])
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("seq_lens", [False, True])
@pytest.mark.parametrize("clip", [None, 0.8])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_matches_onnxruntime(
    direction: str, layout: int, clip: float | None, seq_lens: bool, initial: bool, peephole: bool, input_forget: int
) -> None:
    inputs = _recurrent_inputs(
        "LSTM", direction, layout=layout, seq_lens=seq_lens, initial=initial, peephole=peephole
    )
    attrs = {"hidden_size": HIDDEN, "direction": direction, "clip": clip, "input_forget": input_forget}
    _check_recurrent("LSTM", inputs, attrs, layout)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("seq_lens", [False, True])
@pytest.mark.parametrize("clip", [None, 0.8])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_matches_onnxruntime(
    direction: str, layout: int, clip: float | None, seq_lens: bool, initial: bool, linear_before_reset: int
) -> None:
    inputs = _recurrent_inputs("GRU", direction, layout=layout, seq_lens=seq_lens, initial=initial)
    attrs = {
        "hidden_size": HIDDEN, "direction": direction, "clip": clip, "linear_before_reset": linear_before_reset
    }
    _check_recurrent("GRU", inputs, attrs, layout)


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("seq_lens", [False, True])
@pytest.mark.parametrize("clip", [None, 0.8])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_rnn_matches_onnxruntime(
    direction: str, layout: int, clip: float | None, seq_lens: bool, initial: bool
) -> None:
    inputs = _recurrent_inputs("RNN", direction, layout=layout, seq_lens=seq_lens, initial=initial)
    _check_recurrent("RNN", inputs, {"hidden_size": HIDDEN, "direction": direction, "clip": clip}, layout)


@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("op", list(GATES))
def test_recurrent_opsets_without_bias(op: str, opset: int) -> None:
    inputs = _recurrent_inputs(op, "bidirectional", bias=False, initial=True, seq_lens=True)
    attrs = {"hidden_size": HIDDEN, "direction": "bidirectional"}
    actual = _run_kernel(op, inputs, attrs)
    for a, e in zip(actual, _onnxruntime_recurrent(op, inputs, attrs, opset=opset)):
        _assert_close(a, e)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_with_gaps_in_optional_inputs(direction: str) -> None:
    """P and initial_c without B, sequence_lens or initial_h."""
    inputs = _recurrent_inputs("LSTM", direction, initial=True, peephole=True, bias=False)
    inputs["initial_h"] = None
    _check_recurrent("LSTM", inputs, {"hidden_size": HIDDEN, "direction": direction})


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", list(GATES))
def test_layout_1_matches_reference_evaluator(op: str, direction: str) -> None:
    """ReferenceEvaluator runs layout 1 natively but ignores clip, sequence_lens,
    activations and input_forget, so only the remaining inputs are varied."""
    inputs = _recurrent_inputs(op, direction, layout=1, initial=True, peephole=True)
    attrs = {"hidden_size": HIDDEN, "direction": direction}
    names = INPUT_NAMES[op]
    expected = _reference_evaluator(
        op, [(n, inputs.get(n)) for n in names], OUTPUT_NAMES[op], {**attrs, "layout": 1}, 22
    )
    for a, e in zip(_run_kernel(op, inputs, {**attrs, "layout": 1}), expected):
        _assert_close(a, e)


@pytest.mark.parametrize("op", list(GATES))
def test_sequence_lens_semantics(op: str) -> None:
    """Independently of any runtime: Y is zero past each length, Y_h is the last
    valid Y of the forward direction and the first Y of the reverse one."""
    inputs = _recurrent_inputs(op, "bidirectional", seq_lens=True, initial=True)
    Y, Y_h, *_ = _run_kernel(op, inputs, {"hidden_size": HIDDEN, "direction": "bidirectional"})
    for b, length in enumerate(LENGTHS):
        assert not Y[length:, :, b].any()
        assert Y[length - 1, 0, b].any() and Y[0, 1, b].any()
        np.testing.assert_array_equal(Y_h[0, b], Y[length - 1, 0, b])
        np.testing.assert_array_equal(Y_h[1, b], Y[0, 1, b])


@pytest.mark.parametrize("op", list(GATES))
def test_reverse_starts_at_each_sequence_end(op: str) -> None:
    """A reverse run over a padded entry equals a reverse run over the entry alone."""
    inputs = _recurrent_inputs(op, "reverse", seq_lens=True, initial=True)
    attrs = {"hidden_size": HIDDEN, "direction": "reverse"}
    Y, Y_h, *_ = _run_kernel(op, inputs, attrs)
    b, length = 1, int(LENGTHS[1])
    alone = dict(inputs, sequence_lens=None, X=inputs["X"][:length, b : b + 1])
    for state in ("initial_h", "initial_c"):
        if state in alone:
            alone[state] = inputs[state][:, b : b + 1]
    Y_alone, Y_h_alone, *_ = _run_kernel(op, alone, attrs)
    np.testing.assert_allclose(Y[:length, :, b], Y_alone[:, :, 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(Y_h[:, b], Y_h_alone[:, 0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op", list(GATES))
def test_clip_changes_the_result(op: str) -> None:
    """Guards the clip tests above against a clip bound that never bites."""
    inputs = _recurrent_inputs(op, "forward")
    unclipped = _run_kernel(op, inputs, {"hidden_size": HIDDEN})
    clipped = _run_kernel(op, inputs, {"hidden_size": HIDDEN, "clip": 0.8})
    assert not np.allclose(unclipped[0], clipped[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op", list(GATES))
def test_float64_stays_float64(op: str) -> None:
    inputs = _recurrent_inputs(op, "bidirectional", initial=True, seq_lens=True)
    inputs64 = {k: v.astype(np.float64) if v is not None and v.dtype == np.float32 else v for k, v in inputs.items()}
    attrs = {"hidden_size": HIDDEN, "direction": "bidirectional"}
    outputs64 = _run_kernel(op, inputs64, attrs)
    assert all(o.dtype == np.float64 for o in outputs64)
    for a, e in zip(outputs64, _onnxruntime_recurrent(op, inputs, attrs)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


# Alpha for the k-th occurrence of an activation is base + k * step; likewise beta.
_ALPHA = {
    "Affine": (0.7, 0.05), "LeakyRelu": (0.1, 0.05), "ThresholdedRelu": (0.1, 0.1),
    "ScaledTanh": (0.9, 0.1), "HardSigmoid": (0.3, 0.05), "Elu": (0.5, 0.1),
}
_BETA = {"Affine": (0.2, -0.05), "ScaledTanh": (1.3, -0.1), "HardSigmoid": (0.4, 0.05)}


def _params(table: dict[str, tuple[float, float]], name: str, count: int) -> list[float] | None:
    if name not in table:
        return None
    base, step = table[name]
    return [base + k * step for k in range(count)]


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("op", list(GATES))
def test_every_activation_matches_onnxruntime(op: str, name: str) -> None:
    per_direction = {"LSTM": 3, "GRU": 2, "RNN": 1}[op]
    count = 2 * per_direction
    inputs = _recurrent_inputs(op, "bidirectional", initial=True, seq_lens=True)
    attrs = {
        "hidden_size": HIDDEN,
        "direction": "bidirectional",
        "activations": [name] * count,
        "activation_alpha": _params(_ALPHA, name, count),
        "activation_beta": _params(_BETA, name, count),
        # Bounds the gates so unbounded activations cannot overflow float32 in five steps.
        "clip": 1.0,
    }
    _check_recurrent(op, inputs, attrs)


@pytest.mark.parametrize(
    ("op", "names", "alphas", "betas"),
    [
        ("LSTM", ["LeakyRelu", "Tanh", "HardSigmoid", "Sigmoid", "ScaledTanh", "Affine"],
         [0.2, 0.3, 0.9, 0.6], [0.45, 1.2, 0.1]),
        ("GRU", ["Elu", "ThresholdedRelu", "HardSigmoid", "Affine"], [0.7, 0.15, 0.25, 0.8], [0.55, 0.05]),
        ("RNN", ["Tanh", "LeakyRelu"], [0.5], None),
    ],
)
def test_alpha_beta_are_queues_consumed_by_users(
    op: str, names: list[str], alphas: list[float], betas: list[float]
) -> None:
    """Mixes activations with and without alpha/beta so that positional indexing
    would pick different values from queue consumption."""
    inputs = _recurrent_inputs(op, "bidirectional", initial=True)
    attrs = {
        "hidden_size": HIDDEN, "direction": "bidirectional",
        "activations": names, "activation_alpha": alphas, "activation_beta": betas,
    }
    _check_recurrent(op, inputs, attrs)


@pytest.mark.parametrize(
    ("op", "names"),
    [
        ("LSTM", ["HardSigmoid", "LeakyRelu", "Elu"]),
        ("LSTM", ["Sigmoid", "Affine", "ScaledTanh"]),
        ("GRU", ["HardSigmoid", "Elu"]),
        ("RNN", ["LeakyRelu"]),
        ("LSTM", ["sigmoid", "TANH", "tAnH"]),
        ("GRU", ["HARDSIGMOID", "relu"]),
    ],
)
def test_default_alpha_beta_and_case_match_onnxruntime(op: str, names: list[str]) -> None:
    inputs = _recurrent_inputs(op, "forward", initial=True)
    _check_recurrent(op, inputs, {"hidden_size": HIDDEN, "activations": names})


def test_onnxruntime_defaults_thresholdedrelu_alpha_to_zero() -> None:
    """Pins a known divergence: the spec's default alpha is ThresholdedRelu's 1.0,
    onnxruntime's recurrent kernels use 0.0."""
    inputs = _recurrent_inputs("GRU", "forward")
    names = ["Sigmoid", "ThresholdedRelu"]
    expected = _onnxruntime_recurrent("GRU", inputs, {"hidden_size": HIDDEN, "activations": names})
    explicit = _run_kernel("GRU", inputs, {"hidden_size": HIDDEN, "activations": names, "activation_alpha": [0.0]})
    spec = _run_kernel("GRU", inputs, {"hidden_size": HIDDEN, "activations": names})
    _assert_close(explicit[0], expected[0])
    assert not np.allclose(spec[0], expected[0])


def test_rnn_accepts_schema_default_pair_for_one_direction() -> None:
    inputs = _recurrent_inputs("RNN", "forward")
    _check_recurrent("RNN", inputs, {"hidden_size": HIDDEN, "activations": ["Relu", "Relu"]})
    with pytest.raises(ValueError, match="two different activations"):
        _run_kernel("RNN", inputs, {"hidden_size": HIDDEN, "activations": ["Relu", "Tanh"]})


@pytest.mark.parametrize(
    ("op", "attrs", "change", "error", "match"),
    [
        ("LSTM", {"activations": ["Sigmoid", "Tanh", "Gelu"]}, {}, ValueError, "supported: Relu, Tanh"),
        ("LSTM", {"activations": ["Sigmoid", "Tanh"]}, {}, ValueError, "expected 3 activations"),
        ("GRU", {"activations": ["Sigmoid", "Tanh"], "activation_alpha": [0.1]}, {}, ValueError, "unused"),
        ("RNN", {"direction": "sideways"}, {}, ValueError, "direction must be one of"),
        ("RNN", {"clip": 0.0}, {}, ValueError, "clip must be positive"),
        ("RNN", {"layout": 2}, {}, ValueError, "layout must be 0 or 1"),
        ("GRU", {}, {"sequence_lens": np.array([5, 0, 3], np.int32)}, ValueError, r"\[1, seq_length=5\]"),
        ("GRU", {}, {"sequence_lens": np.array([6, 1, 3], np.int32)}, ValueError, r"\[1, seq_length=5\]"),
        ("LSTM", {}, {"R": np.zeros((1, 12, 3), np.float64)}, TypeError, "R has dtype float64"),
        ("LSTM", {}, {"P": np.zeros((1, 9, 3), np.float32)}, ValueError, r"P must have shape \[1, 9\]"),
    ],
)
def test_recurrent_rejects_invalid_input(
    op: str, attrs: dict, change: dict, error: type[Exception], match: str
) -> None:
    inputs = {**_recurrent_inputs(op, "forward"), **change}
    with pytest.raises(error, match=match):
        _run_kernel(op, inputs, {"hidden_size": HIDDEN, **attrs})


# ---------------------------------------------------------------------------
# Activations


def test_resolve_activations_queues() -> None:
    resolved = resolve_activations(
        ["leakyrelu", "Tanh", "HARDSIGMOID", "Sigmoid", "ScaledTanh", "Affine"],
        [0.2, 0.3, 0.9, 0.6], [0.45, 1.2, 0.1], 3, 2, ["Sigmoid", "Tanh", "Tanh"],
    )
    assert resolved == [
        [Activation("LeakyRelu", 0.2), Activation("Tanh"), Activation("HardSigmoid", 0.3, 0.45)],
        [Activation("Sigmoid"), Activation("ScaledTanh", 0.9, 1.2), Activation("Affine", 0.6, 0.1)],
    ]
    assert resolve_activations(None, None, None, 2, 2, ["Sigmoid", "Tanh"]) == [
        [Activation("Sigmoid"), Activation("Tanh")]
    ] * 2
    assert resolve_activations(["Elu", "HardSigmoid"], [2.0], None, 2, 1, ["Sigmoid", "Tanh"]) == [
        [Activation("Elu", 2.0), Activation("HardSigmoid", 0.2, 0.5)]
    ]


def test_activation_defaults_follow_the_standalone_operators() -> None:
    assert Activation.create("LeakyRelu") == Activation("LeakyRelu", 0.01)
    assert Activation.create("hardsigmoid") == Activation("HardSigmoid", 0.2, 0.5)
    assert Activation.create("ThresholdedRelu") == Activation("ThresholdedRelu", 1.0)
    assert Activation.create("ELU") == Activation("Elu", 1.0)
    assert Activation.create("Affine") == Activation("Affine", 0.0, 0.0)
    assert Activation.create("ScaledTanh") == Activation("ScaledTanh", 0.0, 0.0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Activation.create("Swish"), "supported: Relu, Tanh, Sigmoid"),
        (lambda: Activation.create("Tanh", alpha=1.0), "takes no alpha"),
        (lambda: Activation.create("LeakyRelu", beta=1.0), "takes no beta"),
        (lambda: Activation("relu"), "not a canonical activation name"),
        (lambda: Activation("Elu"), "requires alpha"),
    ],
)
def test_activation_rejects_bad_construction(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


_X_ACT = np.array([-30.0, -3.0, -0.7, -0.01, 0.0, 0.01, 0.25, 0.5, 1.0, 2.5, 30.0], dtype=np.float32)


@pytest.mark.parametrize(
    ("name", "alpha", "beta", "onnx_op", "attrs", "opset"),
    [
        ("Relu", None, None, "Relu", {}, 14),
        ("Tanh", None, None, "Tanh", {}, 13),
        ("Sigmoid", None, None, "Sigmoid", {}, 13),
        ("LeakyRelu", 0.3, None, "LeakyRelu", {"alpha": 0.3}, 16),
        ("ThresholdedRelu", 0.25, None, "ThresholdedRelu", {"alpha": 0.25}, 10),
        ("HardSigmoid", 0.3, 0.4, "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 6),
        ("Elu", 0.7, None, "Elu", {"alpha": 0.7}, 6),
        ("Softsign", None, None, "Softsign", {}, 1),
        ("Softplus", None, None, "Softplus", {}, 1),
    ],
)
def test_activation_matches_standalone_operator(
    name: str, alpha: float | None, beta: float | None, onnx_op: str, attrs: dict, opset: int
) -> None:
    """Includes x == alpha for ThresholdedRelu, where the strict comparison matters."""
    (expected,) = _onnxruntime(onnx_op, [("x", _X_ACT)], ["y"], attrs, opset)
    _assert_close(Activation(name, alpha, beta)(_X_ACT), expected)


def test_affine_and_scaledtanh_formulas() -> None:
    x64 = _X_ACT.astype(np.float64)
    np.testing.assert_allclose(Activation("Affine", 0.5, -0.25)(_X_ACT), 0.5 * x64 - 0.25, rtol=RTOL)
    np.testing.assert_allclose(
        Activation("ScaledTanh", 1.5, 0.5)(_X_ACT), 1.5 * np.tanh(0.5 * x64), rtol=RTOL, atol=ATOL
    )


def test_alpha_takers() -> None:
    assert [n for n in SUPPORTED if takes_alpha(n)] == [
        "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"
    ]
    assert [n for n in SUPPORTED if takes_beta(n)] == ["Affine", "ScaledTanh", "HardSigmoid"]


# ---------------------------------------------------------------------------
# Tensor ops


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "bias", "attrs"),
    [
        ((2, 4, 9), (6, 2, 3), True, {"group": 2, "strides": [2], "dilations": [2], "pads": [1, 2]}),
        ((1, 3, 10), (4, 3, 4), False, {"auto_pad": "SAME_UPPER", "strides": [3], "dilations": [2]}),
        ((1, 3, 10), (4, 3, 4), False, {"auto_pad": "SAME_LOWER", "strides": [3], "dilations": [2]}),
        ((1, 3, 10), (4, 3, 2), True, {"auto_pad": "VALID", "strides": [2]}),
        ((1, 2, 5), (2, 2, 1), False, {}),
        ((2, 4, 7, 8), (6, 4, 3, 2), True,
         {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1], "kernel_shape": [3, 2]}),
        ((2, 4, 6, 7), (6, 2, 3, 3), True, {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 3]}),
        ((1, 4, 6, 7), (4, 1, 2, 3), False, {"group": 4, "auto_pad": "SAME_LOWER", "strides": [3, 2]}),
        ((1, 4, 6, 7), (8, 1, 3, 3), True, {"group": 4, "auto_pad": "SAME_UPPER", "dilations": [2, 2]}),
        ((1, 3, 7, 7), (2, 3, 3, 3), False, {"auto_pad": "VALID", "strides": [2, 2]}),
        ((1, 2, 4, 5, 3), (3, 2, 2, 3, 2), True, {"pads": [1, 0, 1, 0, 2, 1], "strides": [1, 2, 1]}),
    ],
)
def test_conv_matches_onnxruntime(x_shape: tuple, w_shape: tuple, bias: bool, attrs: dict) -> None:
    rng = np.random.default_rng(1)
    X, W = _rand(rng, *x_shape), _rand(rng, *w_shape)
    B = _rand(rng, w_shape[0]) if bias else None
    inputs = [("X", X), ("W", W), ("B", B)]
    if attrs.get("auto_pad", "NOTSET").startswith("SAME") and max(attrs.get("dilations", [1])) > 1:
        # onnxruntime refuses dilation with SAME_*; the ONNX evaluator pads with the
        # dilated extent, as ONNX shape inference does.
        (expected,) = _reference_evaluator("Conv", inputs, ["Y"], attrs, 22)
    else:
        (expected,) = _onnxruntime("Conv", inputs, ["Y"], attrs, 22)
    _assert_close(tensor_ops.conv(X, W, B, **attrs), expected)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"auto_pad": "SAME_UPPER", "pads": [1, 1]}, "cannot be combined"),
        ({"group": 2}, "does not fit"),
        ({"kernel_shape": [2]}, "disagrees"),
        ({"pads": [-1, 0]}, "non-negative"),
        ({"auto_pad": "SAME"}, "auto_pad must be"),
    ],
)
def test_conv_rejects_invalid_attributes(attrs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tensor_ops.conv(np.zeros((1, 3, 5), np.float32), np.zeros((2, 3, 3), np.float32), **attrs)


@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5), (4, 1), (4, 5)])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_matches_onnxruntime(trans_a: int, trans_b: int, c_shape: tuple | None) -> None:
    rng = np.random.default_rng(2)
    A = _rand(rng, *((3, 4) if trans_a else (4, 3)))
    B = _rand(rng, *((5, 3) if trans_b else (3, 5)))
    C = None if c_shape is None else _rand(rng, *c_shape)
    attrs = {"alpha": 0.75, "beta": -1.5, "transA": trans_a, "transB": trans_b}
    (expected,) = _onnxruntime("Gemm", [("A", A), ("B", B), ("C", C)], ["Y"], attrs, 13)
    _assert_close(tensor_ops.gemm(A, B, C, **attrs), expected)


@pytest.mark.parametrize(
    ("mode", "pads", "value", "axes", "opset"),
    [
        ("constant", [1, 0, 2, 0, 3, 1], None, None, 11),
        ("constant", [1, 2, 0, 1, 1, 2], 2.5, None, 13),
        ("reflect", [1, 2, 2, 1, 0, 3], None, None, 11),
        ("edge", [2, 0, 1, 0, 3, 2], None, None, 13),
        ("wrap", [1, 2, 0, 2, 1, 3], None, None, 19),
        ("constant", [2, 1], -1.0, [-1], 18),
        ("reflect", [1, 2, 2, 1], None, [2, 0], 18),
        ("edge", [0, 3, 1, 0], None, [1, -1], 18),
        ("constant", [-1, 1, 0, 2, -2, -1], 0.5, None, 13),
        ("reflect", [-1, 0, 2, 0, 1, -2], None, None, 13),
        ("edge", [0, -1, 2, 1, 2, -1], None, None, 13),
        ("wrap", [0, -2, 1, 0, 2, 2], None, None, 19),
    ],
)
def test_pad_matches_onnxruntime(
    mode: str, pads: list[int], value: float | None, axes: list[int] | None, opset: int
) -> None:
    data = _rand(np.random.default_rng(3), 3, 4, 5)
    pads_t = np.array(pads, dtype=np.int64)
    value_t = None if value is None else np.array(value, dtype=np.float32)
    axes_t = None if axes is None else np.array(axes, dtype=np.int64)
    (expected,) = _onnxruntime(
        "Pad", [("data", data), ("pads", pads_t), ("constant_value", value_t), ("axes", axes_t)],
        ["y"], {"mode": mode}, opset,
    )
    _assert_close(tensor_ops.pad(data, pads_t, value_t, axes_t, mode=mode), expected)


def test_pad_reflect_rejects_pads_reaching_past_the_axis() -> None:
    with pytest.raises(ValueError, match="smaller than each axis"):
        tensor_ops.pad(np.zeros((2, 5), np.float32), [0, -2, 0, 3], mode="reflect")


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -3])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_matches_onnxruntime(op: str, axis: int | None, opset: int) -> None:
    x = _rand(np.random.default_rng(4), 2, 3, 4) * 5
    attrs = {"axis": axis}
    (expected,) = _onnxruntime(op, [("x", x)], ["y"], attrs, opset)
    kernel = tensor_ops.softmax if op == "Softmax" else tensor_ops.log_softmax
    _assert_close(kernel(x, axis=axis, opset=opset), expected)


def test_softmax_opsets_differ() -> None:
    x = _rand(np.random.default_rng(4), 2, 3, 4)
    assert not np.allclose(tensor_ops.softmax(x, axis=1, opset=11), tensor_ops.softmax(x, axis=1, opset=13))


@pytest.mark.parametrize(
    ("axes", "keepdims", "noop", "opset"),
    [
        (None, 1, None, 13),
        (None, 0, None, 13),
        ([1], 1, None, 13),
        ([-1, 0], 0, None, 13),
        (None, 0, 0, 18),
        ([2, 0], 1, 0, 18),
        ([-2], 0, 0, 18),
        (None, 1, 1, 18),
        ([], 0, 1, 18),
        ([], 1, 0, 18),
    ],
)
def test_reduce_mean_matches_onnxruntime(axes: list[int] | None, keepdims: int, noop: int | None, opset: int) -> None:
    data = _rand(np.random.default_rng(5), 3, 4, 5)
    attrs = {"keepdims": keepdims}
    if opset < 18:
        attrs["axes"] = axes
        inputs = [("data", data)]
    else:
        attrs["noop_with_empty_axes"] = noop
        inputs = [("data", data), ("axes", None if axes is None else np.array(axes, dtype=np.int64))]
    (expected,) = _onnxruntime("ReduceMean", inputs, ["y"], attrs, opset)
    actual = tensor_ops.reduce_mean(data, axes, keepdims=keepdims, noop_with_empty_axes=noop or 0)
    _assert_close(actual, expected)


@pytest.mark.parametrize("select_last_index", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_argmax_matches_onnxruntime(axis: int, keepdims: int, select_last_index: int) -> None:
    data = np.random.default_rng(6).integers(0, 3, (3, 4, 5)).astype(np.float32)
    attrs = {"axis": axis, "keepdims": keepdims, "select_last_index": select_last_index}
    (expected,) = _onnxruntime("ArgMax", [("data", data)], ["y"], attrs, 13)
    actual = tensor_ops.argmax(data, **attrs)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)
