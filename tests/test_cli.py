"""The command line as users meet it: help, exit statuses, one-line errors, files written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("args", [["--help"], ["opt", "--help"], ["passes", "--help"]])
def test_help(cimc_cli, args: list[str], tmp_path: Path) -> None:
    result = cimc_cli(*args, cwd=tmp_path)
    assert result.returncode == 0 and "usage: cimc" in result.stdout


def test_passes_lists_options_and_defaults(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("passes", cwd=tmp_path)
    assert result.returncode == 0
    assert "canonicalize:" in result.stdout and "max_iterations: int = 10" in result.stdout
    assert {"cse:", "dce:"} <= {line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")}


def test_the_parser_imports_no_onnxruntime_scipy_or_lark(tmp_path: Path) -> None:
    """Every command builds the whole parser (the sweep's arguments included): onnxruntime and scipy, which only
    verify, sweep and map-defects use, would add 110 MB to every compile's peak memory (bench/README.md); lark
    (the textual IR's parser, for .cir files only) 6 MB and 0.05 s to every start."""
    code = ("import sys, cimc.cli, cimc.sweep; cimc.cli.build_parser(); "
            "print(sorted(m for m in ('onnxruntime', 'scipy', 'lark') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "[]"
    lazy = subprocess.run([sys.executable, "-c", "from cimc.sweep import sweep, HardwarePoint, SweepResult; "
                           "import cimc.sweep; print(callable(sweep), hasattr(cimc.sweep, 'nothing'))"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert lazy.stdout.strip() == "True False"


def test_usage_error_is_one_line_with_status_2(cimc_cli) -> None:
    result = cimc_cli("opt")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_missing_file(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("opt", str(tmp_path / "nope.cir"))
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_typo_gives_file_line_col_and_caret(cimc_cli, tmp_path: Path) -> None:
    bad = tmp_path / "typo.cir"
    text = DATA.joinpath("lstm_like.cir").read_text().replace("onnx.Sigmoid(%zo)", "onnx.Sigmoid(%zo")
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "Sigmoid(%zo " in s)
    result = cimc_cli("opt", str(bad), "-p", "dce")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    first, source, caret = result.stderr.splitlines()
    assert first.startswith(f"{bad}:{line}:") and ": error: unexpected" in first
    assert source.strip().startswith("%o = onnx.Sigmoid(%zo :") and caret.strip() == "^"


def test_bad_pipeline_status_2(cimc_cli) -> None:
    result = cimc_cli("opt", str(DATA / "lstm_like.cir"), "-p", "dce,frobnicate")
    assert result.returncode == 2 and "unknown pass 'frobnicate'" in result.stderr


def test_output_file_and_sidecar(cimc_cli, tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(DATA, src, ignore=shutil.ignore_patterns("torch"))
    result = cimc_cli("opt", "in/lstm_like.cir", "-p", "cse,dce", "-o", "out/model.cir", cwd=tmp_path)
    assert result.returncode == 2 and "cannot write out/model" in result.stderr, result.stderr
    (tmp_path / "out").mkdir()
    result = cimc_cli("opt", "in/lstm_like.cir", "-p", "cse,dce", "-o", "out/model.cir", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out/model.cir").read_text()
    assert 'sidecar = "model.npz"' in text and (tmp_path / "out/model.npz").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.cir", "model.npz"]  # no temp files left
    again = cimc_cli("opt", "out/model.cir", "-p", "", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == text
    first = (tmp_path / "out/model.npz").read_bytes()
    cimc_cli("opt", "in/lstm_like.cir", "-p", "cse,dce", "-o", "out/model.cir", cwd=tmp_path)
    assert (tmp_path / "out/model.npz").read_bytes() == first  # deterministic bytes


def test_dump_ir_writes_one_file_per_pass(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("opt", str(DATA / "lstm_like.cir"), "-p", "cse,canonicalize,dce", "--dump-ir", str(tmp_path / "dumps"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "dumps").glob("*.cir")) == ["01-cse.cir", "02-canonicalize.cir", "03-dce.cir"]
