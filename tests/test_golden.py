"""Per-pass golden tests.

Each ``tests/golden/<pass>/<case>.cir`` starts with ``// RUN: <pipeline>``; the
pipeline's output must equal ``<case>.expected.cir`` in structure: every
character except the digits of real-number literals is compared exactly, and
each real number must agree to ``FLOAT_RTOL`` relative (``FLOAT_ATOL`` near
zero). Why not byte for byte: the numbers the lowering passes compute (interval
bounds, conductance scales) come out of float64 dot products whose summation
order numpy's kernels choose per CPU (AVX2 and AVX-512 builds of the same
product differ in the last one or two of 17 digits). A sum of n terms of
magnitude at most m is exact to about n * eps * m; the goldens have n <= 16
and m <= 10, so 1e-12 absolute and relative leaves a margin of ~30x over
reassociation while any real change of a value (a wrong rule, a lost term)
moves it by far more. Set ``CIMC_UPDATE_GOLDEN=1`` to rewrite the expected
files after a deliberate change (those runs are reported as skipped, not
passed), then review the diff.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from cimc.irfile import read_ir
from cimc.defects import load_measurement
from cimc.hardware import load_hardware
from cimc.pass_manager import PassContext, PassManager, parse_pipeline
from cimc.printer import print_module

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.rglob("*.cir") if not p.name.endswith(".expected.cir"))
FLOAT_RTOL = 1e-12
FLOAT_ATOL = 1e-12
# A real-number literal as the printer writes it (repr of a float): digits with a point or an exponent,
# not part of a name such as "gru0.d0" or "f32".
_REAL = re.compile(r"(?<![\w.])-?(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")


def run_line(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("// RUN: "), f"{path} must start with '// RUN: <pipeline>'"
    return first.removeprefix("// RUN: ").strip()


def structural_mismatch(actual: str, expected: str) -> str | None:
    """None if the texts agree (reals to the stated precision), else a description of the first difference."""
    a_lines, e_lines = actual.splitlines(), expected.splitlines()
    if len(a_lines) != len(e_lines):
        return f"{len(a_lines)} lines, expected {len(e_lines)}"
    for number, (a, e) in enumerate(zip(a_lines, e_lines), 1):
        if a == e:
            continue
        if _REAL.sub("#", a) != _REAL.sub("#", e):
            return f"line {number} differs:\n  got      {a}\n  expected {e}"
        for x, y in zip(_REAL.findall(a), _REAL.findall(e)):
            if not math.isclose(float(x), float(y), rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL):
                return f"line {number}: {x} != {y} beyond rtol {FLOAT_RTOL:g}, atol {FLOAT_ATOL:g}"
    return None


@pytest.mark.parametrize("case", CASES, ids=[str(p.relative_to(GOLDEN)) for p in CASES])
def test_golden(case: Path) -> None:
    module = read_ir(case)
    # A case may come with a chip measurement (<case>.defects.npz) for map-defects, which reads it from the context,
    # and the hardware it was measured on (<case>.hw.toml).
    defects, hw = case.with_suffix(".defects.npz"), case.with_suffix(".hw.toml")
    context = None
    if defects.exists():
        context = PassContext(load_hardware(hw if hw.exists() else None), load_measurement(defects))
    PassManager(parse_pipeline(run_line(case)), context=context).run(module)
    actual = print_module(module, inline_limit=1 << 30).text  # goldens show every weight
    expected_path = case.with_suffix(".expected.cir")
    if os.environ.get("CIMC_UPDATE_GOLDEN"):
        expected_path.write_text(actual)
        pytest.skip(f"rewrote {expected_path.name}")
    mismatch = structural_mismatch(actual, expected_path.read_text())
    assert mismatch is None, mismatch


def test_structural_comparison_tolerates_reassociation_only() -> None:
    line = 'z_lo = dense<f64[2]: [-1.3135976642910396, 0.5]> loc("m.onnx:gru0.d0")'
    assert structural_mismatch(line, line.replace("-1.3135976642910396", "-1.3135976642910394")) is None
    assert structural_mismatch(line, line.replace("-1.3135976642910396", "-1.3135976643")) is not None
    assert structural_mismatch(line, line.replace("0.5", "0.25")) is not None
    assert structural_mismatch(line, line.replace("gru0.d0", "gru0.d1")) is not None
    assert structural_mismatch(line, line.replace("f64[2]", "f64[3]")) is not None


def test_every_registered_pass_has_a_golden_test() -> None:
    from cimc.pass_manager import registered_passes

    covered = {p.parent.name for p in CASES}
    missing = {name for name in registered_passes() if not name.startswith("test-")} - covered
    assert not missing, f"passes without golden tests: {sorted(missing)}"
