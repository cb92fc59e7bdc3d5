"""How often the weights are copied between the import and map-conductance, and that the copies are right.

decompose-rnn hands its gate MVMs views of the imported W and R (no copy); form-mvm's stacking of an MVM's
parts is their one copy. Values are checked exactly against a closed form (np.concatenate of the ONNX
weights' transposes and the summed biases: the stacking only moves float32 values, the bias is Wb + Rb in
float32 as onnxruntime adds it), and the lowered module against onnxruntime as tests/test_lowering.py does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.attributes import Tensor
from cimc.importer import import_model
from cimc.interpreter import evaluate
from cimc.pass_manager import PassManager, parse_pipeline
from cimc.passes.form_mvm import stack_rows
from onnx_corpus import reference_outputs
from passes_support import assert_matches, bidirectional_lstm_case


def _matvecs(module) -> list:
    return [op for op in module.walk() if op.name == "cim.matvec"]


def _constants(module) -> dict[str, np.ndarray]:
    return {op.results[0].name: op.attributes["value"].array for op in module.body.ops if op.name == "builtin.constant"}


def test_view_needs_read_only_memory_of_the_tensor() -> None:
    whole = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = whole.view(whole.array[1:].T, key="k")
    assert view.key == "k" and np.shares_memory(view.array, whole.array) and not view.array.flags.writeable
    assert view == Tensor(whole.array[1:].T)  # the digest hashes the elements in C order, whatever the layout
    with pytest.raises(ValueError):
        whole.view(np.arange(8, dtype=np.float32).reshape(2, 4))  # not its memory
    other = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    with pytest.raises(ValueError):
        whole.view(other.array[1:])  # read-only, but another tensor's


@pytest.mark.parametrize("parts", [
    [np.arange(12, dtype=np.float32).reshape(4, 3).T, np.ones((1, 4), np.float32)],  # a transpose, a bias row
    [np.arange(40 * 50, dtype=np.float32).reshape(40, 50).T, np.arange(10 * 40, dtype=np.float32).reshape(10, 40)],
    [np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::-1]],  # neither C- nor F-ordered
])
def test_stack_rows_is_concatenate(parts: list[np.ndarray]) -> None:
    got = stack_rows(parts, np.dtype(parts[0].dtype))
    expected = np.concatenate(parts, dtype=parts[0].dtype)
    assert got.flags.c_contiguous and got.flags.owndata and got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_decompose_rnn_gives_views_and_form_mvm_makes_the_one_copy() -> None:
    case = bidirectional_lstm_case()
    module = import_model(case.model, "big.onnx")
    weights = _constants(module)
    W, R, B, P = (weights[n] for n in ("W", "R", "B", "P"))
    PassManager(parse_pipeline("decompose-rnn")).run(module)
    by_key = {op.attributes["weights"].key: op.attributes["weights"].array for op in _matvecs(module)}
    for d in range(2):
        for part, source in (("W", W), ("R", R)):
            view = by_key[f"big.d{d}.gates.{part}"]
            assert np.shares_memory(view, source) and not view.flags.writeable  # no copy
            np.testing.assert_array_equal(view, source[d].T)
    PassManager(parse_pipeline("form-mvm")).run(module)
    H = R.shape[-1]
    for op in _matvecs(module):
        merged = op.attributes["weights"].array
        assert merged.flags.c_contiguous and merged.flags.owndata and not merged.flags.writeable
        assert not np.shares_memory(merged, W) and not np.shares_memory(merged, R)
        d = int(op.attributes["block"].split(".")[1][1:])
        diag = np.zeros((H, 4 * H), np.float32)
        diag[np.arange(H), np.arange(H)], diag[np.arange(H), 2 * H + np.arange(H)] = P[d, :H], P[d, 2 * H:]
        expected = np.concatenate([W[d].T, R[d].T, diag, (B[d, :4 * H] + B[d, 4 * H:])[None, :]])
        np.testing.assert_array_equal(merged, expected)
    assert_matches(evaluate(module, case.feeds), reference_outputs(case.model, case.feeds))


def _gru_without_bias(linear_before_reset: int) -> tuple:
    rng = np.random.default_rng(5)
    I, H = 6, 5
    W, R = (rng.normal(size=(1, 3 * H, n)).astype(np.float32) for n in (I, H))
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=H, linear_before_reset=linear_before_reset)
    graph = helper.make_graph([node], "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 2, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return model, {"X": rng.normal(size=(4, 2, I)).astype(np.float32)}


def test_an_mvm_nothing_merges_gets_a_copy_of_its_own() -> None:
    """linear_before_reset without a bias leaves R_h x h a lone MVM: form-mvm copies its view, so that no pass
    after it sees a strided view of the ONNX R (nor keeps all of R alive for it)."""
    model, feeds = _gru_without_bias(1)
    module = import_model(model, "gru.onnx")
    R = _constants(module)["R"]
    PassManager(parse_pipeline("decompose-rnn,form-mvm")).run(module)
    lone = [op for op in _matvecs(module) if op.attributes["block"].endswith(".hh")]
    assert len(lone) == 1
    array = lone[0].attributes["weights"].array
    assert array.flags.c_contiguous and array.flags.owndata and not np.shares_memory(array, R)
    np.testing.assert_array_equal(array, R[0, 2 * R.shape[-1]:].T)
    assert_matches(evaluate(module, feeds), reference_outputs(model, feeds))


def test_matmul_weights_are_the_constant_itself() -> None:
    """A MatMul's constant weights are already the MVM's layout: the MVM shares the constant's read-only array."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(8, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    module = import_model(model, "mm.onnx")
    constant = _constants(module)["w"]
    PassManager(parse_pipeline("form-mvm")).run(module)
    (op,) = _matvecs(module)
    assert op.attributes["weights"].array is constant and not constant.flags.writeable
    feeds = {"x": rng.normal(size=(2, 8)).astype(np.float32)}
    assert_matches(evaluate(module, feeds), reference_outputs(model, feeds))


