"""Standalone activations after an MVM (Gemm, MatMul + Add, Conv) become NL-ADCs, checked against onnxruntime.

exact fidelity: the NL-ADC is the activation itself, so the compiled model must equal
onnxruntime up to float32 rounding (rtol 1e-5, atol 1e-6: one product of 17 terms
reassociated differs by a few ulp).

ideal fidelity, derived bound per output element (sample n, column j):

    |y_hat - f(z)| <= D (0.5 + INL_max) + L_f * dz_nj

- D (0.5 + INL_max): the NL-ADC on its realized column value. The ideal N-bit quantizer
  of f is off by at most D/2; a realized threshold T^_k off its ideal T_k changes the code
  only for z between them, where the output is off by at most D/2 + |f(T^_k) - f(T_k)|.
  T^_k is read from the image's ramp devices (offset + cumulative step conductances) over
  the ramp's a * g_per_z, T_k is the closed form (logit, atanh, identity).
- L_f dz: f is L_f-Lipschitz (sigmoid 1/4, tanh 1, relu 1), and the realized column value
  differs from the exact one by dz_nj = |x_n . (w^_j - w_j)| + (s / (2 (2^(b-1) - 1))) ||w^_j||_1:
  the first term is exact (the programmed weights w^ = (G+ - G-) / g_scale from the image's
  device levels, against the ONNX weights), the second bounds the DAC rounding of every row
  (b = dac_bits over the input scale s; the bias row's 1 included) through the programmed
  weights.
Outside the conversion range the code saturates, which the same bound covers (f moves by
at most L_f dz from the range end). Compiled with the test inputs as calibration data, so
every exact z lies inside the range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.image import tile_levels

RNG_SEED = 7
FUNCTIONS = {  # ONNX op: attributes, Lipschitz constant, f, closed-form inverse (for the ideal thresholds)
    "Sigmoid": ({}, 0.25, lambda z: 1 / (1 + np.exp(-z)), lambda y: np.log(y) - np.log1p(-y)),
    "Tanh": ({}, 1.0, np.tanh, np.arctanh),
    "Relu": ({}, 1.0, lambda z: np.maximum(z, 0), lambda y: y),
}


def _model(path: Path, op: str, attrs: dict, kind: str, extra_inputs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gemm (with bias) or a kernel-1 Conv1d (with bias), then ``op``; returns the weights [rows, cols] with the bias row."""
    rng = np.random.default_rng(RNG_SEED)
    w = rng.normal(0, 0.6, (16, 8)).astype(np.float32)
    b = rng.normal(0, 0.3, 8).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b")] + list(extra_inputs or [])
    tail = [n.name for n in (extra_inputs or [])]
    if kind == "gemm":
        inits.append(numpy_helper.from_array(w, "W"))
        nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"])]
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
        y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    else:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T[:, :, None]), "W"))
        nodes = [helper.make_node("Conv", ["x", "W", "b"], ["z"], kernel_shape=[1])]
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 6])
        y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6])
    nodes.append(helper.make_node(op, ["z", *tail], ["y"], **attrs))
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w, b


def _inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED + 1)
    return rng.normal(0, 1, (48, 16) if kind == "gemm" else (8, 16, 6)).astype(np.float32)


def _compile(tmp_path: Path, op: str, kind: str, attrs: dict | None = None, extra: list | None = None):
    path = tmp_path / f"{kind}_{op}.onnx"
    w, b = _model(path, op, attrs or {}, kind, extra)
    x = _inputs(kind)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x)
    model = cimc.compile(path, calib=calib)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, x, w, b, sess.run(None, {"x": x})[0]


def _rows(kind: str, x: np.ndarray) -> np.ndarray:
    """Each output element's MVM input row [x; 1], shaped like the output with the rows last."""
    rows = x if kind == "gemm" else np.moveaxis(x, 1, -1)  # kernel-1 Conv: the channels of one position
    return np.concatenate([rows, np.ones((*rows.shape[:-1], 1), rows.dtype)], -1).astype(np.float64)


