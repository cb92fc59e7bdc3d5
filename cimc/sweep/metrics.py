"""What one chip run is scored by: verify's per-output metrics against onnxruntime, and the task metric.

The per-output numbers are ``cimc verify``'s own (``cimc.verification.compare_output``):
relative RMS error, max |error| and, for classifier-like outputs, argmax agreement (for an
output a Sigmoid computes, the decision agreement at 0.5 instead). A
sweep reports distributions, not a pass/fail, so no error bound is derived (it costs a
bounded run per chip); the bound handed to ``compare_output`` is infinite, which leaves
every reported error unchanged and only makes its unused pass flag true. With labels
(``--labels KEY[:OUTPUT]``), ``cimc.labels.label_metrics`` adds accuracy and the
cross-entropy in bits per label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cimc.labels import label_metrics
from cimc.verification import compare_output


@dataclass(frozen=True)
class Scoring:
    """How a chip run is scored besides its agreement with onnxruntime: which ONNX op computes each output
    (``cimc.labels.output_producers``: probabilities or logits, argmax or decision agreement), and the labels
    with the output they score, if any."""

    producers: Mapping[str, str] = field(default_factory=dict)
    labels: np.ndarray | None = None
    label_output: str | None = None


def chip_metrics(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], fidelity: str,
                 scoring: Scoring = Scoring(), origin: str = "labels") -> dict[str, object]:
    """One row's metrics: ``outputs`` {name: {relative_error, max_abs_error, argmax_agreement, decision_agreement}},
    and with labels ``accuracy`` and ``bits_per_label`` of the scored output."""
    row: dict[str, object] = {}
    per_output = {}
    for name in sorted(reference):
        report = compare_output(name, outputs[name], reference[name], np.full(reference[name].shape, np.inf), fidelity,
                                scoring.producers.get(name, ""))
        per_output[name] = {"relative_error": report.relative, "max_abs_error": report.max_abs,
                            "argmax_agreement": report.argmax_agreement,
                            "decision_agreement": report.decision_agreement}
    row["outputs"] = per_output
    if scoring.labels is not None:
        scored = label_metrics(outputs, scoring.labels, origin, scoring.label_output, scoring.producers)
        row["accuracy"] = scored.accuracy
        row["bits_per_label"] = scored.bits
    return row
