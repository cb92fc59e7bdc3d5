"""Per-pass golden tests.

Each ``tests/golden/<pass>/<case>.cir`` starts with ``// RUN: <pipeline>``; the
pipeline's output must equal ``<case>.expected.cir`` byte for byte. Set
``CIMC_UPDATE_GOLDEN=1`` to rewrite the expected files after a deliberate
change, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cimc.irfile import read_ir
from cimc.pass_manager import PassManager, parse_pipeline
from cimc.printer import print_module

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.rglob("*.cir") if not p.name.endswith(".expected.cir"))


def run_line(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("// RUN: "), f"{path} must start with '// RUN: <pipeline>'"
    return first.removeprefix("// RUN: ").strip()


@pytest.mark.parametrize("case", CASES, ids=[str(p.relative_to(GOLDEN)) for p in CASES])
def test_golden(case: Path) -> None:
    module = read_ir(case)
    PassManager(parse_pipeline(run_line(case))).run(module)
    actual = print_module(module, inline_limit=1 << 30).text  # goldens show every weight
    expected_path = case.with_suffix(".expected.cir")
    if os.environ.get("CIMC_UPDATE_GOLDEN"):
        expected_path.write_text(actual)
    assert actual == expected_path.read_text()


def test_every_registered_pass_has_a_golden_test() -> None:
    from cimc.pass_manager import registered_passes

    covered = {p.parent.name for p in CASES}
    missing = {name for name in registered_passes() if not name.startswith("test-")} - covered
    assert not missing, f"passes without golden tests: {sorted(missing)}"
