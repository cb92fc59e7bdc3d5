"""Symbolic dims from real exporters: every PyTorch export compiles and runs exactly like onnxruntime.

The dynamo exporter reshapes through shape arithmetic (Shape -> Slice -> Mul ->
Concat -> Reshape) that onnx's own inference types with invented dims
(``unk__0``); the importer must recover the static feature dims from the graph
inputs and initializers, and name the tensor when nothing can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import cimc
from cimc.importer import import_onnx
from cimc.ir import Module

TORCH = Path(__file__).parent / "data" / "torch"
EXPORTS = sorted(TORCH.glob("*.onnx"))
# Exported with torch.export.Dim.DYNAMIC: batch and sequence really stay dynamic
# (export_torch_models.py checks onnxruntime against torch at another size).
TRULY_DYNAMIC = ("bigru_tagger.dynamo.onnx", "lstm_tagger.dynamo.onnx")


def _all_types(module: Module) -> list[str]:
    out: list[str] = []

    def walk(block) -> None:  # noqa: ANN001
        for op in block.ops:
            out.extend(str(r.type) for r in op.results)
            for region in op.regions:
                walk(region.block)

    walk(module.body)
    return out


@pytest.mark.parametrize("path", EXPORTS, ids=[p.name for p in EXPORTS])
def test_torch_export_compiles_and_verifies_exactly(path: Path) -> None:
    """Default pipeline, then the simulator at exact fidelity against onnxruntime on the export's own batch."""
    stored = np.load(path.with_suffix(".npz"))
    model = cimc.compile(path)
    report = cimc.verify(path, model, inputs={"x": stored["x"]}, fidelity="exact")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", TRULY_DYNAMIC)
def test_dynamic_export_verifies_at_other_sizes(name: str) -> None:
    """Compiled once with symbolic dims, the image runs at a batch and length it was not exported with."""
    path = TORCH / name
    model = cimc.compile(path)
    x = np.random.default_rng(5).standard_normal((2, 9, int(np.load(path.with_suffix(".npz"))["x"].shape[-1])))
    report = cimc.verify(path, model, inputs={"x": x.astype(np.float32)}, fidelity="exact")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", ["lstm2.dynamo.onnx", "lstm_classifier.dynamo.onnx", "bigru_tagger.dynamo.onnx"])
def test_no_invented_dims_survive_import(name: str) -> None:
    """onnx types the dynamo Reshape ``[seq, batch, unk__0]``; after import every such dim is resolved."""
    types = _all_types(import_onnx(TORCH / name))
    assert not [t for t in types if "unk__" in t]


def _lstm_with_weight_input(path: Path) -> None:
    """An LSTM whose W is a graph input with a symbolic width: nothing in the model fixes the feature dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", "features"])
    w = helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 8, "features"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", 2])
    r = helper.make_tensor("R", TensorProto.FLOAT, [1, 8, 2], np.zeros(16, np.float32))
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2, name="lstm")
    graph = helper.make_graph([node], "g", [x, w], [y], initializer=[r])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))


def test_unresolvable_feature_dim_is_a_clear_error(cimc_cli, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _lstm_with_weight_input(model)
    result = cimc_cli("compile", str(model), "-o", str(tmp_path / "m.cimg"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "'x'" in lines[0] and "--input-shape" in lines[0] and "lstm" in lines[0]
    assert not (tmp_path / "m.cimg").exists()


def test_feature_dim_comes_from_the_weights() -> None:
    """A symbolic feature dim on the input is fixed by the constant W it meets (a valid model must agree)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", "features"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", 2])
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [1, 8, 3], rng.standard_normal(24).astype(np.float32)),
             helper.make_tensor("R", TensorProto.FLOAT, [1, 8, 2], rng.standard_normal(16).astype(np.float32))]
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2)], "g", [x], [y], inits)
    module = cimc.importer.import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    assert str(module.body.args[0].type) == "f32[seq, batch, 3]"


def test_random_inputs_at_sizes_the_export_fixed_say_so(cimc_cli, tmp_path: Path) -> None:
    """lstm2.dynamo declares x [seq, batch, 8], but the exporter baked its sequence length (6) into a Reshape:
    verify's random inputs (seq 20) cannot run, in onnxruntime either. One line that says why and names --inputs."""
    image = tmp_path / "m.cimg"
    assert cimc_cli("compile", str(TORCH / "lstm2.dynamo.onnx"), "-o", str(image)).returncode == 0
    result = cimc_cli("verify", str(TORCH / "lstm2.dynamo.onnx"), str(image))
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "node_Reshape_142" in error[0] and "random inputs x[20, " in error[0] and "--inputs" in error[0]
    stored = np.load(TORCH / "lstm2.dynamo.npz")
    np.savez(tmp_path / "x.npz", x=stored["x"])
    assert cimc_cli("verify", str(TORCH / "lstm2.dynamo.onnx"), str(image), "--inputs", str(tmp_path / "x.npz")).returncode == 0
