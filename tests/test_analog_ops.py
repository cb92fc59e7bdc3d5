"""Closed-form tests of one analog op at a time, through the public path.

Each case is an ONNX model made with ``onnx.helper``, compiled by
``cimc.compile`` (the default pipeline, calibrated on the test inputs) and run
by the Simulator at ``ideal`` fidelity. The expected values are computed here
with numpy from the ONNX weights and the closed-form definitions of the
converters (docs: README "The programming image and the simulator"):

- the input DAC with full scale S and b bits maps x to
  ``round(clip(x/S, -1, 1) * L) / L * S`` with L = 2^(b-1) - 1 (step δ = S/L);
- a linear ADC with n bits over a column range [lo, hi] returns
  ``lo + k Δ`` with ``k = clip(round((z - lo)/Δ), 0, 2^n - 1)``, Δ = (hi-lo)/(2^n-1);
- an N-bit NL-ADC over [z_lo, z_hi] returns ``y_0 + k D`` with y_0 = f(z_lo),
  D = (f(z_hi) - f(z_lo))/(2^N - 1), k the code of the uniform quantizer of f(z).

What the test reads from the image are the converter *settings* the compiler
chose (DAC full scale, column ranges, column conductance scales, ramp range and
g per unit of z), never a value the simulator computed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.hardware import Hardware, hardware_from_dict, load_hardware
from cimc.npz import npz_bytes

F32_EPS = float(np.finfo(np.float32).eps)


def hardware(**changes: dict) -> Hardware:
    """The default hardware with some sections' keys replaced."""
    data = copy.deepcopy(load_hardware().to_dict())
    for section, values in changes.items():
        data[section].update(values)
    return hardware_from_dict(data, "test hardware")


def compile_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], hw: Hardware, tmp_path: Path) -> cimc.CompiledModel:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(model, path)
    calib.write_bytes(npz_bytes(feeds))
    return cimc.compile(path, hw=hw, calib=calib)


def tiles(compiled: cimc.CompiledModel) -> list:
    return [op for op in compiled.image.program().walk() if op.name == "cim.tile_mvm"]


def row_scale(tile, rows: int) -> np.ndarray:  # noqa: ANN001
    """Each row's fraction r_i of the reference DAC full scale (per input segment; 1 where none is recorded)."""
    value = tile.attributes.get("row_scale")
    return np.ones(rows) if value is None else np.asarray(value.array, dtype=np.float64)


def input_scale(tile, rows: int) -> np.ndarray:
    """The DAC full scale of every input row: s_ref r_i (the crossbar stores w_i r_i and the DAC drives x_i / r_i)."""
    value = tile.attributes["input_scale"]
    reference = np.broadcast_to(np.asarray(getattr(value, "array", value), dtype=np.float64), (rows,))
    return reference * row_scale(tile, rows)


def delta_g(hw: Hardware) -> float:
    return (hw.device.g_max_us - hw.device.g_min_us) / (hw.device.levels - 1)


def column_error_bound(x: np.ndarray, w: np.ndarray, dac_step: np.ndarray, g_scale: np.ndarray, hw: Hardware) -> np.ndarray:
    """Largest |z_sim - x W| per sample and column, for x [n, rows], W [rows, cols].

    Derivation. The simulator computes z_sim = Q(x) W~ with W~ the programmed
    weights. A weight is (G+ - G-)/s_j: the device of the pair at the pair's
    zero sits exactly at G_min (level 0), the other is rounded to the nearest
    level, so |W~ - W| <= ΔG/(2 s_j). The DAC rounds each input by at most δ/2
    (no clipping: the full scale is the calibrated maximum). Hence
    |Q(x) W~ - x W| <= Σ_i (|x_i| + δ_i/2) ΔG/(2 s_j) + |W_ij| δ_i/2,
    plus float32 accumulation of the product, at most rows * eps32 * Σ|x_i||W_ij|
    (and the same again for representing W~ in float32).
    """
    rows = w.shape[0]
    weight = (np.abs(x) + dac_step / 2) @ np.ones_like(w) * (delta_g(hw) / 2 / g_scale)
    dac = (dac_step / 2) @ np.abs(w)
    rounding = (rows + 2) * F32_EPS * (np.abs(x) @ (np.abs(w) + delta_g(hw) / g_scale))
    return weight + dac + rounding


