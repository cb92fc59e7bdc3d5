"""Regenerate the example accuracy tables: runs each example's evaluate.py.

    python bench/accuracy.py [--seeds 10]

Each script compiles its trained model with cimc for NL-ADC bits 3, 4, 5 and 8,
runs the image at ideal and noisy fidelity against onnxruntime's float result,
prints the markdown tables and rewrites its results.json and plot. Together
about 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="noisy runs (programmed chips) per setting")
    args = parser.parse_args()
    for example in ("kws", "charlm"):
        print(f"== {example}", flush=True)
        subprocess.run([sys.executable, str(EXAMPLES / example / "evaluate.py"), "--seeds", str(args.seeds)], check=True)


if __name__ == "__main__":
    main()
