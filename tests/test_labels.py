"""Label metrics (cimc/labels.py) against closed forms and scipy's log-softmax."""

import numpy as np
import pytest
from scipy.special import log_softmax

from cimc.diagnostics import CimcError
from cimc.labels import label_metrics, parse_label_spec, scored_output, split_labels


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
    ({"x": np.zeros(2), "y": np.zeros(2)}, "y", "must be integer"),
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
    assert scored_output(outputs, np.zeros(4, np.int64), "f", "b") == "b"
    with pytest.raises(CimcError, match="no output 'c'"):
        scored_output(outputs, np.zeros(4, np.int64), "f", "c")


def test_parse_label_spec():
    assert parse_label_spec("y") == ("y", None)
    assert parse_label_spec("y:logits") == ("y", "logits")
    for bad in ("", ":a", "y:"):
        with pytest.raises(ValueError):
            parse_label_spec(bad)