def _bound(model: cimc.CompiledModel, kind: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, lipschitz: float,
           f, inverse) -> np.ndarray:  # noqa: ANN001
    image, hw = model.image, model.image.hardware
    d = hw.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    (tile,) = [op for op in image.program().walk() if op.name == "cim.tile_mvm"]
    (ramp,) = image.manifest["ramps"]
    lv_pos, lv_neg = tile_levels(image, tile)
    level_g = lambda lv: np.where(lv >= 0, d.g_min_us + lv * delta_g, 0.0)  # noqa: E731
    w_hat = (level_g(lv_pos) - level_g(lv_neg)) / tile.attributes["g_scale"].array
    rows = _rows(kind, x)
    weight_error = np.abs(rows @ (w_hat - np.concatenate([w, b[None]])))
    s = float(tile.attributes["input_scale"])
    dac = s / (2 * ((1 << (hw.converters.dac_bits - 1)) - 1)) * np.abs(w_hat).sum(0)
    dz = weight_error + dac
    # Realized thresholds from the ramp column's devices, ideal ones from the closed form.
    level = image.device_levels(ramp["array"])
    column = level_g(level[:, ramp["bit_line"]])
    cal0, cal1 = ramp["calibration_rows"]
    bounds = np.cumsum([0] + ramp["step_devices"])
    steps = np.array([column[bounds[i]:bounds[i + 1]].sum() for i in range(len(ramp["step_devices"]))])
    realized = (ramp["offset_sign"] * column[cal0:cal1].sum() + np.cumsum(steps)) / (ramp["gain"] * ramp["g_per_z"])
    y = np.asarray(ramp["output_levels"])
    lsb = abs(y[1] - y[0])
    ideal_t = inverse((y[:-1] + y[1:]) / 2)
    inl = np.abs(f(realized) - f(ideal_t)).max() / lsb
    out = lsb * (0.5 + inl) + lipschitz * dz
    return out if kind == "gemm" else np.moveaxis(out, -1, 1)


@pytest.mark.parametrize(("op", "kind"), [("Sigmoid", "gemm"), ("Tanh", "gemm"), ("Relu", "conv")])
def test_activation_after_an_mvm_is_fused_and_within_its_bound(tmp_path: Path, op: str, kind: str) -> None:
    attrs, lipschitz, f, inverse = FUNCTIONS[op]
    model, x, w, b, expected = _compile(tmp_path, op, kind, attrs)
    program = model.image.program()
    assert int(program.attributes["fuse.activations"]) == 1
    assert not [o for o in program.walk() if o.name == "cim.activation"]
    (ramp,) = model.image.manifest["ramps"]
    assert ramp["function"] == op and ramp["inl_lsb"] <= 1.0
    exact = model.run({"x": x}, fidelity="exact")["y"]
    np.testing.assert_allclose(exact, expected, rtol=1e-5, atol=1e-6)
    ideal = model.run({"x": x}, fidelity="ideal")["y"]
    error = np.abs(ideal.astype(np.float64) - expected)
    bound = _bound(model, kind, x, w, b, lipschitz, f, inverse)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert (error <= bound + 1e-6).all(), f"error {error[worst]:.4g} > bound {bound[worst]:.4g} at {worst}"
    assert error.max() > 0  # the ideal run did quantize


@pytest.mark.parametrize(("op", "attrs", "clip"), [
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, None), ("Softsign", {}, None), ("LeakyRelu", {"alpha": 0.2}, None),
    ("Elu", {}, None), ("Softplus", {}, None), ("Clip", {}, (0.0, 1.5)), ("Clip", {}, (-1.0, 1.0)),
])
def test_every_monotonic_activation_fuses_and_is_exact(tmp_path: Path, op: str, attrs: dict, clip) -> None:  # noqa: ANN001
    extra = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in zip(("lo", "hi"), clip)] if clip else None
    model, x, _, _, expected = _compile(tmp_path, op, "gemm", attrs, extra)
    assert int(model.image.program().attributes["fuse.activations"]) == 1
    np.testing.assert_allclose(model.run({"x": x}, fidelity="exact")["y"], expected, rtol=1e-5, atol=1e-6)
    ideal = model.run({"x": x}, fidelity="ideal")["y"]
    (ramp,) = model.image.manifest["ramps"]
    lsb = abs(ramp["output_levels"][1] - ramp["output_levels"][0])
    # A coarse sanity bound (the derived one is above, for sigmoid/tanh/relu): a few LSB.
    assert np.abs(ideal - expected).max() <= 4 * lsb


