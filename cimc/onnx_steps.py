"""onnxruntime's result of single steps of a recurrent ONNX node, started from given states.

Why: per-step verification at ``exact`` fidelity needs an independent
reference for each step, and onnxruntime runs an LSTM/GRU/RNN node as one
opaque op over the whole sequence. But one step of the node from a given
state is the node itself over a sequence of length 1. So every step of the
sequence becomes one entry of a batch of T * B: entry (tau, b) has the input
X[tau, b] and, per direction, the state the simulator carried into the step
that consumes X[tau] (step tau forward, step T-1-tau in reverse). One
onnxruntime run of the node with those initial states gives every step's
teacher-forced result; Y_h (and Y_c) are compared with what the simulator's
loop yielded at that step.

Covered: LSTM, GRU and RNN nodes of the main graph, every direction and
layout; with ``sequence_lens`` the entries past a sequence's length are not
compared (the loop keeps its state there, onnxruntime is given length 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from cimc.diagnostics import CimcError
from cimc.error_bound import StepBounds
from cimc.stepwise import LoopRun, Trajectory

RECURRENT = ("LSTM", "GRU", "RNN")


@dataclass
class NodeSteps:
    """What :func:`step_results` needs of one recurrent node."""

    node: onnx.NodeProto
    inputs: dict[int, np.ndarray]  # operand index -> value (X, W, R, B, sequence_lens, P as the full model computes them)


def recurrent_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Recurrent nodes of the main graph by node name (the location suffix the importer gives their loops)."""
    return {n.name or f"{n.op_type}_{i}": n for i, n in enumerate(model.graph.node) if n.op_type in RECURRENT}


def operand_names(node: onnx.NodeProto) -> list[str]:
    """The node's tensor operands whose values the step model needs (not the initial states it is given)."""
    return [name for i, name in enumerate(node.input) if name and i not in (5, 6)]


def step_results(steps: NodeSteps, states: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Per direction d, per state k (h, then c for LSTM): onnxruntime's result of every step, [T, B, H] in loop-step order.

    ``states[d][k]`` is [T, B, H]: the state direction d's loop carried into its step s (s = 0 .. T-1).
    """
    node = steps.node
    attrs = {a.name: _plain(helper.get_attribute_value(a)) for a in node.attribute}
    layout = int(attrs.pop("layout", 0))  # the step model is built in layout 0
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[str(attrs.get("direction", "forward"))]
    x = steps.inputs[0] if layout == 0 else np.swapaxes(steps.inputs[0], 0, 1)
    t, b = x.shape[:2]
    n_states = 2 if node.op_type == "LSTM" else 1
    feeds: dict[str, np.ndarray] = {"X": x.reshape(1, t * b, -1)}
    inputs = ["X"] + [""] * (7 if n_states == 2 else 5)
    for i, name in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        if i in steps.inputs and i < len(inputs):
            inputs[i], feeds[name] = name, steps.inputs[i]
    for k, name in enumerate(("initial_h", "initial_c")[:n_states]):
        # Entry (tau, b): direction d starts from the state its loop carried into the step that consumes X[tau].
        per_dir = [(states[d][k][::-1] if rev else states[d][k]).reshape(t * b, -1) for d, rev in enumerate(reverse)]
        inputs[5 + k], feeds[name] = name, np.stack(per_dir).astype(x.dtype)
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["", "Y_h"] + (["Y_c"] if n_states == 2 else [])
    dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(
        [helper.make_node(node.op_type, inputs, outputs, **attrs)], "step",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info(n, dtype, None) for n in outputs if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results = session.run(None, feeds)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types)
        raise CimcError(f"onnxruntime cannot run one step of '{node.name or node.op_type}': {str(e).splitlines()[0]}") from None
    return [[results[k][d].reshape(t, b, -1)[::-1 if rev else 1] for k in range(n_states)] for d, rev in enumerate(reverse)]


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def initializer_values(model: onnx.ModelProto) -> Mapping[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def per_step_against_onnxruntime(model: onnx.ModelProto, values: Mapping[str, np.ndarray], trajectory: Trajectory,
                                 bounds: StepBounds) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, the simulator's state after every step, onnxruntime's from the same state, the per-step bound).

    ``trajectory`` is the simulator's recorded run, ``bounds`` the teacher-forced
    bounds of the same fidelity (both sides start each step from the very same
    state, so the bound covers one step); ``values`` holds the node operands as
    the full model computes them (onnxruntime's extra outputs). Loops whose node
    is not a main-graph LSTM/GRU/RNN, or whose operands are missing, are left out.
    """
    nodes = recurrent_nodes(model)
    known = {**initializer_values(model), **values}
    loops: dict[str, list[LoopRun]] = {}
    for run in trajectory.runs:
        name = next((n for n in nodes if str(run.loop.location or "").endswith(":" + n)), None)
        if name is not None:
            loops.setdefault(name, []).append(run)
    rows = []
    for name, runs in loops.items():
        node = nodes[name]
        if any(n not in known for n in operand_names(node)):
            continue
        runs = sorted(runs, key=_is_reverse)  # forward direction first, as in ONNX
        if len(runs) != (2 if _direction(node) == "bidirectional" else 1) or not runs[0].steps:
            continue
        steps = NodeSteps(node, {i: known[n] for i, n in enumerate(node.input) if n and i not in (5, 6)})
        states = [[np.stack([e[k] for e in run.entering]) for k in range(run.n_carried)] for run in runs]
        onnx_steps = step_results(steps, states)
        for d, run in enumerate(runs):
            trip = len(run.steps)
            valid = np.ones((trip, run.steps[0][0].shape[0]), bool)
            if 4 in steps.inputs:
                tau = np.arange(trip)[::-1] if _is_reverse(run) else np.arange(trip)
                valid = tau[:, None] < steps.inputs[4].astype(np.int64)[None, :]
            for k in range(run.n_carried):
                got = np.stack([s[k] for s in run.steps])[valid]
                bound = np.stack([s[k] for s in bounds.loops[run.index]])[valid]
                label = f"{name} {'hc'[k]}{' (reverse)' if _is_reverse(run) and len(runs) > 1 else ''}"
                rows.append((label, got.ravel(), onnx_steps[d][k][valid].ravel(), bound.ravel()))
    return rows


def _direction(node: onnx.NodeProto) -> str:
    return next((str(_plain(helper.get_attribute_value(a))) for a in node.attribute if a.name == "direction"), "forward")


def _is_reverse(run: LoopRun) -> bool:
    """decompose-rnn's reverse loop indexes its input by T-1-s: an onnx.Sub of the step counter."""
    body = run.loop.regions[0].block
    return any(op.name == "onnx.Sub" and body.args[0] in op.operands for op in body.ops)
