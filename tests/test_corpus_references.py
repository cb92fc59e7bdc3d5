"""Sanity checks for the model corpus (tests/onnx_corpus.py) and the PyTorch exports.

Why: every importer/compiler test compares against ``reference_outputs``; if a
corpus model were invalid or its reference wrong, those tests would chase
ghosts.  So this file checks that each model is valid ONNX, that the
references run, that they agree with an independent NumPy implementation of
the LSTM/GRU/RNN equations (which also validates the layout=1 rewrite and
onnxruntime itself), that the corpus covers what it promises, and that the
stored PyTorch exports still reproduce torch's outputs.
"""

from __future__ import annotations

import collections
import itertools
import pathlib
import re
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx_corpus

TORCH_DIR = pathlib.Path(__file__).resolve().parent / "data" / "torch"
TORCH_EXPORTS = sorted(TORCH_DIR.glob("*.onnx"))

RECURRENT = onnx_corpus.recurrent_cases()
STACKS = onnx_corpus.stack_cases()
SURROUNDING = onnx_corpus.surrounding_cases()
ALL = RECURRENT + STACKS + SURROUNDING


def _ids(cases: list[onnx_corpus.CorpusCase]) -> list[str]:
    """Case names as pytest ids, so a failure names the model."""
    return [case.name for case in cases]


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, np.ndarray]]:
    """Reference outputs of every case, computed once for the whole module."""
    return {case.name: onnx_corpus.reference_outputs(case.model, case.feeds) for case in ALL}


# ---------------------------------------------------------------------------
# Independent NumPy implementation of the ONNX recurrent operators
# ---------------------------------------------------------------------------

