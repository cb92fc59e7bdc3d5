"""Float (software) bits per character of the checked-in character LM.

Runs ``charlm.onnx`` with onnxruntime on ``eval_set.npz`` (16 columns of 128
held-out characters, each from a zero initial state) and prints the mean
next-character cross-entropy in bits per character and the top-1 accuracy.
This is the reference that a compiled (crossbar) run of the same model is to
be compared with, so it depends on numpy and onnxruntime only.

Run from the repository root:  .venv/bin/python examples/charlm/float_eval.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def load_eval_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Input ids and next-character targets, both int64 [T, B].

    The file keys them ``ids`` (the model's input name) and ``y``, so that it is also the ``--inputs`` of
    ``cimc sweep --labels y`` and ``cimc verify --labels y``."""
    data = np.load(path)
    return data["ids"], data["y"]


def onnx_logits(model: Path, x: np.ndarray) -> np.ndarray:
    """Logits [T, B, V] of the ONNX model on ids [T, B]."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def bits_per_char(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean -log2 softmax(logits)[target], computed stably in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, y[..., None], -1).mean() / np.log(2.0))


def main() -> None:
    """Print bits per character and next-character accuracy, with a decoded sample."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=HERE / "charlm.onnx")
    parser.add_argument("--eval-set", type=Path, default=HERE / "eval_set.npz")
    args = parser.parse_args()
    vocab = [json.loads(line) for line in (HERE / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    x, y = load_eval_set(args.eval_set)
    logits = onnx_logits(args.model, x)
    print(f"{bits_per_char(logits, y):.4f} bits/char, next-char accuracy {np.mean(logits.argmax(-1) == y):.4f} "
          f"on {y.size} characters ({args.model.name}, onnxruntime float32)")
    print("column 0 next chars: " + repr("".join(vocab[i] for i in y[:60, 0])))
    print("column 0 predicted:  " + repr("".join(vocab[i] for i in logits[:60, 0].argmax(-1))))


if __name__ == "__main__":
    main()
