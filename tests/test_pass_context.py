"""The typed hardware context: passes read hardware parameters from it, explicit options override it.

Also the ``--timing`` table of ``cimc compile`` / ``cimc opt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cimc.hardware import load_hardware
from cimc.importer import import_onnx
from cimc.ir import Module
from cimc.pass_manager import ModulePass, PassContext, PassManager, from_hardware, parse_pipeline, register_pass, registered_passes
from cimc.compiler import default_pipeline

TORCH = Path(__file__).parent / "data" / "torch"
MODEL = TORCH / "lstm2.torchscript.onnx"


@dataclass(frozen=True)
class _Probe(ModulePass):
    """Test pass: records the hardware-derived options it ran with."""

    name = "test-context-probe"
    rows: int | None = from_hardware(lambda hw: hw.array.rows, "array.rows")
    bits: int | None = from_hardware(lambda hw: hw.converters.nl_adc_bits, "converters.nl_adc_bits")

    def apply(self, module: Module) -> bool:
        module.attributes["probe"] = f"rows={self.rows} bits={self.bits}"
        return False


if "test-context-probe" not in registered_passes():
    register_pass(_Probe)


def _hw(tmp_path: Path, text: str) -> PassContext:
    path = tmp_path / "hw.toml"
    path.write_text(text)
    return PassContext(load_hardware(path))


def test_context_reaches_passes_and_options_override_it(tmp_path: Path) -> None:
    context = _hw(tmp_path, "[array]\nrows = 32\n[converters]\nnl_adc_bits = 4\n")
    module = import_onnx(MODEL)
    PassManager(parse_pipeline("test-context-probe"), context=context).run(module)
    assert module.attributes["probe"] == "rows=32 bits=4"
    PassManager(parse_pipeline("test-context-probe{rows=7}"), context=context).run(module)
    assert module.attributes["probe"] == "rows=7 bits=4"


def test_without_a_context_the_default_hardware_applies() -> None:
    default = load_hardware()
    module = import_onnx(MODEL)
    PassManager(parse_pipeline("test-context-probe")).run(module)
    assert module.attributes["probe"] == f"rows={default.array.rows} bits={default.converters.nl_adc_bits}"


def _tile_rows(module: Module) -> list[int]:
    return [op.attributes["rows"][1] - op.attributes["rows"][0] for op in module.walk() if op.name == "cim.tile_mvm"]


def test_tile_cuts_to_the_context_array_unless_told_otherwise(tmp_path: Path) -> None:
    """A real pass: the 33-row LSTM blocks of lstm2 fit 128 rows; a 24-row context cuts them; ``rows=8`` beats the context."""
    lowering = "decompose-rnn,form-mvm,canonicalize,cse,ranges,map-conductance,"
    context = _hw(tmp_path, "[array]\nrows = 24\ncount = 1000\n[converters]\nnl_adc_bits = 4\n")
    by_default, by_context, by_option = import_onnx(MODEL), import_onnx(MODEL), import_onnx(MODEL)
    PassManager(parse_pipeline(lowering + "tile")).run(by_default)
    PassManager(parse_pipeline(lowering + "tile"), context=context).run(by_context)
    PassManager(parse_pipeline(lowering + "tile{rows=8}"), context=context).run(by_option)
    assert max(_tile_rows(by_default)) == 33
    assert max(_tile_rows(by_context)) == 24
    assert max(_tile_rows(by_option)) == 8


def test_default_pipeline_has_no_hardware_parameters() -> None:
    text = default_pipeline("calib.npz", "digital")
    assert not re.search(r"\b(rows|cols|arrays|g_min|g_max|bits|levels|adc_bits|analog_sum)=", text)
    assert "identity=digital" in text and 'calib=calib.npz' in text


def test_passes_lists_where_hardware_defaults_come_from(cimc_cli) -> None:
    result = cimc_cli("passes")
    assert result.returncode == 0, result.stderr
    rows = load_hardware().array.rows
    assert f"    rows: int = hardware array.rows ({rows} by default)" in result.stdout
    assert "    granularity: str = column" in result.stdout


def _timing_rows(stderr: str) -> list[tuple[float, float, str]]:
    rows = re.findall(r"^\s+([0-9.]+) \(\s*([0-9.]+)%\)  (.+)$", stderr, re.M)
    return [(float(s), float(p), name) for s, p, name in rows]


def test_compile_timing_table(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("compile", str(MODEL), "-o", str(tmp_path / "m.cimg"), "--timing")
    assert result.returncode == 0, result.stderr
    assert "Execution time report" in result.stderr
    rows = _timing_rows(result.stderr)
    names = [name for _, _, name in rows]
    passes = [p.name for p in parse_pipeline(default_pipeline())]
    assert names == ["import", *passes, "build image", "write image", "(verify, all runs)", "Total"]
    *phases, (total, share, _) = rows
    assert share == 100.0
    assert abs(sum(s for s, _, _ in phases) - total) <= 1e-4 * len(phases)  # each row is printed to 4 decimals
    assert "Total Execution Time" in result.stderr
    assert result.stdout.startswith("arrays used:")  # the summary is unchanged on stdout


def test_opt_timing_and_hw(cimc_cli, tmp_path: Path) -> None:
    lowered = tmp_path / "m.cir"
    assert cimc_cli("import", str(MODEL), "-o", str(lowered)).returncode == 0
    (tmp_path / "hw.toml").write_text("[array]\nrows = 24\ncount = 1000\n[converters]\nnl_adc_bits = 4\n")
    pipeline = "decompose-rnn,form-mvm,canonicalize,cse,ranges,map-conductance,tile"
    result = cimc_cli("opt", str(lowered), "-p", pipeline, "--hw", str(tmp_path / "hw.toml"), "--timing")
    assert result.returncode == 0, result.stderr
    names = [name for _, _, name in _timing_rows(result.stderr)]
    assert names == ["parse", *pipeline.split(","), "output", "(verify, all runs)", "Total"]
    assert "rows = [0, 24]" in result.stdout and "rows = [0, 33]" not in result.stdout


def test_progress_lines_only_once_the_compile_is_slow() -> None:
    """Per-phase lines start when the elapsed time passes PROGRESS_AFTER_S, then catch up on earlier phases."""
    import io
    import time

    from cimc.timing import PROGRESS_AFTER_S, Timing

    out = io.StringIO()
    timing = Timing(progress=out)
    timing.add("import", 0.1)
    timing.add("(verify)", 0.01)
    assert out.getvalue() == ""  # a fast compile prints nothing
    timing._start = time.perf_counter() - PROGRESS_AFTER_S  # as if the compile had been running that long
    timing.add("ranges", 0.5)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["import", "ranges"]  # verifier runs are not listed
    assert lines[1].startswith("  ranges: 0.50 s (elapsed ")