ALPHA_USERS = {"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"}
BETA_USERS = {"Affine", "ScaledTanh", "HardSigmoid"}
# The defaults of the corresponding ONNX operators, used when alpha/beta run out.
DEFAULT_ALPHA = {"LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "HardSigmoid": 0.2, "Elu": 1.0}
DEFAULT_BETA = {"HardSigmoid": 0.5}


def _activation(name: str, alpha: float | None, beta: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """The activation function table of the ONNX RNN operator docs."""
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "Relu": lambda x: np.maximum(x, 0),
        "Tanh": np.tanh,
        "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
        "Affine": lambda x: alpha * x + beta,
        "LeakyRelu": lambda x: np.where(x >= 0, x, alpha * x),
        "ThresholdedRelu": lambda x: np.where(x > alpha, x, 0),
        "ScaledTanh": lambda x: alpha * np.tanh(beta * x),
        "HardSigmoid": lambda x: np.clip(alpha * x + beta, 0, 1),
        "Elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(x) - 1)),
        "Softsign": lambda x: x / (1 + np.abs(x)),
        "Softplus": lambda x: np.logaddexp(0, x),
    }
    return table[name]


def _activations(node: onnx.NodeProto, num_dir: int) -> list[list[Callable[[np.ndarray], np.ndarray]]]:
    """Per-direction activation callables, alpha/beta consumed only by functions that take them."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    names = [n.decode() if isinstance(n, bytes) else n for n in attrs.get("activations", [])]
    if not names:
        names = list(onnx_corpus.DEFAULT_ACTIVATIONS[node.op_type]) * num_dir
    alphas = iter(attrs.get("activation_alpha", []))
    betas = iter(attrs.get("activation_beta", []))
    funcs = []
    for name in names:
        alpha = next(alphas, DEFAULT_ALPHA.get(name)) if name in ALPHA_USERS else None
        beta = next(betas, DEFAULT_BETA.get(name)) if name in BETA_USERS else None
        funcs.append(_activation(name, alpha, beta))
    per_dir = len(funcs) // num_dir
    return [funcs[d * per_dir : (d + 1) * per_dir] for d in range(num_dir)]


def _numpy_recurrent(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    """Evaluate one LSTM/GRU/RNN node from its spec equations, in float64."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    formal = onnx_corpus.INPUT_NAMES[op]
    given = {formal[i]: values[n].astype(np.float64) for i, n in enumerate(node.input) if n}
    direction = attrs.get("direction", b"forward").decode()
    layout = attrs.get("layout", 0)
    clip = attrs.get("clip")
    hidden = attrs["hidden_size"]
    num_dir = 2 if direction == "bidirectional" else 1
    x = given["X"] if layout == 0 else given["X"].transpose(1, 0, 2)
    steps, batch, _ = x.shape
    gates = onnx_corpus.GATE_COUNT[op]

    def state(name: str) -> np.ndarray:
        if name not in given:
            return np.zeros((num_dir, batch, hidden))
        return given[name] if layout == 0 else given[name].transpose(1, 0, 2)

    h0, c0 = state("initial_h"), state("initial_c")
    bias = given.get("B", np.zeros((num_dir, 2 * gates * hidden)))
    peep = given.get("P", np.zeros((num_dir, 3 * hidden)))
    lengths = given.get("sequence_lens", np.full(batch, steps)).astype(int)
    acts = _activations(node, num_dir)

    def clipped(v: np.ndarray) -> np.ndarray:
        return v if clip is None else np.clip(v, -clip, clip)

    y = np.zeros((steps, num_dir, batch, hidden))
    y_h = np.zeros((num_dir, batch, hidden))
    y_c = np.zeros((num_dir, batch, hidden))
    for d in range(num_dir):
        w, r = given["W"][d], given["R"][d]
        wb, rb = bias[d][: gates * hidden], bias[d][gates * hidden :]
        reverse = direction == "reverse" or d == 1
        for b in range(batch):
            h, c = h0[d, b].copy(), c0[d, b].copy()
            order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
            for t in order:
                xw = x[t, b] @ w.T + wb
                if op == "LSTM":
                    f, g, hf = acts[d]
                    pre = xw + h @ r.T + rb
                    pi, po, pf = np.split(peep[d], 3)
                    zi, zo, zf, zc = np.split(pre, 4)
                    i = f(clipped(zi + pi * c))
                    forget = 1 - i if attrs.get("input_forget", 0) else f(clipped(zf + pf * c))
                    c = forget * c + i * g(clipped(zc))
                    o = f(clipped(zo + po * c))
                    h = o * hf(c)
                elif op == "GRU":
                    f, g = acts[d]
                    xz, xr, xh = np.split(xw, 3)
                    rz, rr, rh = np.split(r, 3)
                    bz, br, bh = np.split(rb, 3)
                    z = f(clipped(xz + h @ rz.T + bz))
                    reset = f(clipped(xr + h @ rr.T + br))
                    if attrs.get("linear_before_reset", 0):
                        candidate = g(clipped(xh + reset * (h @ rh.T + bh)))
                    else:
                        candidate = g(clipped(xh + (reset * h) @ rh.T + bh))
                    h = (1 - z) * candidate + z * h
                else:
                    (f,) = acts[d]
                    h = f(clipped(xw + h @ r.T + rb))
                y[t, d, b] = h
            y_h[d, b], y_c[d, b] = h, c
    if layout == 1:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return [y, y_h, y_c][: len(node.output)]


def _numpy_case(case: onnx_corpus.CorpusCase, drop_clip: bool = False) -> dict[str, np.ndarray]:
    """Evaluate a single-node recurrent case, optionally as if it had no clip attribute."""
    (node,) = case.model.graph.node
    if drop_clip:
        node = onnx.NodeProto()
        node.CopyFrom(case.model.graph.node[0])
        kept = [a for a in node.attribute if a.name != "clip"]
        del node.attribute[:]
        node.attribute.extend(kept)
    values = dict(case.feeds) | {t.name: numpy_helper.to_array(t) for t in case.model.graph.initializer}
    results = _numpy_recurrent(node, values)
    return {name: value for name, value in zip(node.output, results, strict=True) if name}


# ---------------------------------------------------------------------------
# Corpus validity and references
# ---------------------------------------------------------------------------


def test_case_counts_and_unique_names() -> None:
    """Names are pytest ids and cache keys elsewhere, so they must be unique; the size is budgeted."""
    names = _ids(ALL)
    assert len(names) == len(set(names))
    assert 150 <= len(ALL) <= 250
    assert _ids(onnx_corpus.all_cases()) == names


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_model_is_valid(case: onnx_corpus.CorpusCase) -> None:
    """Every model is valid ONNX and its feeds cover exactly the non-initializer inputs."""
    onnx.checker.check_model(case.model, full_check=True)
    declared = {i.name for i in case.model.graph.input}
    initializers = {t.name for t in case.model.graph.initializer}
    assert declared - initializers == set(case.feeds)


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_reference_outputs_run(case: onnx_corpus.CorpusCase, references: dict[str, dict[str, np.ndarray]]) -> None:
    """References exist for every graph output, agree with the declared shapes and are finite."""
    outputs = references[case.name]
    assert list(outputs) == [o.name for o in case.model.graph.output]
    for declared in case.model.graph.output:
        value = outputs[declared.name]
        dims = declared.type.tensor_type.shape.dim
        assert value.ndim == len(dims)
        for size, dim in zip(value.shape, dims, strict=True):
            assert not dim.HasField("dim_value") or dim.dim_value == size
        if np.issubdtype(value.dtype, np.floating):
            assert np.all(np.isfinite(value))


@pytest.mark.parametrize("case", RECURRENT, ids=_ids(RECURRENT))
def test_recurrent_reference_matches_numpy(
    case: onnx_corpus.CorpusCase, references: dict[str, dict[str, np.ndarray]]
) -> None:
    """onnxruntime (and the layout=1 rewrite) agree with the spec equations on every recurrent case."""
    expected = _numpy_case(case)
    for name, value in references[case.name].items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_clip_changes_every_clipped_case() -> None:
    """The clip cases would test nothing if no pre-activation ever exceeded the threshold."""
    clipped = [c for c in RECURRENT if any(a.name == "clip" for a in c.model.graph.node[0].attribute)]
    assert clipped
    for case in clipped:
        with_clip, without = _numpy_case(case), _numpy_case(case, drop_clip=True)
        assert any(not np.allclose(with_clip[k], without[k]) for k in with_clip), case.name


def _reference_evaluator_is_faithful(model: onnx.ModelProto) -> bool:
    """ReferenceEvaluator (onnx 1.23) ignores these recurrent features, so only compare without them."""
    for node in model.graph.node:
        if node.op_type not in onnx_corpus.RECURRENT_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("clip") is not None or attrs.get("input_forget", 0) or (len(node.input) > 4 and node.input[4]):
            return False
        names = [n.decode() for n in attrs.get("activations", [])]
        defaults = list(onnx_corpus.DEFAULT_ACTIVATIONS[node.op_type])
        if names and names != defaults * (len(names) // len(defaults)):
            return False
    return True


FAITHFUL = [c for c in ALL if _reference_evaluator_is_faithful(c.model)]


@pytest.mark.parametrize("case", FAITHFUL, ids=_ids(FAITHFUL))
def test_reference_evaluator_agrees(case: onnx_corpus.CorpusCase, references: dict[str, dict[str, np.ndarray]]) -> None:
    """A second, independent runtime for the non-recurrent ops and the layout=1 rewrite."""
    evaluator = ReferenceEvaluator(case.model)
    names = [o.name for o in case.model.graph.output]
    for name, value in zip(names, evaluator.run(names, case.feeds), strict=True):
        np.testing.assert_allclose(references[case.name][name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_onnxruntime_still_refuses_batchwise() -> None:
    """If onnxruntime starts accepting layout=1, the rewrite in reference_outputs can go."""
    case = next(c for c in RECURRENT if "layout1" in c.name)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    with pytest.raises(Exception, match=re.escape(onnx_corpus.BATCHWISE_REFUSAL)):
        onnxruntime.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------
# Coverage promised by the corpus
# ---------------------------------------------------------------------------


def _recurrent_facts(case: onnx_corpus.CorpusCase) -> dict[str, object]:
    """What a recurrent case exercises, read back from the model itself rather than from its name."""
    node = next(n for n in case.model.graph.node if n.op_type in onnx_corpus.RECURRENT_OPS)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    inputs = dict(
        zip(onnx_corpus.INPUT_NAMES[node.op_type], node.input, strict=False)
    )  # trailing inputs may be left off
    seq = case.feeds.get(inputs.get("sequence_lens", ""))
    x = case.feeds[inputs["X"]]
    steps = x.shape[0] if attrs.get("layout", 0) == 0 else x.shape[1]
    return {
        "op": node.op_type,
        "direction": attrs.get("direction", b"forward").decode(),
        "layout": attrs.get("layout", 0),
        "clip": "clip" in attrs,
        "seq_lens": "absent" if seq is None else ("full" if np.all(seq == steps) else "variable"),
        "initial": bool(inputs.get("initial_h")),
        "peephole": bool(inputs.get("P")),
        "input_forget": attrs.get("input_forget", 0),
        "linear_before_reset": attrs.get("linear_before_reset", 0),
        "activations": {n.decode() for n in attrs.get("activations", [])},
        "has_alpha": "activation_alpha" in attrs,
        "opset": case.model.opset_import[0].version,
        "outputs": list(node.output),
        "inputs": list(node.input),
    }


FACTS = [_recurrent_facts(c) for c in RECURRENT]


@pytest.mark.parametrize("op", onnx_corpus.RECURRENT_OPS)
def test_recurrent_coverage(op: str) -> None:
    """The axes and combinations the corpus promises are all present for each op."""
    facts = [f for f in FACTS if f["op"] == op]
    combos = {(f["direction"], f["layout"], f["seq_lens"], f["clip"]) for f in facts}
    assert combos >= set(itertools.product(onnx_corpus.DIRECTIONS, (0, 1), onnx_corpus.SEQ_LENS_MODES, (False, True)))
    # Functions seen in cases that spell out their parameters (or need none).
    parametrised = [f for f in facts if f["has_alpha"] or not f["activations"] & onnx_corpus.ALPHA_BASE.keys()]
    assert set().union(*(f["activations"] for f in parametrised)) >= set(onnx_corpus.ALL_ACTIVATIONS)
    assert {f["opset"] for f in facts} >= {7, 14, 22}
    assert {f["initial"] for f in facts} == {False, True}
    if op == "LSTM":
        assert {f["peephole"] for f in facts} == {False, True}
        assert {f["input_forget"] for f in facts} == {0, 1}
    if op == "GRU":
        assert {f["linear_before_reset"] for f in facts} == {0, 1}
    for slot in range(len(onnx_corpus.OUTPUT_NAMES[op])):
        assert any(len(f["outputs"]) > slot and f["outputs"][slot] == "" for f in facts), f"output {slot} never empty"
        if slot:
            assert any(len(f["outputs"]) <= slot for f in facts), f"output {slot} never left off the end"
    # An empty name followed by a present input (e.g. B absent, sequence_lens present).
    assert any("" in f["inputs"] and f["inputs"][-1] != "" for f in facts)
    assert any(f["inputs"][-1] == "" for f in facts)


def test_surrounding_op_coverage() -> None:
    """Each operator the importer must handle around the cells appears in some model."""
    ops = collections.Counter(n.op_type for c in STACKS + SURROUNDING for n in c.model.graph.node)
    wanted = {
        "Slice", "Concat", "Unsqueeze", "Squeeze", "Transpose", "Reshape", "Gather", "Cast", "Shape", "Expand",
        "ConstantOfShape", "Gemm", "MatMul", "Conv", "Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "Relu",
        "Softmax", "LogSoftmax", "Pow", "Sqrt", "Pad", "ReduceMean", "ArgMax", "Identity", "Constant",
    }  # fmt: skip
    assert wanted <= set(ops), wanted - set(ops)
    conv_ranks = {
        len(onnx.helper.get_attribute_value(a))
        for c in SURROUNDING
        for n in c.model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "strides"
    }
    assert conv_ranks == {1, 2}


def test_most_inputs_are_symbolic() -> None:
    """Exporters mark batch/sequence dims symbolic, so most corpus models do too."""
    symbolic = [c for c in ALL if any(d.dim_param for i in c.model.graph.input for d in i.type.tensor_type.shape.dim)]
    assert len(symbolic) >= 0.7 * len(ALL)


# ---------------------------------------------------------------------------
# PyTorch exports
# ---------------------------------------------------------------------------


def test_torch_exports_present() -> None:
    """All PyTorch exports are committed, each as a single file without external data."""
    names = {p.name for p in TORCH_EXPORTS}
    for model in ("lstm2", "bigru", "lstm_classifier"):
        for exporter in ("torchscript", "torchscript-nofold", "dynamo"):
            assert f"{model}.{exporter}.onnx" in names
    assert not list(TORCH_DIR.glob("*.data"))


@pytest.mark.parametrize("path", TORCH_EXPORTS, ids=[p.name for p in TORCH_EXPORTS])
def test_torch_export_matches_torch(path: pathlib.Path) -> None:
    """onnxruntime on the stored file reproduces the outputs torch computed at export time."""
    model = onnx.load_model(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    stored = np.load(path.with_suffix(".npz"))
    feeds = {i.name: stored[i.name] for i in model.graph.input}
    got = onnx_corpus.reference_outputs(model, feeds)
    for name, value in got.items():
        np.testing.assert_allclose(value, stored[name], rtol=1e-4, atol=1e-5, err_msg=name)
