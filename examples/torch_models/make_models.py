"""Train two small PyTorch models briefly on synthetic data and export them to ONNX, for NL-ADC fusion checks.

Why: the shipped examples are cimc's own; these are what a user brings from
PyTorch, with weights at trained (not initial) scales, which is where ramp
realizability is decided:

* ``conv_lstm.onnx``: Conv1d(40 -> 32, k = 3) + ReLU front end, LSTM(32 -> 128),
  Linear(128 -> 12) + Sigmoid (multi-label keyword detection), input
  ``x`` [batch, 40, T];
* ``bigru.onnx``: bidirectional GRU(20 -> 48), Linear(96 -> 8) + Tanh, input
  ``x`` [T, batch, 20].

Training data: a seeded synthetic task (class templates plus noise; the
targets are which templates are present). Each model trains 300 Adam steps,
enough to move the weights off their initialization. Both are exported with
the TorchScript exporter (opset 17) and checked against onnxruntime; next to
each ``.onnx`` a ``.npz`` holds a calibration batch (``x``) and a held-out
evaluation batch: ``eval_x``, its targets ``eval_labels`` (0/1: which templates are
present; the conv-LSTM's Sigmoid says present above 0.5, the biGRU, trained towards
2 t - 1, above 0) and torch's outputs on it, ``torch_y``.

Run:  .venv/bin/pip install torch==2.13.0 onnxscript
      .venv/bin/python examples/torch_models/make_models.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
STEPS = 300


class ConvLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 32, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(32, 128)
        self.head = nn.Linear(128, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 40, T]
        f = torch.relu(self.conv(x)).permute(2, 0, 1)  # [T, N, 32]
        y, _ = self.lstm(f)
        return torch.sigmoid(self.head(y[-1]))


class BiGru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(20, 48, bidirectional=True)
        self.head = nn.Linear(96, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, N, 20]
        y, _ = self.gru(x)
        return torch.tanh(self.head(y[-1]))


def synthetic(n: int, features: int, steps: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences [steps, n, features]: noise plus the templates of a random subset of classes; targets in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, features, generator=torch.Generator().manual_seed(1234))
    present = (torch.rand(n, classes, generator=g) < 0.3).float()
    phase = torch.linspace(0, 3.14159, steps)[:, None, None]
    x = 0.7 * torch.randn(steps, n, features, generator=g) + torch.sin(phase) * (present @ templates)[None]
    return x, present


def train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, signed: bool) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    goal = 2 * target - 1 if signed else target
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), goal) if signed else nn.functional.binary_cross_entropy(model(x), goal)
        loss.backward()
        opt.step()


def export(model: nn.Module, name: str, calib: torch.Tensor, held_out: torch.Tensor, labels: torch.Tensor,
           dynamic: dict) -> None:
    path = HERE / f"{name}.onnx"
    model.eval()
    torch.onnx.export(model, (calib,), str(path), input_names=["x"], output_names=["y"], dynamic_axes=dynamic,
                      opset_version=17, dynamo=False)
    with torch.no_grad():
        expected = model(held_out).numpy()
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": held_out.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.savez(HERE / f"{name}.npz", x=calib.numpy(), eval_x=held_out.numpy(), eval_labels=labels.numpy().astype(np.int8),
             torch_y=expected)
    print(f"wrote {path.name}: onnxruntime matches torch on {held_out.shape} (max |diff| {np.abs(got - expected).max():.2g})")


def main() -> None:
    torch.manual_seed(0)
    x, t = synthetic(256, 40, 30, 12, seed=0)
    conv = ConvLstm()
    train(conv, x.permute(1, 2, 0), t, signed=False)
    xe, te = synthetic(64, 40, 30, 12, seed=1)
    export(conv, "conv_lstm", x.permute(1, 2, 0)[:32].contiguous(), xe.permute(1, 2, 0).contiguous(), te,
           {"x": {0: "batch", 2: "time"}})

    torch.manual_seed(1)
    x, t = synthetic(256, 20, 25, 8, seed=2)
    gru = BiGru()
    train(gru, x, t, signed=True)
    xe, te = synthetic(64, 20, 25, 8, seed=3)
    export(gru, "bigru", x[:, :32].contiguous(), xe, te, {"x": {0: "time", 1: "batch"}})


if __name__ == "__main__":
    main()
