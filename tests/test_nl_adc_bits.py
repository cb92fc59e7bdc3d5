"""--nl-adc-bits N|auto: fixed bits per ramp, or the fewest bits that meet the stated error target.

The target (docs/nl-adc.md §7): max |y_code(z) - f(z)| over each ramp's conversion range
<= 1/32 in the activation's output units. The realized error is recomputed here from the
image's own ramp data (realized thresholds from its devices, its output levels) on a dense
grid; that one bit fewer cannot meet the target is shown by the ideal quantizer alone,
whose error D/2 = span / (2 (2^(b-1) - 1)) already exceeds 1/32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cimc

KWS = Path(__file__).resolve().parents[1] / "examples" / "kws"
TARGET = 1 / 32
FUNCTIONS = {"Sigmoid": lambda z: 1 / (1 + np.exp(-z)), "Tanh": np.tanh}


def _realized_error(image, ramp: dict) -> float:  # noqa: ANN001
    d = image.hardware.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    level = image.device_levels(ramp["array"])[:, ramp["bit_line"]]
    column = np.where(level >= 0, d.g_min_us + level * delta_g, 0.0)
    bounds = np.cumsum([0] + ramp["step_devices"])
    steps = np.array([column[bounds[i]:bounds[i + 1]].sum() for i in range(len(ramp["step_devices"]))])
    cal0, cal1 = ramp["calibration_rows"]
    thresholds = (ramp["offset_sign"] * column[cal0:cal1].sum() + np.cumsum(steps)) / (ramp["gain"] * ramp["g_per_z"])
    z = np.linspace(ramp["z_lo"], ramp["z_hi"], 100_001)
    y = np.asarray(ramp["output_levels"])[np.searchsorted(thresholds, z, side="right")]
    return float(np.abs(y - FUNCTIONS[ramp["function"]](z)).max())


def test_auto_bits_take_the_fewest_bits_that_meet_the_target() -> None:
    model = cimc.compile(KWS / "kws_lstm.onnx", calib=KWS / "calib.npz", nl_adc_bits="auto")
    ramps = model.image.manifest["ramps"]
    assert int(model.image.program().attributes["fuse.activations"]) == 5
    for ramp in ramps:
        bits = ramp["bits"]
        assert _realized_error(model.image, ramp) <= TARGET, ramp
        span = abs(ramp["output_levels"][-1] - ramp["output_levels"][0])
        assert bits == 3 or span / (2 * (2 ** (bits - 1) - 1)) > TARGET, ramp
    assert {r["function"]: r["bits"] for r in ramps} == {"Sigmoid": 5, "Tanh": 6}


def test_cli_prints_bits_per_activation_and_refuses_a_ramp_taller_than_the_array(cimc_cli, tmp_path: Path) -> None:
    model, calib = str(KWS / "kws_lstm.onnx"), str(KWS / "calib.npz")
    result = cimc_cli("compile", model, "--calib", calib, "--nl-adc-bits", "auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "NL-ADC bits per activation (fewest bits in 3..8 with max |NL-ADC output - f(z)|" in result.stdout
    assert "  Sigmoid at kws_lstm.onnx:/lstm/LSTM: 5 bits" in result.stdout
    assert ", gain " in result.stdout
    fixed = cimc_cli("compile", model, "--calib", calib, "--nl-adc-bits", "4", cwd=tmp_path)
    assert fixed.returncode == 0 and " 4-bit, gain " in fixed.stdout and " 5-bit" not in fixed.stdout
    tall = cimc_cli("compile", model, "--calib", calib, "--nl-adc-bits", "8", cwd=tmp_path)
    assert tall.returncode == 2
    assert tall.stderr.strip().splitlines() == [
        "error: --nl-adc-bits 8: impossible hardware configuration: an array of 128 rows cannot hold one 8-bit ramp "
        "column, which needs 260 rows (255 steps + 5 calibration devices)"]
    bad = cimc_cli("compile", model, "--nl-adc-bits", "many", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a number of bits or 'auto'" in bad.stderr