_CUT_IN_A_FRESH_PROCESS = """
import numpy as np
from cimc.attributes import Tensor
from cimc.passes.tile import _chunk_copies

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

chunks = [(0, 333), (333, 666), (666, 1000)]
holder = [Tensor.adopt(np.random.default_rng(8).uniform(1.0, 40.0, size=(12_000, 1000)).astype(np.float32))]
g = holder[0].array
expected, nbytes, minimum = [g[:, c0:c1].copy() for c0, c1 in chunks], g.nbytes, holder[0].minimum()
del g
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = kb("VmRSS")
copies = _chunk_copies(holder.pop(), chunks)  # G's only holder, as map-conductance leaves it to tile
added = (kb("VmHWM") - before) * 1024
assert all(c.array.flags.c_contiguous and c.array.flags.owndata and not c.array.flags.writeable for c in copies)
assert all(np.array_equal(c.array, e) for c, e in zip(copies, expected))
assert all(c.known_lower_bound() == minimum for c in copies)
print(added / nbytes)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable VmHWM")
def test_tile_empties_a_private_conductance_array_as_it_copies_the_chunks(tmp_path: Path) -> None:
    """What only tile holds (map-conductance's fresh G) is shrunk band by band as its chunks are copied, so the cut
    adds about one band (4 MiB) to the resident set, not a second G: the peak during the cut stays within a quarter
    of G (48 MiB) above the set before it, where copying beside G would add all of G. (Resident memory, not traced
    allocations: the copies are allocated whole at once and their pages become resident only as they are written;
    in a fresh process, as a compile runs, since a long-lived process's heap may already hold resident free
    memory.) The chunks equal the windows they replace, each with G's minimum as its known lower bound."""
    from cimc.attributes import EXACT_REFCOUNTS

    # Run outside the source tree: there `python -c` would import its cimc/, which has no cimc.passes.
    out = subprocess.run([sys.executable, "-c", _CUT_IN_A_FRESH_PROCESS], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    added = float(out.stdout.strip())
    if EXACT_REFCOUNTS:
        assert added < 0.25, f"the cut added {added:.2f} x G to the resident set"


def test_tile_leaves_a_conductance_array_someone_else_holds_as_it_is() -> None:
    from cimc.passes.tile import _chunk_copies

    g = np.random.default_rng(7).uniform(1.0, 40.0, size=(300, 70)).astype(np.float32)
    held = Tensor.adopt(g)  # a second holder (this test's name): a pass must not change what another still reads
    chunks = [(0, 31), (31, 62), (62, 70)]
    copies = _chunk_copies(held, chunks)
    assert held.array.shape == (300, 70) and held.array is g
    for (c0, c1), copy in zip(chunks, copies):
        np.testing.assert_array_equal(copy.array, g[:, c0:c1])
