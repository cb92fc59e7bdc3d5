"""Shared test fixtures: test-only op kinds for property tests and a CLI runner."""

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
