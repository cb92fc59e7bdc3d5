"""The hand-listed mutations of bench/mutation.py (issue 15 §4) are each killed by their designated tests.

Each mutation is a one-line patch of the simulator (backends/) that used to
leave every simulator test green, or that a test of the step plan exists to
catch (the ADC and DAC not quantizing, ideal instead of realized NL-ADC
thresholds, no ramp recalibration, 10x programming noise and stuck rates, read
noise not drawn per read, stuck devices following the image instead of the
positions, analog-sum noise shared across the batch or missing a partial sum,
the NL-ADC lookup ignoring its cell's threshold). The runner applies it in a forked
child and runs only the designated tests; a pattern that no longer matches
exactly once is an error, not a pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_hand_listed_mutation_is_killed(tmp_path: Path) -> None:
    report = tmp_path / "mutations.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "mutation.py"), "--hand", "--json", str(report)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(report.read_text())
    assert len(results) >= 11
    survivors = [r["name"] for r in results if r["status"] != "killed"]
    assert not survivors, f"not killed by their designated tests: {survivors}\n{result.stdout}"
