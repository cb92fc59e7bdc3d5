"""User-facing errors.

Every error a user can cause (bad model, bad IR text, impossible hardware)
is a :class:`CimcError`; the CLI prints it without a traceback and exits with
status 2. Errors tied to IR text carry a :class:`SourcePos` and render in the
``file:line:col: error: message`` form followed by the source line and a caret,
which editors and terminals can jump to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourcePos:
    filename: str
    line: int
    column: int
    source_line: str


class CimcError(Exception):
    """An error in the user's input; printed as one message, exit status 2."""

    exit_status = 2

    def __init__(self, message: str, pos: SourcePos | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos

    def __str__(self) -> str:
        if self.pos is None:
            return f"error: {self.message}"
        p = self.pos
        caret = " " * (p.column - 1) + "^"
        return f"{p.filename}:{p.line}:{p.column}: error: {self.message}\n{p.source_line}\n{caret}"


class InternalError(CimcError):
    """A compiler bug (for example a pass that produced invalid IR); exit status 1."""

    exit_status = 1

    def __str__(self) -> str:
        return "internal error: " + super().__str__().removeprefix("error: ")


def source_pos(filename: str, text: str, line: int, column: int) -> SourcePos:
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return SourcePos(filename, line, column, source_line)
