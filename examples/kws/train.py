"""Train the keyword-spotting LSTM and export it to ONNX.

Model (the paper's KWS network): LSTM with 40 inputs and 32 hidden units
(4 * 32 * (40 + 32) = 9216 weights = 1.125 kB at 1 byte each), then
Linear(32 -> 12) on the hidden state after the last frame.  Input is
[T, B, 40] (time-major, as the ONNX LSTM op is), raw log-mel features from
``features.log_mel``.  The per-feature mean/std of the training set are kept in
the model as constants and applied first (Sub, Div in the exported graph), so
the ONNX file takes raw features and needs no side file.

The best epoch by validation accuracy is exported to ``kws_lstm.onnx`` with
the TorchScript exporter (opset 17, dynamic time and batch axes) and checked
against onnxruntime on the test split (max |difference| of logits <= 1e-4).

Run from the repository root (after make_dataset.py):
    .venv-train/bin/python examples/kws/train.py
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
N_MELS = 40
HIDDEN = 32
N_CLASSES = 12


class KwsLstm(nn.Module):
    """Normalize -> LSTM(40, 32) -> last hidden state -> Linear(32, 12)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.lstm = nn.LSTM(N_MELS, HIDDEN)
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, B, 40] raw log-mel -> logits [B, 12]."""
        _, (h, _) = self.lstm((x - self.mean) / self.std)
        return self.fc(h[-1])


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as [N, T, 40] float32 and labels as int64 from a split file."""
    data = np.load(path)
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def spec_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random time mask (<= 8 frames) and frequency mask (<= 6 bands) per clip,
    filled with the clip's mean.  Cheap regularization for unseen voices.
    """
    n, t, f = x.shape
    x = x.clone()
    fill = x.mean(dim=(1, 2), keepdim=True)
    t0 = torch.randint(0, t, (n, 1), generator=gen)
    tw = torch.randint(0, 9, (n, 1), generator=gen)
    f0 = torch.randint(0, f, (n, 1), generator=gen)
    fw = torch.randint(0, 7, (n, 1), generator=gen)
    tt = torch.arange(t)[None, :]
    ff = torch.arange(f)[None, :]
    tmask = ((tt >= t0) & (tt < t0 + tw))[:, :, None]
    fmask = ((ff >= f0) & (ff < f0 + fw))[:, None, :]
    return torch.where(tmask | fmask, fill, x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on [N, T, 40] features."""
    model.eval()
    hits = sum(
        int((model(x[i : i + batch].transpose(0, 1)).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(y), batch)
    )
    return hits / len(y)


def export(model: nn.Module, path: Path, sample: torch.Tensor) -> None:
    """TorchScript-based ONNX export with dynamic time and batch axes."""
    torch.onnx.export(
        model, (sample,), str(path), dynamo=False, opset_version=17,
        input_names=["features"], output_names=["logits"],
        dynamic_axes={"features": {0: "time", 1: "batch"}, "logits": {0: "batch"}},
    )


def main() -> None:
    """Train, select by validation accuracy, export, verify against onnxruntime."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/kws"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = load(args.data / "train.npz")
    x_val, y_val = load(args.data / "val.npz")
    x_test, y_test = load(args.data / "test.npz")
    flat = x_train.reshape(-1, N_MELS).double()
    model = KwsLstm(flat.mean(0).numpy(), flat.std(0).numpy())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(y_train) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()

    curve, best, best_acc = [], copy.deepcopy(model.state_dict()), -1.0
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            logits = model(spec_augment(x_train[idx], gen).transpose(0, 1))
            loss = loss_fn(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        val_acc = accuracy(model, x_val, y_val)
        curve.append({"epoch": epoch, "loss": round(total / len(y_train), 4), "val_acc": round(val_acc, 4)})
        print(f"epoch {epoch:3d}  loss {total / len(y_train):.4f}  val {val_acc:.4f}  {time.time() - started:.0f}s", flush=True)
        if val_acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), val_acc
    model.load_state_dict(best)
    train_seconds = time.time() - started
    test_acc = accuracy(model, x_test, y_test)
    print(f"best val {best_acc:.4f}, test (unseen voices) {test_acc:.4f}, trained {train_seconds:.0f}s")

    onnx_path = HERE / "kws_lstm.onnx"
    model.eval()
    export(model, onnx_path, x_test[:2].transpose(0, 1))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feats = x_test.transpose(0, 1).contiguous()
    ref = model(feats).detach().numpy()
    got = sess.run(None, {"features": feats.numpy()})[0]
    diff = float(np.abs(ref - got).max())
    ort_acc = float(np.mean(got.argmax(1) == y_test.numpy()))
    print(f"onnxruntime vs torch max |diff| {diff:.2e}, onnxruntime test accuracy {ort_acc:.4f}")
    if diff > 1e-4:
        raise SystemExit("onnxruntime disagrees with torch")
    torch.save(model.state_dict(), args.data / "kws_lstm.pt")
    (args.data / "train_log.json").write_text(json.dumps({
        "curve": curve, "best_val_acc": best_acc, "test_acc": test_acc, "ort_test_acc": ort_acc,
        "max_abs_diff": diff, "train_seconds": round(train_seconds, 1), "args": {k: str(v) for k, v in vars(args).items()},
    }, indent=1))


if __name__ == "__main__":
    main()