def test_asymmetric_clip_stays_digital_and_is_exact(tmp_path: Path) -> None:
    extra = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", -0.5), ("hi", 2.0))]
    model, x, _, _, expected = _compile(tmp_path, "Clip", "gemm", {}, extra)
    program = model.image.program()
    assert int(program.attributes["fuse.activations"]) == 0
    assert [o.name for o in program.walk() if o.name == "onnx.Clip"] == ["onnx.Clip"]
    np.testing.assert_allclose(model.run({"x": x}, fidelity="exact")["y"], expected, rtol=1e-5, atol=1e-6)


def test_ratiometric_with_a_ramp_gain(tmp_path: Path) -> None:
    """Column and ramp are read at one Vread; the gain is a fixed ratio, so the NL-ADC codes do not move with Vread."""
    model, x, *_ = _compile(tmp_path, "Sigmoid", "gemm")
    nominal = model.run({"x": x}, fidelity="ideal")["y"]
    for scale in (0.75, 1.25):
        np.testing.assert_array_equal(model.run({"x": x}, fidelity="ideal", vread_scale=scale)["y"], nominal)


@pytest.mark.parametrize(("op", "kind"), [("Tanh", "gemm"), ("Relu", "conv")])
def test_noisy_recalibration_uses_the_ramp_gain(tmp_path: Path, op: str, kind: str) -> None:
    """After programming noise, each ramp's calibration devices absorb its median level error.

    The levels live on the ramp's side of the mirror, at a * g_per_z per unit of z, so the
    recalibrated realized thresholds times a * g_per_z must sit within the calibration devices'
    resolution (dG/2, one level of their nearest achievable sum) of the targets in the median.
    Programming noise is 1 uS per device, so an uncorrected 33-device ramp is off by far more.
    Relu's thresholds are all positive, so a recalibration that ignored the gain would be off
    by (a - 1) g median(T).
    """
    from cimc.backends.simulator import Simulator, SimulatorOptions

    model, *_ = _compile(tmp_path, op, kind)
    (ramp,) = model.image.manifest["ramps"]
    assert ramp["gain"] != 1.0  # the case where forgetting the gain would show
    d = model.image.hardware.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    targets = ramp["gain"] * ramp["g_per_z"] * np.asarray(ramp["thresholds"])
    checked = 0
    for seed in range(10):
        sim = Simulator(model.image, SimulatorOptions("noisy", seed))
        if sim.stuck[ramp["array"]][:, ramp["bit_line"]].any():
            continue  # a stuck ramp device is an error of up to G_max, beyond what the calibration devices may reach
        levels = sim.realized_thresholds(ramp["id"]) * ramp["gain"] * ramp["g_per_z"]
        assert abs(np.median(levels - targets)) <= delta_g / 2 + 1e-9
        checked += 1
    assert checked >= 3


def test_image_programs_the_ramp_fuse_activation_recorded(tmp_path: Path) -> None:
    """build_image takes the ramp devices from the cim.ramp op (no second synthesis): a level changed on the op
    is the level programmed, and the manifest carries the op's gain."""
    from cimc.compiler import CompileOptions, compile_to_ir
    from cimc.hardware import load_hardware
    from cimc.compiler import build_image

    path = tmp_path / "m.onnx"
    _model(path, "Sigmoid", {}, "gemm")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_inputs("gemm"))
    hw = load_hardware()
    module = compile_to_ir(path, hw, CompileOptions(calib=str(calib)))
    (op,) = [o for o in module.walk() if o.name == "cim.ramp"]
    levels = list(op.attributes["device_levels"])
    levels[0] = (levels[0] + 7) % hw.device.levels
    op.attributes["device_levels"] = tuple(levels)
    image = build_image(module, hw)
    (ramp,) = image.manifest["ramps"]
    assert image.device_levels(ramp["array"])[0, ramp["bit_line"]] == levels[0]
    assert ramp["gain"] == op.attributes["gain"]
