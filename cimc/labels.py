"""Scoring a model's outputs against ground-truth labels carried in an inputs file.

Agreement with onnxruntime says whether the chip computes what the float model
computes; a user deciding on hardware also asks what it costs in the task's own
metric. Both ``cimc verify --labels KEY`` and ``cimc sweep --labels KEY`` read
the labels from the same ``.npz`` as the inputs (the key is not a model input),
score the output whose shape is the labels' shape plus a class axis (or the
output named, ``--labels KEY:OUTPUT``, when several have that shape), and report:

- ``accuracy``: the fraction of positions whose argmax over the class axis is the
  label (top-1 accuracy for a classifier, next-character accuracy for a
  language model);
- ``bits``: the mean cross-entropy of the softmax over the class axis, in bits
  per label (bits per character for a character language model; onnx models
  emit logits, so the softmax is taken here, in float64 with the max
  subtracted, which is exact to rounding for any finite logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cimc.diagnostics import CimcError


@dataclass(frozen=True)
class LabelMetrics:
    """Task metrics of one output against its labels."""

    output: str
    count: int
    accuracy: float
    bits: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {"output": self.output, "count": self.count, "accuracy": self.accuracy, "bits": self.bits}

    def summary(self) -> str:
        return (f"labels: output '{self.output}' against {self.count} labels: accuracy {100 * self.accuracy:.2f} %, "
                f"cross-entropy {self.bits:.4f} bits per label")


def split_labels(arrays: Mapping[str, np.ndarray], key: str, origin: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model feeds and the labels of an inputs file: every array but ``key``, and ``key`` itself.

    Labels must be integer class indices, since they index the class axis."""
    if key not in arrays:
        raise CimcError(f"{origin}: no array '{key}' to take labels from; it holds {sorted(arrays)}")
    labels = np.asarray(arrays[key])
    if labels.dtype.kind not in "iu":
        raise CimcError(f"{origin}: labels '{key}' are {labels.dtype}; they must be integer class indices")
    return {name: value for name, value in arrays.items() if name != key}, labels


def parse_label_spec(text: str) -> tuple[str, str | None]:
    """``KEY`` or ``KEY:OUTPUT`` (the ``--labels`` argument) as (key, output or None)."""
    key, _, output = text.partition(":")
    if not key or (_ and not output):
        raise ValueError(f"'{text}' is not KEY or KEY:OUTPUT")
    return key, output or None


def scored_output(outputs: Mapping[str, np.ndarray], labels: np.ndarray, origin: str,
                  output: str | None = None) -> str:
    """``output``, or the one output shaped like ``labels`` plus a trailing class axis; it must hold every label."""
    if output is not None and output not in outputs:
        raise CimcError(f"{origin}: no output '{output}' to score against the labels; the outputs are {sorted(outputs)}")
    matches = [name for name, value in outputs.items() if (output is None or name == output)
               and value.ndim == labels.ndim + 1 and value.shape[:-1] == labels.shape]
    if len(matches) != 1:
        shapes = {name: list(value.shape) for name, value in outputs.items()}
        which = ("no output is" if not matches else f"outputs {matches} are all (name one: --labels KEY:OUTPUT)")
        raise CimcError(f"{origin}: labels of shape {list(labels.shape)} need one output shaped "
                        f"{list(labels.shape)} + [classes], but {which}; the outputs are {shapes}")
    classes = outputs[matches[0]].shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise CimcError(f"{origin}: labels range over {int(labels.min())}..{int(labels.max())}, but output "
                        f"'{matches[0]}' has {classes} classes")
    return matches[0]


def label_metrics(outputs: Mapping[str, np.ndarray], labels: np.ndarray, origin: str,
                  output: str | None = None) -> LabelMetrics:
    """Accuracy and cross-entropy (bits per label) of the output that ``labels`` score (see ``scored_output``)."""
    name = scored_output(outputs, labels, origin, output)
    logits = np.asarray(outputs[name], dtype=np.float64).reshape(-1, outputs[name].shape[-1])
    flat = labels.reshape(-1).astype(np.intp)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    chosen = log_softmax[np.arange(flat.size), flat]
    return LabelMetrics(output=name, count=int(flat.size), accuracy=float((logits.argmax(axis=1) == flat).mean()),
                        bits=float(-chosen.mean() / np.log(2.0)))
