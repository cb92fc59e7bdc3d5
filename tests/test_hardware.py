"""The hardware description: defaults, overrides, and refusal of configurations that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimc.compiler import default_pipeline
from cimc.diagnostics import CimcError
from cimc.hardware import hardware_from_dict, load_hardware
from cimc.pass_manager import parse_pipeline

TORCH = Path(__file__).parent / "data" / "torch"


def test_defaults_are_consistent() -> None:
    hw = load_hardware()
    assert hw.device.g_min_us < hw.device.g_max_us and hw.device.levels >= 2
    assert hw.array.rows >= hw.ramp_rows() and hw.weight_cols_per_array == hw.array.cols // 2
    assert hardware_from_dict(hw.to_dict()) == hw


def test_override_changes_only_named_keys(tmp_path: Path) -> None:
    path = tmp_path / "hw.toml"
    path.write_text("[array]\nrows = 64\n[converters]\nanalog_partial_sums = false\n")
    hw, default = load_hardware(path), load_hardware()
    assert hw.array.rows == 64 and not hw.converters.analog_partial_sums
    assert hw.array.cols == default.array.cols and hw.device == default.device


@pytest.mark.parametrize(
    "text, message",
    [
        ("[device]\ng_min_us = 50.0\ng_max_us = 10.0\n", "g_min_us < g_max_us"),
        ("[device]\nlevels = 0\n", "levels must be at least 2"),
        ("[array]\nrows = 16\n", "cannot hold one 5-bit ramp column, which needs 36 rows"),
        ("[array]\nrowz = 16\n", "unknown key 'rowz' in [array]"),
        ("[arrays]\nrows = 16\n", "unknown section [arrays]"),
        ("[array]\nrows = 'many'\n", "rows must be int"),
        ("[nonideality]\nstuck_on_rate = 1.5\n", "stuck_on_rate must lie in [0, 1]"),
        ("[array]\nspare_cols = 3\n", "spare_cols counts bit lines of whole G"),
        ("[array]\nspare_rows = -1\n", "spare_rows, spare_cols and spare_ramp_cols must be counts >= 0"),
        ("[array]\nspare_ramp_cols = 1.5\n", "spare_ramp_cols must be int"),
        ("[array\n", "invalid TOML"),
    ],
)
def test_impossible_configurations_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hw.toml"
    path.write_text(text)
    with pytest.raises(CimcError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_hardware(path)


def test_cli_compile_with_bad_hardware_exits_2(cimc_cli, tmp_path: Path) -> None:
    path = tmp_path / "hw.toml"
    path.write_text("[device]\ng_min_us = 5.0\ng_max_us = 5.0\n")
    result = cimc_cli("compile", str(TORCH / "lstm2.torchscript.onnx"), "--hw", str(path))
    assert result.returncode == 2 and "impossible hardware configuration" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_compile_reports_mapping_and_dumps_every_pass(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("compile", str(TORCH / "lstm2.torchscript.onnx"), "--dump-ir", "dumps", "-o", "lowered.cir", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Per layer: the i, o, f sigmoid gates (48 columns) run on as 31 + 17, the tanh gate (16) takes a third array
    # (17 + 16 columns are 66 bit lines with two ramps); tanh(c_t)'s identity columns take one more each.
    assert result.stdout.startswith("arrays used: 8 (count = auto: the chip is sized to the model) (128 x 64)")
    assert "lstm_LSTM_1.d0.gates[rows 0:33, cols 31:48] -> bit lines 0:34" in result.stdout
    dumps = sorted(p.name for p in (tmp_path / "dumps").glob("*.cir"))
    assert dumps[0] == "01-decompose-rnn.cir" and dumps[-1].endswith("-schedule.cir")
    assert len(dumps) == len(parse_pipeline(default_pipeline()))
    assert (tmp_path / "lowered.cir").read_text() == (tmp_path / "dumps" / dumps[-1]).read_text().replace(
        f'"{dumps[-1][:-4]}.npz"', '"lowered.npz"')


def test_cli_compile_print_ir_after_all(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("compile", str(TORCH / "bigru.torchscript.onnx"), "--print-ir-after-all", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stderr.splitlines() if "IR Dump After" in line]
    assert len(headers) == len(parse_pipeline(default_pipeline())) and "cim.nl_adc" in result.stderr


def test_an_image_manifest_without_spare_keys_has_no_spare_lines() -> None:
    """Images compiled before the spare lines existed load as hardware without them (their arrays are rows x cols)."""
    data = load_hardware().to_dict()
    for key in ("spare_rows", "spare_cols", "spare_ramp_cols"):
        del data["array"][key]
    hw = hardware_from_dict(data)
    assert (hw.array.physical_rows, hw.array.physical_cols) == (hw.array.rows, hw.array.cols)
    assert load_hardware().array.physical_rows == 136 and load_hardware().array.physical_cols == 69
