"""The simulator's terminal progress line: drawn only on a terminal, at every tenth of a loop of >= 20 steps."""

from __future__ import annotations

import io

import pytest

from cimc.backends.simulator import terminal_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_progress_redraws_at_every_tenth_and_ends_the_line(monkeypatch, tty: bool) -> None:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    for step in range(1, 41):
        terminal_progress("loop", step, 40)
    expected = "".join(f"\r  loop: step {s}/40" for s in range(4, 41, 4)) + "\n"
    assert err.getvalue() == (expected if tty else "")


def test_short_loops_draw_nothing(monkeypatch) -> None:
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    for step in range(1, 20):
        terminal_progress("loop", step, 19)
    terminal_progress("loop", 20, 20)
    assert err.getvalue() == "\r  loop: step 20/20\n"
