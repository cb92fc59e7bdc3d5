"""Saturation counters against hand-built cases whose counts follow from the weights and inputs.

Both models have the same weights: W = 0.5 [[1, 1], [1, -1], [-1, 1], [-1, -1]] (4 inputs, 2 columns),
bias [0.1, -0.2], calibrated on four inputs of magnitude 0.1 with the sign patterns of W's columns, so
column 0 spans exactly [-0.1, 0.3] and column 1 [-0.4, 0.0]; the DAC full scale is 1 (the bias row's 1 is
the largest calibrated input). The test inputs (rows of a batch) are then

    x               DAC-clipped   z0 = 0.1 + 0.5 (x0 + x1 - x2 - x3)   z1 = -0.2 + 0.5 (x0 - x1 + x2 - x3)
    [ 1, 1,-1,-1]   0             2.1  beyond 0.3                       -0.2 inside
    [ 0, 0, 0, 0]   0             0.1  inside                           -0.2 inside
    [ 2, 2, 0, 0]   2 (to 1)      1.1  beyond                           -0.2 inside
    [-3, 0, 0, 3]   2 (to -1, 1)  -0.9 beyond -0.1                      -1.2 beyond -0.4

so 4 of the 4 x 5 DAC inputs (4 rows and the bias row) clip and 4 of the 8 column values lie beyond their
range, each by far more than a converter step (the margins, >= 0.5, dwarf the quantization of the ideal
fidelity's levels, so the counts are exact, not statistical).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.backends.saturation import SaturationCounts
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.image import load_image
from cimc.ir import Operation
from cimc.npz import load_npz, npz_bytes

W = 0.5 * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
BIAS = np.array([0.1, -0.2], np.float32)
CALIB = 0.1 * np.array([[1, 1, -1, -1], [-1, -1, 1, 1], [1, -1, 1, -1], [-1, 1, -1, 1]], np.float32)
INPUTS = np.array([[1, 1, -1, -1], [0, 0, 0, 0], [2, 2, 0, 0], [-3, 0, 0, 3]], np.float32)


def matmul_model() -> onnx.ModelProto:
    """y = x W + b: one MVM, read out by linear ADCs."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def rnn_model() -> onnx.ModelProto:
    """h = tanh(W x + R h + b) over one step from h0 = 0 (R h = 0): z = x W + b, read out by a tanh NL-ADC."""
    R = np.array([[[0.3, -0.2], [0.1, 0.4]]], np.float32)
    node = helper.make_node("RNN", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=2, name="rnn")
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", 4])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", 2])],
                              [numpy_helper.from_array(W.T[None], "W"), numpy_helper.from_array(R, "R"),
                               numpy_helper.from_array(np.concatenate([BIAS, np.zeros(2, np.float32)])[None], "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def compiled(cimc_cli, tmp_path: Path, model: onnx.ModelProto, name: str, feeds: np.ndarray, calib: np.ndarray) -> tuple[Path, Path]:  # noqa: ANN001
    onnx.save(model, tmp_path / f"{name}.onnx")
    key = model.graph.input[0].name
    (tmp_path / "calib.npz").write_bytes(npz_bytes({key: calib}))
    (tmp_path / "in.npz").write_bytes(npz_bytes({key: feeds}))
    result = cimc_cli("compile", f"{name}.onnx", "--calib", "calib.npz", "-o", f"{name}.cimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / f"{name}.onnx", tmp_path / f"{name}.cimg"


def test_linear_adc_and_dac_counts(cimc_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """DAC: 8 of 20 clipped; linear ADC: the 4 beyond-range values sit at the rails and are clipped, nothing else is."""
    model, image = compiled(cimc_cli, tmp_path, matmul_model(), "mm", INPUTS, CALIB)
    verify = cimc_cli("verify", str(model), str(image), "--inputs", "in.npz", "--fidelity", "ideal", "--json", "r.json", cwd=tmp_path)
    total = json.loads((tmp_path / "r.json").read_text())["saturation"]["total"]
    assert (total["dac_inputs"], total["dac_clipped"]) == (20, 8)
    assert (total["adc_codes"], total["adc_rail"], total["adc_clipped"]) == (8, 4, 4)
    assert (total["nl_adc_codes"], total["nl_adc_beyond"]) == (0, 0)
    assert "saturation per layer" in verify.stdout and "8 (40.0%)" in verify.stdout and "4 (50.0%)" in verify.stdout
    run = cimc_cli("run", str(image), "--inputs", "in.npz", "-o", "out.npz", "--fidelity", "ideal", cwd=tmp_path)
    assert run.returncode == 0
    assert "saturation: DAC 8 of 20 (40.00%) inputs clipped; linear ADC 4 of 8 (50.00%) codes clipped (4 at the rails)" in run.stdout
    assert set(load_npz(tmp_path / "out.npz")) == {"y"}  # the output file holds the model's outputs only


def test_nl_adc_counts(cimc_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """The tanh ramp spans [-0.4, 0.3] (both columns share it); the values beyond it are where tanh still changes.

    DAC: the rows are [x; h; 1], 7 per input, 28 in all, 8 clipped (h = 0 and the bias row never clip).
    """
    model, image = compiled(cimc_cli, tmp_path, rnn_model(), "rnn", INPUTS[None], CALIB[None])
    ramps = load_image(image).manifest["ramps"]
    assert len(ramps) == 1 and (ramps[0]["z_lo"], ramps[0]["z_hi"]) == pytest.approx((-0.4, 0.3), abs=1e-6)
    cimc_cli("verify", str(model), str(image), "--inputs", "in.npz", "--fidelity", "ideal", "--json", "r.json", cwd=tmp_path)
    total = json.loads((tmp_path / "r.json").read_text())["saturation"]["total"]
    assert (total["dac_inputs"], total["dac_clipped"]) == (28, 8)
    # The column values the comparators see are those of the DAC-clipped inputs: x within the x segment's full scale.
    tile = next(op for op in load_image(image).program().walk() if op.name == "cim.tile_mvm")
    full_scale = float(tile.attributes["input_scale"]) * tile.attributes["row_scale"].array[:4]  # type: ignore[union-attr, arg-type]
    z = np.clip(INPUTS, -full_scale, full_scale) @ W + BIAS
    beyond = int(((z < -0.4 - 1e-6) | (z > 0.3 + 1e-6)).sum())
    assert beyond >= 1 and (total["nl_adc_codes"], total["nl_adc_beyond"], total["nl_adc_clipped"]) == (8, beyond, beyond)
    assert total["adc_codes"] == 0


def test_counting_does_not_change_outputs(cimc_cli, tmp_path: Path) -> None:  # noqa: ANN001
    _, image = compiled(cimc_cli, tmp_path, rnn_model(), "rnn", INPUTS[None], CALIB[None])
    loaded = load_image(image)
    for fidelity in ("ideal", "noisy"):
        plain = Simulator(loaded, SimulatorOptions(fidelity, seed=1))
        counted = Simulator(loaded, SimulatorOptions(fidelity, seed=1, counters=True))
        assert plain.saturation is None and counted.saturation is not None
        a, b = plain.run({"X": INPUTS[None]}), counted.run({"X": INPUTS[None]})
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert Simulator(loaded, SimulatorOptions("exact", counters=True)).saturation is None  # no converters to count


def test_saturating_tail_is_beyond_but_not_clipped() -> None:
    """Far out, sigmoid's end code is right: counted as beyond the range, not as clipped, unless f still changes.

    Range [-6, 6], 5 bits: output levels sigmoid(-6) .. sigmoid(6), LSB = (0.99753 - 0.00247) / 31 = 0.0321.
    z = +-7 and +-20 differ from the edge by at most 1 - sigmoid(6) = 0.0025 < LSB / 2; against a range
    [-6, 1], z = 3 differs by sigmoid(3) - sigmoid(1) = 0.222 > LSB / 2.
    """
    op = Operation("cim.nl_adc", attributes={"function": "Sigmoid"})
    tile = Operation("cim.tile_mvm", attributes={"block": "b"})
    levels = 1 / (1 + np.exp(-np.linspace(-6, 6, 32)))
    counts = SaturationCounts()
    counts.nl_adc(tile, op, np.array([-20, -7, 0, 5.9, 7, 20], np.float32), -6.0, 6.0, levels)
    counts.nl_adc(tile, op, np.array([3, 0.5], np.float32), -6.0, 1.0, levels)
    layer = counts.layers["b"]
    assert (layer.nl_adc_codes, layer.nl_adc_beyond, layer.nl_adc_clipped) == (8, 5, 1)


def test_rail_codes_at_the_range_edge_are_not_clipped() -> None:
    """A value at the very edge of its range lands on the end code legitimately; only beyond half a step is it clipped.

    Range [0, 1], 2 bits (3 steps, half a step = 1/6): z = 0 and 1 are rails, z = 1.1 (< 1 + 1/6) a rail but
    within half a step, z = 1.2 and -0.5 rails and clipped.
    """
    tile = Operation("cim.tile_mvm", attributes={"block": "b"})
    z = np.array([0.0, 0.5, 1.0, 1.1, 1.2, -0.5])
    steps = 3
    code = np.clip(np.rint(z * steps), 0, steps)
    counts = SaturationCounts()
    counts.adc(tile, z, code, steps, np.zeros(1), np.ones(1))
    layer = counts.layers["b"]
    assert (layer.adc_codes, layer.adc_rail, layer.adc_clipped) == (6, 5, 2)
    counts.dac(tile, np.array([[0.5, -1.0, 1.5, -2.0]]), 1.0)
    assert (layer.dac_inputs, layer.dac_clipped) == (4, 2)
    assert counts.total().clipped == 4


def test_identity_columns_clip_where_the_code_no_longer_changes() -> None:
    """An identity tile's DAC full scale is its activation's informative range (fuse-activation sets it there): an
    input beyond it reads the end code the ramp gives anyway, so it counts as a DAC input, not as clipped; the same
    inputs into a weight tile clip. Whether the code is right is the NL-ADC counters' call (nl_adc_beyond/clipped)."""
    weights = Operation("cim.tile_mvm", attributes={"block": "gates"})
    identity = Operation("cim.tile_mvm", attributes={"block": "cell.identity"})
    counts = SaturationCounts()
    x = np.array([[0.5, -3.0, 2.7, -27.0]])
    counts.dac(weights, x, 2.6)
    counts.dac(identity, x, 2.6)
    assert [(layer.dac_inputs, layer.dac_clipped) for layer in counts.layers.values()] == [(4, 3), (4, 0)]
