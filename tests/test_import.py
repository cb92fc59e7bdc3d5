"""The ONNX importer and the reference interpreter, checked against onnxruntime.

Tolerance: rtol 1e-5, atol 1e-6 on float32. Both sides compute in float32 and
differ only in the order of floating-point operations, a few ulp (~1e-7
relative) per op; over at most six recurrent steps that stays two orders of
magnitude below rtol 1e-5. A wrong gate order, bias or activation is off by
1e-2 or more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cimc.diagnostics import CimcError
from cimc.importer import import_model, import_onnx
from cimc.interpreter import evaluate
from cimc.parser import parse_module
from cimc.printer import print_module
from onnx_corpus import CorpusCase, all_cases, reference_outputs
from passes_support import assert_matches

TORCH = Path(__file__).parent / "data" / "torch"
CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_interpreter_matches_reference(case: CorpusCase) -> None:
    module = import_model(case.model, f"{case.name}.onnx")
    assert_matches(evaluate(module, case.feeds), reference_outputs(case.model, case.feeds))


def test_corpus_covers_every_recurrent_axis() -> None:
    """The corpus has what the issue asks for: every op, direction, layout, sequence_lens and peepholes."""
    seen: dict[str, set] = {"op": set(), "direction": set(), "layout": set(), "seq_lens": set(), "lbr": set(), "peep": set()}
    for case in CASES:
        for node in case.model.graph.node:
            if node.op_type not in ("LSTM", "GRU", "RNN"):
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            seen["op"].add(node.op_type)
            seen["direction"].add(attrs.get("direction", b"forward"))
            seen["layout"].add(attrs.get("layout", 0))
            seen["seq_lens"].add(len(node.input) > 4 and node.input[4] != "")
            seen["lbr"].add(attrs.get("linear_before_reset", 0))
            seen["peep"].add(node.op_type == "LSTM" and len(node.input) > 7 and node.input[7] != "")
    assert seen["op"] == {"LSTM", "GRU", "RNN"}
    assert seen["direction"] == {b"forward", b"reverse", b"bidirectional"}
    assert seen["layout"] == {0, 1} and seen["seq_lens"] == {True, False}
    assert seen["lbr"] == {0, 1} and seen["peep"] == {True, False}


@pytest.mark.parametrize("case", CASES[::7], ids=[c.name for c in CASES[::7]])
def test_imported_ir_survives_text_round_trip(case: CorpusCase, tmp_path: Path) -> None:
    """Weights go through the sidecar and floats through text without changing a bit."""
    module = import_model(case.model, f"{case.name}.onnx")
    printed = print_module(module)
    sidecar = tmp_path / "m.npz"
    from cimc.npz import npz_bytes

    sidecar.write_bytes(npz_bytes(printed.resources))
    text = printed.text.replace("attributes {", 'attributes {sidecar = "m.npz", ', 1)
    reparsed = parse_module(text, "m.cir", tmp_path)
    before, after = evaluate(module, case.feeds), evaluate(reparsed, case.feeds)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


TORCH_MODELS = sorted(TORCH.glob("*.onnx"))


@pytest.mark.parametrize("path", TORCH_MODELS, ids=[p.name for p in TORCH_MODELS])
def test_torch_exports(path: Path) -> None:
    """Real exporter output: the stored input, then new sizes for every symbolic dim, against onnxruntime.

    The dynamo exporter may bake the traced sizes into Reshape constants while
    still declaring the input dims symbolic; where onnxruntime then refuses the
    new sizes, the interpreter must refuse them too rather than invent a result.
    """
    import onnxruntime as ort

    module = import_onnx(path)
    stored = dict(np.load(path.with_suffix(".npz")))
    feeds = {k: stored[k] for k in module.attributes["input_names"]}  # type: ignore[union-attr]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert_matches(evaluate(module, feeds), dict(zip(names, session.run(None, feeds))))
    rng = np.random.default_rng(1)
    other = {}
    for arg, (name, x) in zip(module.inputs, feeds.items()):
        shape = [n + 2 if isinstance(d, str) else n for d, n in zip(arg.type.shape, x.shape)]
        other[name] = rng.normal(size=shape).astype(np.float32)
    try:
        expected = dict(zip(names, session.run(None, other)))
    except Exception:  # noqa: BLE001  (onnxruntime raises its own exception types)
        with pytest.raises(CimcError):
            evaluate(module, other)
        return
    assert_matches(evaluate(module, other), expected)


@pytest.mark.parametrize("path", [TORCH / "lstm2.dynamo.onnx", TORCH / "lstm2.torchscript-nofold.onnx"])
def test_gate_reordering_is_folded(path: Path) -> None:
    module = import_onnx(path)
    lstms = [op for op in module.walk() if op.name == "onnx.LSTM"]
    assert len(lstms) == 2
    for lstm in lstms:
        for weight in lstm.operands[1:4]:
            assert weight is not None and weight.op.name == "builtin.constant"  # type: ignore[attr-defined]


def test_cli_import_prints_folded_ir(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("import", str(TORCH / "lstm2.dynamo.onnx"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lstm_lines = [line for line in result.stdout.splitlines() if "onnx.LSTM(" in line]
    assert len(lstm_lines) == 2 and all('loc("lstm2.dynamo.onnx:' in line for line in lstm_lines)
    out = cimc_cli("import", str(TORCH / "lstm2.dynamo.onnx"), "-o", "m.cir", "--input-shape", "x=?,3,8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "m.cir").read_text()
    assert "%x: f32[seq, 3, 8]" in text and (tmp_path / "m.npz").exists()
    again = cimc_cli("opt", "m.cir", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == text


def _model_with(node: onnx.NodeProto, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_is_one_line_naming_node_op_and_opset(cimc_cli, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model_with(helper.make_node("Erf", ["x"], ["y"], name="my_erf")), path)
    result = cimc_cli("import", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "node 'my_erf' has op type 'Erf' (opset 17)" in lines[0] and "supported ops: " in lines[0]
    assert "LSTM" in lines[0] and "GRU" in lines[0]


def test_unsupported_attribute_value_is_refused() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=0)
    with pytest.raises(CimcError, match="legacy form only on the last axis"):
        import_model(_model_with(node, opset=11))


def test_recurrent_node_without_hidden_size_is_refused(cimc_cli, tmp_path: Path) -> None:
    """An LSTM with no hidden_size (onnxruntime refuses it too) is one exit-2 line, not a KeyError (found by fuzzing)."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(name, TensorProto.FLOAT, shape, rng.normal(size=shape).astype(np.float32).ravel())
               for name, shape in (("W", [1, 16, 3]), ("R", [1, 16, 4]))]
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], name="lstm"),
             helper.make_node("Tanh", ["Y_h"], ["out"], name="head")]  # Y_h has no declared type: the importer derives it
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4])], weights)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    result = cimc_cli("import", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path.name}:lstm: a recurrent node needs a positive integer attribute hidden_size, got None"]


@pytest.mark.parametrize("content, message", [(b"not a model", "not an ONNX model"), (None, "no such file")])
def test_unreadable_model(cimc_cli, tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    result = cimc_cli("import", str(path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_invalid_model_is_refused_by_the_checker(cimc_cli, tmp_path: Path) -> None:
    model = _model_with(helper.make_node("Relu", ["missing"], ["y"]))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = cimc_cli("import", str(path))
    assert result.returncode == 2 and "not a valid ONNX model" in result.stderr