def tile_weights(conductances: np.ndarray, tile) -> np.ndarray:  # noqa: ANN001
    """(G+ - G-)/s of a tile from its array's conductances (layout: G+ on c + 2j, G- on c + 2j + 1; cimc/image.py)."""
    r, c = int(tile.attributes["array_row"]), int(tile.attributes["array_col"])
    r0, r1 = tile.attributes["rows"]
    c0, c1 = tile.attributes["cols"]
    g = conductances[r:r + r1 - r0, c:c + 2 * (c1 - c0)]
    stored = (g[:, 0::2] - g[:, 1::2]) / tile.attributes["g_scale"].array
    return stored / row_scale(tile, r1 - r0)[:, None]  # the weights in model units: the rows store w_i r_i


def programmed_weights(compiled: cimc.CompiledModel, tile, hw: Hardware) -> np.ndarray:  # noqa: ANN001
    """The tile's weights as programmed: device levels of the image, G = G_min + level ΔG."""
    level = compiled.image.device_levels(int(tile.attributes["array"])).astype(np.float64)
    return tile_weights(hw.device.g_min_us + level * delta_g(hw), tile)


def linear_codes(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    steps = 2**bits - 1
    return np.clip(np.rint((z - lo) / ((hi - lo) / steps)), 0, steps)


def gemm_model(w: np.ndarray, batch: int) -> onnx.ModelProto:
    rows, cols = w.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cols])],
        [numpy_helper.from_array(w.astype(np.float32), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def assert_on_linear_grid(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The ADC returns one of its 2^bits levels (up to float32 rounding of the level); returns the codes."""
    step = (hi - lo) / (2**bits - 1)
    code = np.rint((y - lo) / step)
    off_grid = np.abs(y - (lo + code * step)) > 4 * F32_EPS * np.maximum(np.abs(lo), np.abs(hi))
    assert not off_grid.any(), f"{off_grid.sum()} of {off_grid.size} ADC outputs are not ADC levels"
    return code


@pytest.mark.parametrize("arrays", ["default", "split"])
def test_tile_and_linear_adc_within_the_derived_bound_of_the_ideal_quantizer(tmp_path: Path, arrays: str) -> None:
    """One tile read + linear ADC on the default hardware against the ideal quantizer of W x.

    The ADC code of z_sim lies between the ideal codes of z - ε and z + ε, with
    ε = column_error_bound (device level spacing ΔG, DAC step δ); the linear ADC
    is a monotone quantizer, so no other code is reachable. The bound is only
    a test if it is narrow: at most 8 of 255 codes on average. ``split``: 6 x 8
    arrays, so the 12 x 6 block is cut into row tiles whose partial currents add
    in analog before one ADC, and column tiles read together; the same bound
    holds for the summed column (ε adds over the row tiles as over the rows).
    """
    rng = np.random.default_rng(11)
    w = rng.normal(size=(12, 6))
    w[:, -1] = 0.0  # a column with no weight: an empty range [0, 0], whose ADC must return 0
    x = rng.uniform(-1, 1, size=(256, 12)).astype(np.float32)
    hw = load_hardware() if arrays == "default" else hardware(array={"rows": 6, "cols": 8, "count": 64},
                                                               converters={"nl_adc_bits": 1})
    compiled = compile_model(gemm_model(w, len(x)), {"x": x}, hw, tmp_path)
    parts = tiles(compiled)
    assert (len(parts) == 1) == (arrays == "default")
    lo = np.concatenate([t.attributes["z_lo"].array for t in parts if t.attributes["rows"][0] == 0])
    hi = np.concatenate([t.attributes["z_hi"].array for t in parts if t.attributes["rows"][0] == 0])
    g_scale = np.concatenate([t.attributes["g_scale"].array for t in parts if t.attributes["rows"][0] == 0])
    first_columns = sorted((t for t in parts if t.attributes["cols"][0] == 0), key=lambda t: t.attributes["rows"][0])
    scale = np.concatenate([input_scale(t, t.attributes["rows"][1] - t.attributes["rows"][0]) for t in first_columns])
    dac_step = scale / (2 ** (hw.converters.dac_bits - 1) - 1)
    y = Simulator(compiled.image, SimulatorOptions("ideal")).run({"x": x})["y"].astype(np.float64)

    z = x.astype(np.float64) @ w.astype(np.float32).astype(np.float64)
    eps = column_error_bound(x.astype(np.float64), w, dac_step, g_scale, hw)
    bits = hw.converters.adc_bits
    code = assert_on_linear_grid(y[:, :-1], lo[:-1], hi[:-1], bits)
    z, eps, lo, hi = z[:, :-1], eps[:, :-1], lo[:-1], hi[:-1]
    low, high = linear_codes(z - eps, lo, hi, bits), linear_codes(z + eps, lo, hi, bits)
    outside = (code < low) | (code > high)
    assert not outside.any(), f"{outside.sum()} ADC codes outside the derived window (first at {np.argwhere(outside)[0]})"
    # The worst-case window is a few codes wide (12 rows of 6-bit devices): narrow against the 255-code range.
    assert (high - low).mean() <= 8, f"the window spans {(high - low).mean():.1f} codes on average"
    assert np.all(y[:, -1] == 0)


def test_exactly_programmable_weights_give_the_quantizers_composition(tmp_path: Path) -> None:
    """Weights on the device level grid: the output is exactly ADC(DAC(x) W), codes equal up to float32 ties.

    W_ij = c m_ij / (levels - 1) with integer m and |m| = levels - 1 in every
    column: map-conductance's scale is s = (G_max - G_min)/c, so G+ = G_min + m ΔG
    is a programmable level and the programmed weight is W itself. A coarse
    4-bit DAC and a fine 12-bit ADC make both quantizers visible: without DAC
    rounding most codes move, without ADC rounding no output is an ADC level.
    """
    hw = hardware(converters={"dac_bits": 4, "adc_bits": 12})
    top = hw.device.levels - 1
    rng = np.random.default_rng(5)
    m = rng.integers(-top, top + 1, size=(8, 5))
    m[rng.integers(0, 8, size=5), np.arange(5)] = top * rng.choice([-1, 1], size=5)
    w = 0.75 * m / top
    x = rng.uniform(-2, 2, size=(300, 8)).astype(np.float32)  # a DAC full scale of about 2, not 1
    compiled = compile_model(gemm_model(w, len(x)), {"x": x}, hw, tmp_path)
    (tile,) = tiles(compiled)
    lo, hi = tile.attributes["z_lo"].array, tile.attributes["z_hi"].array
    scale = input_scale(tile, w.shape[0])
    levels = 2 ** (hw.converters.dac_bits - 1) - 1
    bits = hw.converters.adc_bits
    simulator = Simulator(compiled.image, SimulatorOptions("ideal"))
    # The calibrated inputs, then inputs 1.5x beyond the calibrated range, which the DAC clips to its full scale.
    for inputs in (x, 1.5 * x):
        xq = np.rint(np.clip(inputs / scale, -1, 1) * levels) / levels * scale
        z = xq @ w.astype(np.float32).astype(np.float64)
        y = simulator.run({"x": inputs})["y"].astype(np.float64)
        code = assert_on_linear_grid(y, lo, hi, bits)
        expected = linear_codes(z, lo, hi, bits)
        # float32 arithmetic can move z by a few ulps of Σ|x||W|: only then may the code differ, by one.
        slack = 16 * F32_EPS * (np.abs(xq) @ np.abs(w))
        tie = linear_codes(z - slack, lo, hi, bits) != linear_codes(z + slack, lo, hi, bits)
        wrong = (code != expected) & ~tie
        assert not wrong.any(), f"{wrong.sum()} of {code.size} codes differ from ADC(DAC(x) W)"
        assert tie.mean() < 0.01
    # The DAC matters at this resolution: the unquantized product has other codes.
    assert (linear_codes(x.astype(np.float64) @ w, lo, hi, bits) != linear_codes(x @ w, lo, hi, bits)).mean() == 0
    assert (linear_codes(x.astype(np.float64) @ w, lo, hi, bits) != expected).mean() > 0.3


# --- NL-ADC ------------------------------------------------------------------------------------

def _f(name: str, alpha: float | None, beta: float | None, clip: float | None):  # noqa: ANN202
    """The ONNX activation functions (ONNX operator definitions), written out here, after the cell clip."""
    a, b = alpha, beta

    def f(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if clip is not None:
            z = np.clip(z, -clip, clip)
        return {
            "Sigmoid": lambda: 1 / (1 + np.exp(-z)),
            "Tanh": lambda: np.tanh(z),
            "HardSigmoid": lambda: np.clip(a * z + b, 0, 1),
            "Softsign": lambda: z / (1 + np.abs(z)),
            "ScaledTanh": lambda: a * np.tanh(b * z),
            "Affine": lambda: a * z + b,
            "Relu": lambda: np.maximum(z, 0),
            "LeakyRelu": lambda: np.where(z >= 0, z, a * z),
            "ThresholdedRelu": lambda: np.where(z > a, z, 0.0),
            "Elu": lambda: np.where(z >= 0, z, a * (np.exp(np.minimum(z, 0)) - 1)),
            "Softplus": lambda: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0),
        }[name]()
    return f


# (id, ONNX activation, alpha, beta, clip): every activation the NL-ADC supports, a decreasing one, the clip composite.
FUNCTIONS = [
    ("sigmoid", "Sigmoid", None, None, None),
    ("tanh", "Tanh", None, None, None),
    ("hardsigmoid", "HardSigmoid", 0.3, 0.45, None),
    ("softsign", "Softsign", None, None, None),
    ("scaledtanh", "ScaledTanh", 1.3, 0.6, None),
    ("affine", "Affine", 0.8, 0.1, None),
    ("affine-decreasing", "Affine", -0.8, 0.1, None),
    ("relu", "Relu", None, None, None),
    ("leakyrelu", "LeakyRelu", 0.05, None, None),
    ("thresholdedrelu", "ThresholdedRelu", 0.15, None, None),
    ("elu", "Elu", 0.7, None, None),
    ("softplus", "Softplus", None, None, None),
    ("tanh-clip", "Tanh", None, None, 0.8),
]
HIDDEN, INPUTS = 6, 2


def rnn_mvm_inputs(x: np.ndarray) -> np.ndarray:
    """The one-step RNN's MVM input [x; h0 = 0; 1] for X [1, batch, INPUTS]."""
    batch = x.shape[1]
    return np.concatenate([x[0].astype(np.float64), np.zeros((batch, HIDDEN)), np.ones((batch, 1))], axis=1)


def rnn_step_model(activation: str, alpha: float | None, beta: float | None, clip: float | None,
                   seed: int = 1) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A one-step ONNX RNN without initial state: Y = f(clip(x W^T + Wb + Rb)), one MVM then one activation."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(1, HIDDEN, INPUTS)).astype(np.float32)
    r = (0.5 * rng.normal(size=(1, HIDDEN, HIDDEN))).astype(np.float32)
    b = (0.3 * rng.normal(size=(1, 2 * HIDDEN))).astype(np.float32)
    attrs: dict = {"hidden_size": HIDDEN, "activations": [activation]}
    if alpha is not None:
        attrs["activation_alpha"] = [alpha]
    if beta is not None:
        attrs["activation_beta"] = [beta]
    if clip is not None:
        attrs["clip"] = clip
    graph = helper.make_graph(
        [helper.make_node("RNN", ["X", "W", "R", "B"], ["Y"], **attrs)], "rnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "batch", INPUTS])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, "batch", HIDDEN])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B")])
    weights = np.concatenate([w[0].T, np.zeros((HIDDEN, HIDDEN), np.float32), (b[0, :HIDDEN] + b[0, HIDDEN:])[None]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), weights.astype(np.float64), b


def nl_adc_hardware(bits: int) -> Hardware:
    """Arrays tall enough for one N-bit ramp (2^N - 1 steps + 5 calibration devices) beside the weights.

    Up to 5 bits the default devices (64 levels, G_min = 2 uS) realize every ramp
    step; from 6 bits the steps (g * range / 2^N) are narrower than the default
    G_min and than ΔG, so these cases use 256-level devices with G_min = 0.25 uS.
    A 12-bit DAC keeps the column error below the ramp's own threshold error,
    so the window tests the ramp rather than the DAC.
    """
    device = {} if bits <= 5 else {"g_min_us": 0.25, "levels": 256}
    return hardware(array={"rows": 2**bits + 32}, device=device, converters={"nl_adc_bits": bits, "dac_bits": 12})


@pytest.mark.parametrize("bits", range(3, 9))
@pytest.mark.parametrize("case", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_tile_and_nl_adc_against_the_uniform_quantizer_of_f(case, bits: int, tmp_path: Path) -> None:
    """NL-ADC output = y_0 + k D with k between the ideal codes of f at z - w and z + w.

    Derivation. The ramp's realized levels are within ΔG/2 of g T_k (cumulative
    rounding, every step feasible), so each realized threshold is within
    ΔG/(2g) of the ideal T_k = f^-1((y_(k-1) + y_k)/2); the column value is
    within ε (column_error_bound) of z = W x. The code the comparator latches
    is therefore the ideal code at some z' with |z' - z| <= w = ε + ΔG/(2g),
    and the ideal code is monotone in z. In output terms: within half an LSB
    plus f's slope times w of f(z). The window is narrow enough to constrain
    (a single admissible code) for most samples.
    """
    name, activation, alpha, beta, clip = case
    hw = nl_adc_hardware(bits)
    model, weights, _ = rnn_step_model(activation, alpha, beta, clip)
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 400, INPUTS)).astype(np.float32)
    compiled = compile_model(model, {"X": x}, hw, tmp_path)
    (ramp,) = compiled.image.manifest["ramps"]
    assert ramp["bits"] == bits and ramp["function"] == activation
    (tile,) = tiles(compiled)
    y = Simulator(compiled.image, SimulatorOptions("ideal")).run({"X": x})["Y"][0, 0].astype(np.float64)

    f = _f(activation, alpha, beta, clip)
    top = 2**bits - 1
    y0, y_top = float(f(ramp["z_lo"])), float(f(ramp["z_hi"]))
    lsb = (y_top - y0) / top

    def code(z: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((f(z) - y0) / lsb + 0.5), 0, top)

    inputs = rnn_mvm_inputs(x)
    z = inputs @ weights.astype(np.float32).astype(np.float64)
    dac_step = input_scale(tile, weights.shape[0]) / (2 ** (hw.converters.dac_bits - 1) - 1)
    window = column_error_bound(inputs, weights, dac_step, tile.attributes["g_scale"].array, hw)
    window = window + delta_g(hw) / (2 * ramp["gain"] * ramp["g_per_z"])
    latched = np.rint((y - y0) / lsb)
    assert np.abs(y - (y0 + latched * lsb)).max() <= 4 * F32_EPS * max(abs(y0), abs(y_top)), "output is not an NL-ADC level"
    a, b = code(z - window), code(z + window)
    low, high = np.minimum(a, b), np.maximum(a, b)
    outside = (latched < low) | (latched > high)
    assert not outside.any(), (f"{name} {bits}-bit: {outside.sum()} of {outside.size} codes outside the window, "
                               f"e.g. z = {z[outside][0]:.6g}: code {latched[outside][0]:.0f}, "
                               f"admissible {low[outside][0]:.0f}..{high[outside][0]:.0f}")
    # Measured: 0.1-2.3 codes on average over these cases; a window of many codes would assert little.
    assert (high - low).mean() <= 2.5, f"{name} {bits}-bit: the window spans {(high - low).mean():.2f} codes on average"


@pytest.mark.parametrize("vread", [1.0, 0.8])
def test_nl_adc_codes_come_from_the_programmed_ramp_devices(tmp_path: Path, vread: float) -> None:
    """The comparator uses the thresholds the *programmed* ramp realizes, not the ideal ones.

    With weights and inputs the column value is known exactly up to float32
    rounding; the realized thresholds are read from the image's device levels
    (format: step devices from word line 0, G = G_min + level ΔG, then the
    calibration devices holding the signed offset): T'_k = (offset + Σ_(j<=k) G_j)/g.
    The code must be the count of T'_k <= z; a coarse ramp (4-bit devices)
    makes T' differ from the ideal T_k by a visible fraction of a code. At a
    read voltage 20 % low the column and the ramp currents both drop by 0.8:
    the codes stay those of z against T' (the NL-ADC is ratiometric).
    """
    hw = hardware(array={"rows": 64}, device={"levels": 16}, converters={"nl_adc_bits": 4, "dac_bits": 12})
    model, weights, _ = rnn_step_model("Tanh", None, None, None, seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, size=(1, 4000, INPUTS)).astype(np.float32)
    compiled = compile_model(model, {"X": x}, hw, tmp_path)
    (ramp,) = compiled.image.manifest["ramps"]
    (tile,) = tiles(compiled)
    level = compiled.image.device_levels(ramp["array"])
    column = level[:, ramp["bit_line"]].astype(np.float64)
    g = np.where(column >= 0, hw.device.g_min_us + column * delta_g(hw), 0.0)
    cal0, cal1 = ramp["calibration_rows"]
    ends = np.cumsum(ramp["step_devices"])
    starts = ends - np.asarray(ramp["step_devices"])
    steps = np.array([g[s:e].sum() for s, e in zip(starts, ends)])
    realized = (ramp["offset_sign"] * g[cal0:cal1].sum() + np.cumsum(steps)) / (ramp["gain"] * ramp["g_per_z"])
    ideal = np.asarray(ramp["thresholds"])

    inputs = rnn_mvm_inputs(x)
    scale = input_scale(tile, weights.shape[0])
    dac = 2 ** (hw.converters.dac_bits - 1) - 1
    xq = np.rint(np.clip(inputs / scale, -1, 1) * dac) / dac * scale
    programmed = programmed_weights(compiled, tile, hw)
    z = xq @ programmed
    eps = 16 * F32_EPS * (np.abs(xq) @ np.abs(programmed))
    y = Simulator(compiled.image, SimulatorOptions("ideal", vread_scale=vread)).run({"X": x})["Y"][0, 0].astype(np.float64)
    levels = np.asarray(ramp["output_levels"])
    latched = np.abs(y[..., None] - levels).argmin(axis=-1)

    # Only samples whose window [z - eps, z + eps] holds no threshold have one possible code each way.
    clear_r = np.searchsorted(realized, z - eps, side="right") == np.searchsorted(realized, z + eps, side="right")
    clear_i = np.searchsorted(ideal, z - eps, side="right") == np.searchsorted(ideal, z + eps, side="right")
    by_realized = np.searchsorted(realized, z, side="right")
    by_ideal = np.searchsorted(ideal, z, side="right")
    assert not (clear_r & (latched != by_realized)).any()
    discriminating = clear_r & clear_i & (by_realized != by_ideal)
    assert discriminating.sum() >= 20, "too few samples fall between realized and ideal thresholds"
