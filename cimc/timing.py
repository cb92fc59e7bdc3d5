"""Wall-clock timing of the compile phases, and progress lines on a terminal.

``cimc compile --timing`` prints a table in the spirit of ``mlir-opt
--mlir-timing``: every phase (import, each pass, the verifier runs between
passes, building and writing the image) with its seconds and share of the
total, so that the cost of a compile can be attributed without a profiler.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

PROGRESS_AFTER_S = 2.0  # a compile that finishes sooner prints nothing extra


@dataclass
class Timing:
    """Phases in the order they ran; repeated names (a pass run twice) stay separate rows."""

    phases: list[tuple[str, float]] = field(default_factory=list)
    progress: TextIO | None = None  # where per-phase progress lines go once the compile is slow
    _start: float = field(default_factory=time.perf_counter)
    _printed: int = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))
        if self.progress is not None and time.perf_counter() - self._start >= PROGRESS_AFTER_S:
            for done, took in self.phases[self._printed:]:
                if done != "(verify)":
                    print(f"  {done}: {took:.2f} s (elapsed {time.perf_counter() - self._start:.1f} s)",
                          file=self.progress, flush=True)
            self._printed = len(self.phases)

    @property
    def total(self) -> float:
        return sum(s for _, s in self.phases)

    def table(self) -> str:
        """The per-phase table; verifier rows are summed into one, as MLIR reports its verifier."""
        rows: list[tuple[str, float]] = []
        verify = 0.0
        for name, seconds in self.phases:
            if name == "(verify)":
                verify += seconds
            else:
                rows.append((name, seconds))
        if verify:
            rows.append(("(verify, all runs)", verify))
        total = self.total or 1e-12
        rule = "===" + "-" * 69 + "==="
        lines = [rule, "Execution time report".center(len(rule)).rstrip(), rule,
                 f"  Total Execution Time: {self.total:.4f} seconds", "",
                 "  ----Wall Time----  ----Name----"]
        lines += [f"  {s:8.4f} ({100 * s / total:5.1f}%)  {name}" for name, s in rows]
        lines.append(f"  {self.total:8.4f} (100.0%)  Total")
        return "\n".join(lines) + "\n"


def terminal_stream() -> TextIO | None:
    """stderr if it is a terminal (progress lines would only clutter a log), else None."""
    return sys.stderr if sys.stderr.isatty() else None
