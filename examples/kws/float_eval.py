"""Float (software) accuracy of the checked-in keyword-spotting model.

Runs ``kws_lstm.onnx`` with onnxruntime on ``eval_set.npz`` (600 clips of
unseen test voices, 50 per class) and prints the top-1 accuracy, the accuracy
of each class and the confusion matrix.  This is the reference that a compiled
(crossbar) run of the same model is to be compared with, so it depends on
numpy and onnxruntime only.

Run from the repository root:  .venv/bin/python examples/kws/float_eval.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def load_eval_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features [T, N, 40] float32 (raw log-mel, time-major) and labels [N] int64.

    The file keys them ``features`` (the model's input name) and ``y``, so that it is also the ``--inputs`` of
    ``cimc sweep --labels y`` and ``cimc verify --labels y``."""
    data = np.load(path)
    return data["features"], data["y"]


def onnx_logits(model: Path, x: np.ndarray) -> np.ndarray:
    """Logits [N, 12] of the ONNX model on time-major features [T, N, 40]."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def confusion(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def main() -> None:
    """Print overall and per-class accuracy with the confusion matrix."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=HERE / "kws_lstm.onnx")
    parser.add_argument("--eval-set", type=Path, default=HERE / "eval_set.npz")
    args = parser.parse_args()
    classes = (HERE / "classes.txt").read_text().split()
    x, y = load_eval_set(args.eval_set)
    pred = onnx_logits(args.model, x).argmax(1)
    cm = confusion(pred, y, len(classes))
    print(f"accuracy {np.mean(pred == y):.4f} on {len(y)} clips ({args.model.name}, onnxruntime float32)")
    width = max(len(c) for c in classes)
    print(" " * (width + 8) + " ".join(f"{c[:4]:>4}" for c in classes))
    for i, c in enumerate(classes):
        print(f"{c:>{width}} {cm[i, i] / cm[i].sum():6.2%} " + " ".join(f"{n:4d}" for n in cm[i]))


if __name__ == "__main__":
    main()
