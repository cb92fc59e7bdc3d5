"""Shared test fixtures: test-only op kinds for property tests, a CLI runner, and the fuzz suite's budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import os

import pytest
from hypothesis import settings

from cimc.dialects.registry import AttrSpec, define, lookup

# CI must not fail on an example no developer has seen: derandomize there; developers explore.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

TESTS_DIR = Path(__file__).parent

if lookup("test.op") is None:
    # Ops that take any attributes and any operands, so that property tests can
    # generate every attribute kind; real dialects constrain theirs.
    define("test.op", "Test op: any operands, results and attributes a..e.", operands="xs*", results="ys*",
           attributes={k: AttrSpec("any") for k in "abcde"})
    define("test.region", "Test op with one region.", operands="xs*", results="ys*", num_regions=1,
           attributes={k: AttrSpec("any") for k in "abcde"})
    define("test.yield", "Terminator of test.region.", operands="xs*", terminator=True, pure=False)


CIMC_SCRIPT = Path(sys.executable).with_name("cimc")


def run_cimc(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cimc`` console script as a user would (not the checkout's sources)."""
    return subprocess.run([str(CIMC_SCRIPT), *args], capture_output=True, text=True, cwd=cwd, input=stdin, timeout=300)


@pytest.fixture
def cimc_cli():
    return run_cimc


# --- the fuzz suite (tests/test_fuzz.py): its number of cases and the count it reports ---

FUZZ_DEFAULT_CASES = 1000  # CI: every run of the suite; `pytest -m fuzz --fuzz-cases 10000` explores further


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-cases", type=int, default=FUZZ_DEFAULT_CASES,
                     help=f"total cases of the fuzz suite, shared among its targets (default {FUZZ_DEFAULT_CASES})")


class FuzzBudget:
    """How many cases each fuzz target runs (its share of --fuzz-cases) and how many it ran."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ran: dict[str, int] = {}

    def cases(self, share: float) -> int:
        return max(1, round(self.total * share))

    def count(self, target: str) -> None:
        self.ran[target] = self.ran.get(target, 0) + 1


_FUZZ: FuzzBudget | None = None


@pytest.fixture(scope="session")
def fuzz_budget(request: pytest.FixtureRequest) -> FuzzBudget:
    global _FUZZ
    if _FUZZ is None:
        _FUZZ = FuzzBudget(request.config.getoption("--fuzz-cases"))
    return _FUZZ


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if _FUZZ is not None and _FUZZ.ran:
        per_target = ", ".join(f"{k} {v}" for k, v in sorted(_FUZZ.ran.items()))
        terminalreporter.write_line(f"fuzz: {sum(_FUZZ.ran.values())} cases ({per_target})")
