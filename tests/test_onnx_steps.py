"""Every recurrent corpus model at exact fidelity, step by step against onnxruntime.

Each step of every LSTM/GRU/RNN node is run by onnxruntime from the very state
the simulator carried into it (``cimc.onnx_steps``): the simulator's state after
the step must lie within that step's float32 bound (``cimc.error_bound.step_bounds``
at exact fidelity: gamma_n sum|w x| per dot product, u|y| per op, a few ulp
per activation, for both implementations). Unlike the free-running bound, it
does not compound over the sequence, so it stays within a small factor of the
measured error however long the sequence is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.error_bound import Sources, step_bounds
from cimc.onnx_steps import operand_names, per_step_against_onnxruntime, recurrent_nodes
from cimc.stepwise import run_trajectory
from onnx_corpus import CorpusCase, all_cases, timewise_equivalent
from test_image import image_of

CASES = [c for c in all_cases() if recurrent_nodes(c.model)]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KWS = EXAMPLES / "kws" / "kws_lstm.onnx"


def _operand_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The recurrent nodes' operands as onnxruntime computes them (layout=1 nodes: through their timewise equivalent)."""
    wanted = {n for node in recurrent_nodes(model).values() for n in operand_names(node)}
    initializers = {i.name for i in model.graph.initializer}
    probe = timewise_equivalent(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(wanted - initializers))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_step_within_its_float32_bound(case: CorpusCase, tmp_path: Path) -> None:
    image = image_of(case, tmp_path)
    _, trajectory = run_trajectory(Simulator(image, SimulatorOptions("exact")), case.feeds)
    bounds = step_bounds(image, case.feeds, Sources.for_fidelity("exact", image))
    rows = per_step_against_onnxruntime(case.model, _operand_values(case.model, case.feeds), trajectory, bounds)
    assert rows, "no loop matched its recurrent node"
    for label, got, want, bound in rows:
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert (err <= bound).all(), f"{label}: worst |err| / bound {float(np.max(err / bound)):.3g}"
        assert np.isfinite(bound).all() and float(bound.max(initial=0.0)) < 1e-3 * max(1.0, float(np.abs(want).max())), label


def test_kws_exact_per_step_bound_is_tight_and_a_1_percent_model_fails(tmp_path: Path) -> None:
    """KWS (49 steps): the per-step float32 bound is within 10x of the largest per-step error (measured 4-5x), while
    its free-running bound exceeds 1000 %; an image checked against a model whose LSTM weights W are 1 % larger
    fails per step (error about 1e-2, bound about 1e-6)."""
    compiled = cimc.compile(KWS, calib=EXAMPLES / "kws" / "calib.npz")
    inputs = dict(np.load(EXAMPLES / "kws" / "verify_inputs.npz"))
    report = cimc.verify(KWS, compiled, inputs=inputs, fidelity="exact")
    assert report.passed and len(report.onnx_steps) == 2, report.table()
    for row in report.onnx_steps:
        assert 0.1 < row.worst_ratio <= 1.0, report.table()
    assert report.outputs[0].bound_relative > 10  # the compounding free-running bound: vacuous on 49 steps
    model = onnx.load(str(KWS))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    w = next(i for i in model.graph.initializer if i.name == lstm.input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(1.01), w.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    perturbed = cimc.verify(other, compiled, inputs=inputs, fidelity="exact")
    assert not perturbed.passed and not any(r.passed for r in perturbed.onnx_steps), perturbed.table()
    assert all(r.passed for r in perturbed.outputs)  # the free-running check alone would not have caught it
