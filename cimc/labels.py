"""Scoring a model's outputs against ground-truth labels carried in an inputs file.

Agreement with onnxruntime says whether the chip computes what the float model
computes; a user deciding on hardware also asks what it costs in the task's own
metric. Both ``cimc verify --labels KEY`` and ``cimc sweep --labels KEY`` read
the labels from the same ``.npz`` as the inputs (the key is not a model input).
Two kinds of labels are scored:

- **classes**: integer class indices; the scored output is shaped like the
  labels plus a class axis (a keyword classifier, a language model's next
  character). ``accuracy`` is the fraction of positions whose argmax over the
  class axis is the label; ``bits`` the mean cross-entropy in bits per label
  (bits per character for a character language model).
- **multi-label**: 0/1 targets (any dtype) shaped like the scored output, one
  independent yes/no per element (voice activity per frame, tags per clip).
  ``accuracy`` is the fraction of elements decided right at probability 0.5;
  ``bits`` the mean binary cross-entropy in bits per label.

Which output is scored: the one named (``--labels KEY:OUTPUT``), else the one
output the labels fit. What the output's values are comes from the ONNX node
that computes them (``output_producers``): a Softmax gives probabilities, a
LogSoftmax log-probabilities, a Sigmoid per-label probabilities; anything else
is taken as logits, as exporters of models trained with a cross-entropy or
BCE-with-logits loss emit them. From logits the log-probabilities are computed
in float64 in a form exact to rounding for any finite logits (log-softmax with
the max subtracted; log-sigmoid as -log(1 + e^-z) through ``logaddexp``). From
probabilities a log-probability is floored at -100 nats, as PyTorch's BCELoss
floors it, so that one confident miss (a float32 probability rounded to exactly
0 or 1) gives a large finite cost, not an infinite mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cimc.diagnostics import CimcError

if TYPE_CHECKING:
    import onnx

LOG_FLOOR = -100.0  # nats: the least log-probability taken from a probability output (see the module docstring)
CLASSES, MULTI_LABEL = "classes", "multi-label"
_VALUE_PRESERVING = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose"})


@dataclass(frozen=True)
class LabelMetrics:
    """Task metrics of one output against its labels."""

    output: str
    count: int
    accuracy: float
    bits: float
    kind: str = CLASSES

    def to_dict(self) -> dict[str, float | int | str]:
        return {"output": self.output, "count": self.count, "accuracy": self.accuracy, "bits": self.bits,
                "kind": self.kind}

    def summary(self) -> str:
        return describe(self.to_dict())


def describe(metrics: Mapping[str, object]) -> str:
    """One line for a ``LabelMetrics.to_dict()``, as verify prints it."""
    if metrics.get("kind", CLASSES) == MULTI_LABEL:
        return (f"output '{metrics['output']}' against {metrics['count']} 0/1 labels: accuracy "
                f"{100 * float(metrics['accuracy']):.2f} % at probability 0.5, binary cross-entropy "
                f"{float(metrics['bits']):.4f} bits per label")
    return (f"output '{metrics['output']}' against {metrics['count']} labels: accuracy "
            f"{100 * float(metrics['accuracy']):.2f} %, cross-entropy {float(metrics['bits']):.4f} bits per label")


def output_producers(model: onnx.ModelProto) -> dict[str, str]:
    """The op type of the node that computes each graph output's values ('' for a graph input or constant).

    Ops that only move values (Reshape, Squeeze, Transpose, ...) are seen through, so an output that is a
    reshaped Softmax counts as the Softmax's."""
    made_by = {out: node for node in model.graph.node for out in node.output}
    producers = {}
    for output in model.graph.output:
        node = made_by.get(output.name)
        while node is not None and node.op_type in _VALUE_PRESERVING and node.input:
            node = made_by.get(node.input[0])
        producers[output.name] = node.op_type if node is not None else ""
    return producers


def _is_binary(labels: np.ndarray) -> bool:
    return bool(labels.size) and bool(np.isin(labels, (0, 1)).all())


