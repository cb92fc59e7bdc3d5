"""Train the character-level LSTM language model and export it to ONNX.

Model: Embedding(V, 32) -> LSTM(32, 128) -> Linear(128, V), time-major:
int64 ids [T, B] -> logits [T, B, V].  The embedding is exported as a Gather
(what the exporters emit for nn.Embedding), which a crossbar compiler can fold
into the LSTM input weights.  About 96k parameters, < 400 kB as float32 ONNX.

Training uses truncated BPTT on random 128-character windows of the training
split, each started from a zero state.  That is exactly how the model is
evaluated (the checked-in ``eval_set.npz`` columns and the validation windows
start from zero), so the reported bits per character are what the exported
graph achieves without carrying state between calls.  The step count is fixed
(not wall-clock based) so that a rerun gives the same model; the default fits
in well under 20 minutes of one CPU thread.

Run from the repository root (after prepare.py):
    .venv-train/bin/python examples/charlm/train.py
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
WINDOW = 128


class CharLstm(nn.Module):
    """Embedding -> single-layer LSTM -> Linear, time-major."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int64 [T, B] -> logits [T, B, V], from a zero initial state."""
        y, _ = self.lstm(self.embed(ids))
        return self.head(y)


def windows(ids: np.ndarray) -> torch.Tensor:
    """Non-overlapping (WINDOW + 1)-character windows as int64 [WINDOW + 1, N]; neighbours share one character."""
    n = (len(ids) - 1) // WINDOW
    starts = np.arange(n) * WINDOW
    return torch.from_numpy(ids[starts[None, :] + np.arange(WINDOW + 1)[:, None]].astype(np.int64))


@torch.no_grad()
def bits_per_char(model: nn.Module, data: torch.Tensor, batch: int = 256) -> float:
    """Mean next-character cross-entropy in bits over [WINDOW + 1, N] windows, zero start state."""
    model.eval()
    nats, count = 0.0, 0
    for i in range(0, data.shape[1], batch):
        w = data[:, i : i + batch]
        logits = model(w[:-1])
        nats += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[1:].reshape(-1), reduction="sum"))
        count += w[1:].numel()
    return nats / count / math.log(2)


def main() -> None:
    """Train for a fixed number of steps, keep the best validation checkpoint, export, verify."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/charlm"))
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    vocab = [json.loads(line) for line in (HERE / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    train = np.load(args.data / "train.npy")
    val, test = windows(np.load(args.data / "val.npy")), windows(np.load(args.data / "test.npy"))
    model = CharLstm(len(vocab), args.embed, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    offsets = np.arange(WINDOW + 1)[:, None]

    curve, best, best_bpc = [], None, math.inf
    started, running = time.time(), 0.0
    for step in range(1, args.steps + 1):
        model.train()
        starts = rng.integers(0, len(train) - WINDOW - 1, args.batch)
        w = torch.from_numpy(train[starts[None, :] + offsets].astype(np.int64))
        logits = model(w[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            val_bpc = bits_per_char(model, val)
            train_bpc = running / (step - (curve[-1]["step"] if curve else 0)) / math.log(2)
            curve.append({"step": step, "train_bpc": round(train_bpc, 4), "val_bpc": round(val_bpc, 4),
                          "seconds": round(time.time() - started)})
            print(f"step {step:6d}  train {train_bpc:.4f}  val {val_bpc:.4f} bpc  {time.time() - started:.0f}s", flush=True)
            running = 0.0
            if val_bpc < best_bpc:
                best, best_bpc = {k: v.clone() for k, v in model.state_dict().items()}, val_bpc
    train_seconds = time.time() - started
    model.load_state_dict(best)
    test_bpc = bits_per_char(model, test)
    print(f"best val {best_bpc:.4f} bpc, test {test_bpc:.4f} bpc, trained {train_seconds:.0f}s")

    onnx_path = HERE / "charlm.onnx"
    model.eval()
    torch.onnx.export(
        model, (test[:-1, :2],), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["ids"], output_names=["logits"],
        dynamic_axes={"ids": {0: "time", 1: "batch"}, "logits": {0: "time", 1: "batch"}},
    )
    evalset = np.load(HERE / "eval_set.npz")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"ids": evalset["ids"]})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(evalset["ids"])).numpy()
    diff = float(np.abs(ref - got).max())
    logp = got - np.log(np.exp(got - got.max(-1, keepdims=True)).sum(-1, keepdims=True)) - got.max(-1, keepdims=True)
    eval_bpc = float(-np.take_along_axis(logp, evalset["y"][..., None], -1).mean() / math.log(2))
    print(f"onnxruntime vs torch max |diff| {diff:.2e}; eval_set {eval_bpc:.4f} bpc (onnxruntime)")
    if diff > 1e-4:
        raise SystemExit("onnxruntime disagrees with torch")
    torch.save(model.state_dict(), args.data / "charlm.pt")
    (args.data / "train_log.json").write_text(json.dumps({
        "curve": curve, "best_val_bpc": best_bpc, "test_bpc": test_bpc, "eval_set_bpc": eval_bpc,
        "max_abs_diff": diff, "train_seconds": round(train_seconds, 1), "args": {k: str(v) for k, v in vars(args).items()},
    }, indent=1))


if __name__ == "__main__":
    main()
