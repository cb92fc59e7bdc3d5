"""Export small PyTorch recurrent models to ONNX with both PyTorch exporters.

Why: the hand-built corpus (tests/onnx_corpus.py) reproduces exporter patterns
from memory; these files are what PyTorch really emits, so the importer is
also tested against the genuine article.  Each model is exported three ways:

* ``torchscript``        -- ``torch.onnx.export(..., dynamo=False)`` with its
  defaults (constant folding on, so gate reordering is pre-folded);
* ``torchscript-nofold`` -- the same exporter with ``do_constant_folding=False``,
  the only real source of the Slice/Concat/Unsqueeze gate-reordering
  subgraphs an importer has to fold itself;
* ``dynamo``             -- ``torch.onnx.export(..., dynamo=True)``.

Every file is saved as one self-contained ``.onnx`` (no external data), next to
a ``.npz`` holding one seeded input batch and torch's own outputs keyed by the
ONNX input/output names.  The script then checks that onnxruntime reproduces
torch's outputs from each file and prints the op types every file contains.

Run with the torch venv (see README.md):
    /work/venv-torch/bin/python tests/data/torch/export_torch_models.py
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

OUT_DIR = pathlib.Path(__file__).resolve().parent
EXPORTERS = ("torchscript", "torchscript-nofold", "dynamo")
RTOL = 1e-4
ATOL = 1e-5


class LstmStack(nn.Module):
    """Two-layer LSTM returning the sequence output and both final states."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=8, hidden_size=16, num_layers=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, (h_n, c_n) = self.lstm(x)
        return y, h_n, c_n


class BiGru(nn.Module):
    """Single-layer bidirectional GRU (time-major) returning output and final state."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=8, hidden_size=12, bidirectional=True, batch_first=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_n = self.gru(x)
        return y, h_n


class BiGruTagger(nn.Module):
    """Batch-first bidirectional GRU with a linear head on every step (a sequence tagger)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=8, hidden_size=12, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_n = self.gru(x)
        return self.fc(y), h_n


class LstmTagger(nn.Module):
    """Batch-first two-layer LSTM with a linear head on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=6, hidden_size=20, num_layers=2, batch_first=True)
        self.fc = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.fc(y)


class LstmClassifier(nn.Module):
    """Batch-first LSTM whose last time step feeds a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=10, hidden_size=16, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.fc(y[:, -1, :])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to export: how to build it, its example input and axis names."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    other_shape: tuple[int, int, int]  # a different batch/sequence size, to probe dynamic axes
    axes: dict[int, str]  # input axis index -> symbolic name
    output_names: tuple[str, ...]
    # "named": torch.export.Dim(name) per axis (what the first exports used);
    # "auto": torch.export.Dim.DYNAMIC, which lets torch.export keep what it can
    # dynamic (batch) instead of falling back to the example sizes.
    dims: str = "named"
    exporters: tuple[str, ...] = EXPORTERS


SPECS = (
    ModelSpec("lstm2", LstmStack, (6, 3, 8), (9, 2, 8), {0: "seq", 1: "batch"}, ("y", "h_n", "c_n")),
    ModelSpec("bigru", BiGru, (6, 3, 8), (9, 2, 8), {0: "seq", 1: "batch"}, ("y", "h_n")),
    ModelSpec("lstm_classifier", LstmClassifier, (3, 6, 10), (2, 9, 10), {0: "batch", 1: "seq"}, ("logits",)),
    ModelSpec("bigru_tagger", BiGruTagger, (3, 6, 8), (2, 9, 8), {0: "batch", 1: "seq"}, ("tags", "h_n"),
              dims="auto", exporters=("dynamo",)),
    ModelSpec("lstm_tagger", LstmTagger, (3, 6, 6), (2, 9, 6), {0: "batch", 1: "seq"}, ("tags",),
              dims="auto", exporters=("dynamo",)),
)


