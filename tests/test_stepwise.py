"""Per-step (teacher-forced) verification of the 49-step KWS LSTM: the enforced bound says something and can fail.

The free-running worst-case bound compounds through the recurrence (|Jacobian|
per step) and exceeds the outputs' own size on KWS (over 300 % relative RMS at
ideal), so it could not fail. Per step, each step restarts from the exact run's
carried values and its bound covers one step's error only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.error_bound import tail_sigmas
from cimc.stepwise import run_trajectory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KWS = EXAMPLES / "kws" / "kws_lstm.onnx"


@pytest.fixture(scope="module")
def kws() -> cimc.CompiledModel:
    return cimc.compile(KWS, calib=EXAMPLES / "kws" / "calib.npz")


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(EXAMPLES / "kws" / "verify_inputs.npz"))


def test_teacher_forcing_with_its_own_trajectory_reproduces_the_run(kws: cimc.CompiledModel, inputs: dict) -> None:
    """The hook replaces carried values by the reference's: given the run's own trajectory, nothing changes."""
    simulator = Simulator(kws.image, SimulatorOptions("ideal"))
    free, trajectory = run_trajectory(simulator, inputs)
    forced, again = run_trajectory(simulator, inputs, trajectory)
    assert len(trajectory.runs) == 1 and len(trajectory.runs[0].steps) == inputs["features"].shape[0]
    assert all(np.array_equal(free[k], forced[k]) for k in free)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(trajectory.runs[0].steps, again.runs[0].steps))
    _, reference = run_trajectory(Simulator(kws.image, SimulatorOptions("exact")), inputs)
    teacher, forced_run = run_trajectory(simulator, inputs, reference)
    assert not np.array_equal(teacher["logits"], free["logits"])  # teacher forcing does change an ideal run
    # Step 1 of the forced run started from the exact run's state, not its own: it yields what the free run did not.
    assert not np.array_equal(forced_run.runs[0].steps[1][0], trajectory.runs[0].steps[1][0])


def test_ideal_per_step_bound_is_not_vacuous(kws: cimc.CompiledModel, inputs: dict) -> None:
    """At ideal every per-step element is within its bound, and the bound (relative RMS) is within 8x the measured
    error (measured: about 4.7x on h, 6.5x on c, 9.5x on the logits; the free-running bound is 55x)."""
    report = cimc.verify(KWS, kws, inputs=inputs, fidelity="ideal")
    assert report.passed, report.table()
    assert report.steps and report.outputs_informational
    loops = [o for o in report.steps if "carried" in o.name]
    assert len(loops) == 2
    for o in loops:
        assert 0 < o.relative and o.bound_relative < 8 * o.relative, report.table()
    free = report.outputs[0]
    assert free.bound_relative > 1.0  # the compounding bound on 49 steps: why it is informational only


def test_noisy_bound_covers_the_stuck_devices_it_counts(kws: cimc.CompiledModel, inputs: dict) -> None:
    """Default hardware, chip 2: ~110 stuck devices on used weights move the carried state of the teacher-forced
    run beyond the bound that leaves stuck devices out (programming and read noise only), and within the bound
    that counts them (error_bound.FaultModel: at most k per column at confidence 1 - 1e-3)."""
    from dataclasses import replace

    from cimc.error_bound import Sources, step_bounds

    image = kws.image
    _, reference = run_trajectory(Simulator(image, SimulatorOptions("exact")), inputs)
    _, forced = run_trajectory(Simulator(image, SimulatorOptions("noisy", 2)), inputs, reference)
    sources = Sources.for_fidelity("noisy", image, 6.0)
    assert sources.faults is not None and sources.faults.count(146) >= 3
    over = {}
    for name, src in (("noise only", replace(sources, faults=None)), ("with faults", sources)):
        bounds = step_bounds(image, inputs, src)
        over[name] = sum(int((np.abs(got - want) > b).sum())
                         for run, loop_bounds in zip(forced.runs, bounds.loops)
                         for step, want_step, step_bounds_ in zip(run.steps, reference.runs[run.index].steps, loop_bounds)
                         for got, want, b in zip(step, want_step, step_bounds_))
    assert over["noise only"] > 0 and over["with faults"] == 0, over


def test_noisy_verify_of_a_defect_aware_image_on_its_own_chip(cimc_cli, tmp_path: Path) -> None:
    """cimc chip + compile --defects + verify --defects on chip 2 passes, and the printed tolerance says that the
    measured stuck devices are counted exactly and none is left to chance; the measurement of another chip is
    refused (exit 2)."""
    common = ["--calib", str(EXAMPLES / "kws" / "calib.npz")]
    assert cimc_cli("compile", str(KWS), *common, "-o", "kws.cimg", cwd=tmp_path).returncode == 0
    assert cimc_cli("chip", "kws.cimg", "--seed", "2", "-o", "m2.npz", cwd=tmp_path).returncode == 0
    assert cimc_cli("compile", str(KWS), *common, "--defects", "m2.npz", "-o", "aware.cimg", cwd=tmp_path).returncode == 0
    verify = ["verify", str(KWS), "aware.cimg", "--inputs", str(EXAMPLES / "kws" / "verify_inputs.npz"), "--fidelity",
              "noisy", "--defects", "m2.npz"]
    ok = cimc_cli(*verify, "--seed", "2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "stuck devices of the measured chip 2" in ok.stdout and "at most 0 per column" in ok.stdout
    other = cimc_cli(*verify, "--seed", "3", cwd=tmp_path)
    assert other.returncode == 2 and "the measurement is of chip 2, but verify runs chip 3" in other.stderr


def test_tail_sigmas_is_the_union_bound() -> None:
    """P(|N(0,1)| > 3) = 0.0027 (closed form erfc(3 / sqrt 2)); a million draws at false-alarm 1e-3 need P = 1e-9 each,
    i.e. 6.11 sigma."""
    assert abs(tail_sigmas(1, 0.0026998) - 3.0) < 1e-3
    assert abs(tail_sigmas(1_000_000, 1e-3) - 6.109) < 1e-2
    assert tail_sigmas(10, 1e-3) < tail_sigmas(1000, 1e-3)


def test_verify_json_carries_the_per_step_rows(kws: cimc.CompiledModel, inputs: dict) -> None:
    report = json.loads(cimc.verify(KWS, kws, inputs=inputs, fidelity="ideal").to_json())
    assert report["passed"] and report["outputs_informational"]
    assert {r["name"] for r in report["onnx_steps"]} == {"/lstm/LSTM h", "/lstm/LSTM c"}
    assert any(r["name"] == "/lstm/LSTM carried #0" for r in report["steps"]) and report["exact"][0]["passed"]


def test_verify_labels_reports_accuracy_and_bits_against_the_labels(cimc_cli, tmp_path: Path) -> None:
    """--labels y on 40 KWS clips with their labels: the onnxruntime row's accuracy and bits per label are the closed
    forms computed here from onnxruntime's logits; both rows are in --json; a missing key is refused (exit 2)."""
    import onnxruntime as ort

    from cimc.npz import npz_bytes

    data = np.load(EXAMPLES / "kws" / "eval_set.npz")
    x, y = data["features"][:, :40], data["y"][:40]
    (tmp_path / "labelled.npz").write_bytes(npz_bytes({"features": x, "y": y}))
    assert cimc_cli("compile", str(KWS), "--calib", str(EXAMPLES / "kws" / "calib.npz"), "-o", "kws.cimg",
                    cwd=tmp_path).returncode == 0
    done = cimc_cli("verify", str(KWS), "kws.cimg", "--inputs", "labelled.npz", "--labels", "y", "--fidelity", "ideal",
                    "--json", "r.json", cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    logits = ort.InferenceSession(str(KWS), providers=["CPUExecutionProvider"]).run(None, {"features": x})[0]
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    bits = float(-(z[np.arange(40), y] - np.log(np.exp(z).sum(-1))).mean() / np.log(2))
    report = json.loads((tmp_path / "r.json").read_text())["labels"]
    assert report["onnxruntime"]["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).mean()))
    assert report["onnxruntime"]["bits"] == pytest.approx(bits, rel=1e-6)
    assert report["simulator"]["count"] == 40 and 0.5 < report["simulator"]["accuracy"] <= 1.0
    assert "labels (simulator): output 'logits' against 40 labels" in done.stdout
    bad = cimc_cli("verify", str(KWS), "kws.cimg", "--inputs", "labelled.npz", "--labels", "z", cwd=tmp_path)
    assert bad.returncode == 2 and "no array 'z' to take labels from" in bad.stderr
    api = cimc.verify(KWS, tmp_path / "kws.cimg", {"features": x}, fidelity="ideal", labels=y)
    assert api.labels == report  # the Python API scores as the CLI does


def _gru_softmax(path: Path, head_scale: float, hidden: int = 32, features: int = 8, classes: int = 5) -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((1, 3 * hidden, features)) / np.sqrt(features)).astype(np.float32)
    r = (rng.standard_normal((1, 3 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    head = (head_scale * rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("GRU", ["x", "W", "R"], ["y", "h"], hidden_size=hidden, linear_before_reset=1),
             helper.make_node("Squeeze", ["h", "axis"], ["last"]),
             helper.make_node("MatMul", ["last", "head"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", features])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(a, n) for n, a in (("W", w), ("R", r), ("head", head),
                                                                          ("axis", np.array([0], np.int64)))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_softmax_bound_stays_finite_when_its_logits_bound_is_large(tmp_path: Path) -> None:
    """The free-running bound on a GRU's logits compounds over 20 steps; with large head weights s (e^E - 1) overflows.
    Both softmaxes lie in [0, 1], so each element's bound is at most max(s, 1 - s) (plus rounding): with 5 classes a
    row's RMS is at least 1/5, so the bound's RMS relative to the output's is at most 5 (it was infinite)."""
    model = tmp_path / "gru_softmax.onnx"
    _gru_softmax(model, head_scale=10.0)
    report = cimc.verify(model, cimc.compile(model), fidelity="ideal")
    assert report.passed, report.table()
    for row in (report.exact[0], report.outputs[0]):
        assert np.isfinite(row.bound_relative) and row.bound_relative <= 5 * (1 + 1e-6), row