def split_labels(arrays: Mapping[str, np.ndarray], key: str, origin: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model feeds and the labels of an inputs file: every array but ``key``, and ``key`` itself.

    Labels must be integer class indices or 0/1 targets (see the module docstring)."""
    if key not in arrays:
        raise CimcError(f"{origin}: no array '{key}' to take labels from; it holds {sorted(arrays)}")
    labels = np.asarray(arrays[key])
    if labels.dtype.kind not in "iub" and not _is_binary(labels):
        raise CimcError(f"{origin}: labels '{key}' are {labels.dtype} with values other than 0 and 1; they must be "
                        "integer class indices, or 0/1 targets for a multi-label output")
    return {name: value for name, value in arrays.items() if name != key}, labels


def parse_label_spec(text: str) -> tuple[str, str | None]:
    """``KEY`` or ``KEY:OUTPUT`` (the ``--labels`` argument) as (key, output or None)."""
    key, _, output = text.partition(":")
    if not key or (_ and not output):
        raise ValueError(f"'{text}' is not KEY or KEY:OUTPUT")
    return key, output or None


def _fit(value: np.ndarray, labels: np.ndarray) -> str | None:
    """How ``labels`` score an output of ``value``'s shape: CLASSES, MULTI_LABEL or None."""
    if labels.dtype.kind in "iu" and value.ndim == labels.ndim + 1 and value.shape[:-1] == labels.shape:
        return CLASSES
    if value.shape == labels.shape and _is_binary(labels):
        return MULTI_LABEL
    return None


def scored_output(outputs: Mapping[str, np.ndarray], labels: np.ndarray, origin: str,
                  output: str | None = None) -> tuple[str, str]:
    """(name, kind) of ``output``, or of the one output the labels fit (see the module docstring)."""
    if output is not None and output not in outputs:
        raise CimcError(f"{origin}: no output '{output}' to score against the labels; the outputs are {sorted(outputs)}")
    matches = [(name, kind) for name, value in outputs.items() if output is None or name == output
               for kind in [_fit(value, labels)] if kind is not None]
    if len(matches) != 1:
        shapes = {name: list(value.shape) for name, value in outputs.items()}
        which = ("no output is" if not matches else
                 f"outputs {[name for name, _ in matches]} are all (name one: --labels KEY:OUTPUT)")
        binary = " (or shaped like them, for 0/1 labels)" if _is_binary(labels) else ""
        raise CimcError(f"{origin}: labels of shape {list(labels.shape)} need one output shaped "
                        f"{list(labels.shape)} + [classes]{binary}, but {which}; the outputs are {shapes}")
    name, kind = matches[0]
    classes = outputs[name].shape[-1]
    if kind == CLASSES and labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise CimcError(f"{origin}: labels range over {int(labels.min())}..{int(labels.max())}, but output "
                        f"'{name}' has {classes} classes")
    return name, kind


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(p), LOG_FLOOR)


def label_metrics(outputs: Mapping[str, np.ndarray], labels: np.ndarray, origin: str,
                  output: str | None = None, producers: Mapping[str, str] | None = None) -> LabelMetrics:
    """Accuracy and cross-entropy (bits per label) of the output that ``labels`` score (see ``scored_output``);
    ``producers`` (``output_producers``) say whether its values are logits or probabilities."""
    name, kind = scored_output(outputs, labels, origin, output)
    producer = (producers or {}).get(name, "")
    values = np.asarray(outputs[name], dtype=np.float64)
    if kind == MULTI_LABEL:
        target = labels.astype(bool)
        if producer == "Sigmoid":
            p = np.clip(values, 0.0, 1.0)
            log_p, log_q, decided = _log(p), _log(1.0 - p), p > 0.5
        else:  # logits
            log_p, log_q, decided = -np.logaddexp(0.0, -values), -np.logaddexp(0.0, values), values > 0
        nats = -np.where(target, log_p, log_q)
        return LabelMetrics(output=name, count=int(target.size), accuracy=float((decided == target).mean()),
                            bits=float(nats.mean() / np.log(2.0)), kind=MULTI_LABEL)
    scores = values.reshape(-1, values.shape[-1])
    flat = labels.reshape(-1).astype(np.intp)
    if producer == "Softmax":
        log_p = _log(scores)
    elif producer == "LogSoftmax":
        log_p = scores
    else:  # logits
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    chosen = log_p[np.arange(flat.size), flat]
    return LabelMetrics(output=name, count=int(flat.size), accuracy=float((scores.argmax(axis=1) == flat).mean()),
                        bits=float(-chosen.mean() / np.log(2.0)))