def export_one(spec: ModelSpec, model: nn.Module, x: torch.Tensor, exporter: str, path: pathlib.Path) -> None:
    """Export ``model`` with one exporter and save it as a single self-contained file."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / "model.onnx"
        if exporter == "dynamo":
            if spec.dims == "auto":
                dims = {axis: torch.export.Dim.DYNAMIC for axis in spec.axes}
            else:
                dims = {axis: torch.export.Dim(name) for axis, name in spec.axes.items()}
            torch.onnx.export(
                model,
                (x,),
                str(raw),
                dynamo=True,
                input_names=["x"],
                output_names=list(spec.output_names),
                dynamic_shapes=(dims,),
            )
        else:
            dynamic_axes = {"x": dict(spec.axes)} | {name: {} for name in spec.output_names}
            torch.onnx.export(
                model,
                (x,),
                str(raw),
                dynamo=False,
                input_names=["x"],
                output_names=list(spec.output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=exporter == "torchscript",
            )
        # load_model pulls in any external .data file the exporter wrote.
        loaded = onnx.load_model(str(raw), load_external_data=True)
    onnx.save_model(loaded, str(path), save_as_external_data=False)


def run_onnxruntime(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a saved file on CPU and return its outputs by name."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def torch_outputs(spec: ModelSpec, model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the torch model and name its outputs as the ONNX graph does."""
    with torch.no_grad():
        outputs = model(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outputs, strict=True)}


def probe_other_shape(spec: ModelSpec, model: nn.Module, path: pathlib.Path) -> str:
    """Say whether a file still matches torch at a batch/sequence size it was not exported with.

    Why: the declared symbolic dims of an export are not proof that the graph
    really generalizes (an exporter can bake the example size into a Reshape).
    """
    x = torch.randn(*spec.other_shape, generator=torch.Generator().manual_seed(7))
    expected = torch_outputs(spec, model, x)
    try:
        got = run_onnxruntime(path, {"x": x.numpy()})
    except Exception as error:  # onnxruntime raises its own Fail/InvalidArgument types
        return f"fails at input shape {spec.other_shape}: {type(error).__name__}"
    for name, want in expected.items():
        if got[name].shape != want.shape or not np.allclose(got[name], want, rtol=RTOL, atol=ATOL):
            return f"WRONG at input shape {spec.other_shape}: {name} has shape {got[name].shape}, torch {want.shape}"
    return f"matches torch at input shape {spec.other_shape}"


def describe(path: pathlib.Path) -> str:
    """One-line summary of a file: opset, IR version, op-type counts, initializer count."""
    model = onnx.load_model(str(path))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    return (
        f"{path.name}: {path.stat().st_size} bytes, ir={model.ir_version}, opsets={opsets}, "
        f"initializers={len(model.graph.initializer)}, ops={dict(sorted(ops.items()))}, dims={dims}"
    )


def main() -> None:
    """Export every spec with every exporter, store reference data, and verify with onnxruntime."""
    for index, spec in enumerate(SPECS):
        torch.manual_seed(1234 + index)
        model = spec.build().eval()
        x = torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(99 + index))
        reference = {"x": x.numpy()} | torch_outputs(spec, model, x)
        for exporter in spec.exporters:
            path = OUT_DIR / f"{spec.name}.{exporter}.onnx"
            export_one(spec, model, x, exporter, path)
            onnx.checker.check_model(onnx.load_model(str(path)), full_check=True)
            np.savez(OUT_DIR / f"{spec.name}.{exporter}.npz", **reference)
            got = run_onnxruntime(path, {"x": reference["x"]})
            for name in spec.output_names:
                np.testing.assert_allclose(
                    got[name], reference[name], rtol=RTOL, atol=ATOL, err_msg=f"{path.name}:{name}"
                )
            print(describe(path))
            print(f"    {probe_other_shape(spec, model, path)}")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")


if __name__ == "__main__":
    main()
