"""Label metrics (cimc/labels.py) against closed forms and scipy's log-softmax."""

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper
from scipy.special import log_expit, log_softmax

from cimc.diagnostics import CimcError
from cimc.labels import LOG_FLOOR, MULTI_LABEL, label_metrics, output_producers, parse_label_spec, scored_output, split_labels
from cimc.verification import compare_output


def test_uniform_logits_cost_log2_classes_bits():
    labels = np.array([0, 3, 5, 7])
    m = label_metrics({"logits": np.zeros((4, 8), np.float32)}, labels, "t")
    assert m.bits == pytest.approx(3.0, abs=1e-12)  # log2(8): every class has probability 1/8
    assert m.accuracy == 0.25  # ties go to class 0, which only the first label is
    assert (m.output, m.count) == ("logits", 4)


def test_cross_entropy_matches_scipy_on_sequence_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 30, (5, 3, 11)).astype(np.float32)  # large enough to overflow a naive exp
    labels = rng.integers(0, 11, (5, 3))
    m = label_metrics({"h": np.zeros((5, 3, 4)), "y": logits}, labels, "t", output="y")
    ref = -np.take_along_axis(log_softmax(logits.astype(np.float64), axis=-1), labels[..., None], -1).mean() / np.log(2)
    assert m.output == "y"
    assert m.bits == pytest.approx(ref, rel=1e-12)
    assert m.accuracy == pytest.approx(float((logits.argmax(-1) == labels).mean()))


def test_split_labels_removes_the_key():
    feeds, labels = split_labels({"x": np.zeros(3), "y": np.arange(3)}, "y", "f.npz")
    assert list(feeds) == ["x"] and labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("arrays, key, message", [
    ({"x": np.zeros(2)}, "y", "no array 'y'"),
    ({"x": np.zeros(2), "y": np.array([0.0, 0.5])}, "y", "must be integer class indices, or 0/1 targets"),
])
def test_split_labels_refuses(arrays, key, message):
    with pytest.raises(CimcError, match=message):
        split_labels(arrays, key, "f.npz")


@pytest.mark.parametrize("outputs, labels, message", [
    ({"a": np.zeros((4, 3))}, np.zeros(5, np.int64), "no output is"),
    ({"a": np.zeros((4, 3)), "b": np.zeros((4, 2))}, np.zeros(4, np.int64), "are all"),
    ({"a": np.zeros((4, 3))}, np.array([0, 1, 2, 3]), "3 classes"),
])
def test_scored_output_refuses(outputs, labels, message):
    with pytest.raises(CimcError, match=message):
        scored_output(outputs, labels, "f.npz")


def test_scored_output_named_and_unknown():
    outputs = {"a": np.zeros((4, 3)), "b": np.zeros((4, 2))}
    assert scored_output(outputs, np.zeros(4, np.int64), "f", "b") == ("b", "classes")
    with pytest.raises(CimcError, match="no output 'c'"):
        scored_output(outputs, np.zeros(4, np.int64), "f", "c")


def test_parse_label_spec():
    assert parse_label_spec("y") == ("y", None)
    assert parse_label_spec("y:logits") == ("y", "logits")
    for bad in ("", ":a", "y:"):
        with pytest.raises(ValueError):
            parse_label_spec(bad)


def test_softmax_output_is_scored_as_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (6, 5))
    probabilities = np.exp(log_softmax(logits, axis=1))
    labels = rng.integers(0, 5, 6)
    as_logits = label_metrics({"y": logits}, labels, "t")
    as_probabilities = label_metrics({"y": probabilities}, labels, "t", producers={"y": "Softmax"})
    assert as_probabilities.bits == pytest.approx(as_logits.bits, rel=1e-12)  # the same distribution either way
    assert as_probabilities.accuracy == as_logits.accuracy
    log_probabilities = label_metrics({"y": log_softmax(logits, axis=1)}, labels, "t", producers={"y": "LogSoftmax"})
    assert log_probabilities.bits == pytest.approx(as_logits.bits, rel=1e-12)


def test_multi_label_sigmoid_probabilities_closed_forms():
    targets = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    half = label_metrics({"y": np.full((2, 4), 0.5, np.float32)}, targets, "t", producers={"y": "Sigmoid"})
    assert half.kind == MULTI_LABEL and half.count == 8
    assert half.bits == pytest.approx(1.0, abs=1e-12)  # -log2(0.5) for every label
    assert half.accuracy == 0.5  # 0.5 decides "no": right on the four zeros
    sure = label_metrics({"y": np.ones((2, 4), np.float32)}, targets, "t", producers={"y": "Sigmoid"})
    assert sure.bits == pytest.approx(4 * -LOG_FLOOR / 8 / np.log(2), rel=1e-12)  # four confident misses, floored
    assert sure.accuracy == 0.5


def test_multi_label_logits_match_scipy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 40, (7, 3))  # large enough that a naive log(sigmoid) would give -inf
    targets = rng.integers(0, 2, (7, 3))
    m = label_metrics({"y": logits, "h": np.zeros((7, 3, 2))}, targets, "t", output="y")
    ref = -np.where(targets == 1, log_expit(logits), log_expit(-logits)).mean() / np.log(2)
    assert m.kind == MULTI_LABEL
    assert m.bits == pytest.approx(ref, rel=1e-12)
    assert m.accuracy == pytest.approx(float(((logits > 0) == (targets == 1)).mean()))


def test_binary_labels_that_fit_two_outputs_must_name_one():
    outputs = {"classes": np.zeros((4, 2)), "flags": np.zeros(4)}
    with pytest.raises(CimcError, match="are all"):
        scored_output(outputs, np.array([0, 1, 1, 0]), "t")
    assert scored_output(outputs, np.array([0, 1, 1, 0]), "t", "flags") == ("flags", MULTI_LABEL)


def test_output_producers_see_through_reshapes():
    nodes = [helper.make_node("Sigmoid", ["x"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["y"]),
             helper.make_node("Softmax", ["x"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z", "x")],
        [onnx.numpy_helper.from_array(np.array([3, 2], np.int64), "shape")])
    assert output_producers(helper.make_model(graph)) == {"y": "Sigmoid", "z": "Softmax", "x": ""}


def test_sigmoid_outputs_get_a_decision_agreement_not_an_argmax():
    ref = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1]])
    got = np.array([[0.8, 0.6, 0.7], [0.3, 0.9, 0.2]])  # one element of six crosses 0.5
    bound = np.full(ref.shape, np.inf)
    sigmoid = compare_output("y", got, ref, bound, "noisy", "Sigmoid")
    assert sigmoid.argmax_agreement is None and sigmoid.decision_agreement == pytest.approx(5 / 6)
    logits = compare_output("y", got, ref, bound, "noisy")
    assert logits.decision_agreement is None and logits.argmax_agreement == 1.0  # blind to the flipped decision
