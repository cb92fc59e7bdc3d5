"""Where the command line meets the file system and the terminal.

A command declares the files it reads and writes in a :class:`PathPlan`
before it does any work, so that a typo in an output folder costs nothing
(not a whole verification), and so that no output ever lands on an input
(``cimc compile m.onnx -o m.onnx`` once replaced the model by an image).
:class:`PipeTolerant` makes a closed stdout or stderr (``cimc ... | head``)
end the printing, not the command: the image is still written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TextIO

from cimc.diagnostics import CimcError


class PathPlan:
    """The files of one command: inputs checked readable, outputs checked writable and distinct from every input."""

    def __init__(self) -> None:
        self._inputs: list[tuple[str, Path]] = []

    def read(self, role: str, path: str | os.PathLike[str], *, folder_ok: bool = False) -> None:
        """``path`` must be a readable file (or folder, where ``folder_ok``); ``role`` names it in messages."""
        p = Path(path)
        if not p.exists():
            raise CimcError(f"cannot read {p}: no such file")
        if p.is_dir() and not folder_ok:
            raise CimcError(f"cannot read {role} {p}: it is a directory")
        if not os.access(p, os.R_OK):
            raise CimcError(f"cannot read {role} {p}: permission denied")
        self._inputs.append((role, p))

    def write(self, role: str, path: str | os.PathLike[str]) -> None:
        """``path`` will be written: its folder must exist and be writable, and it must not be an input."""
        p = Path(path)
        if p.is_dir():
            raise CimcError(f"cannot write {role} {p}: it is a directory")
        folder = p.parent
        if not folder.is_dir():
            raise CimcError(f"cannot write {p}: no such directory '{folder}'")
        _probe(folder, f"cannot write {p}")
        self._refuse_input(role, p)

    def write_folder(self, role: str, path: str | os.PathLike[str]) -> None:
        """``path`` is a folder the command fills (creating it and its parents): the nearest existing one must be writable."""
        p = Path(path)
        existing = next(q for q in (p, *p.absolute().parents) if q.exists())
        if not existing.is_dir():
            raise CimcError(f"cannot write {role} {p}: '{existing}' is not a directory")
        _probe(existing, f"cannot write {role} {p}")
        self._refuse_input(role, p)

    def _refuse_input(self, role: str, p: Path) -> None:
        for input_role, q in self._inputs:
            if _same(p, q):
                raise CimcError(f"the {role} {p} is the {input_role}: cimc never writes over an input (choose another name)")


def _probe(folder: Path, message: str) -> None:
    """Create and remove a temporary file in ``folder``: what the atomic writers will do (permission bits alone do not
    tell, e.g. for root or on a read-only file system)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".cimc-probe.", dir=folder)
    except OSError as e:
        raise CimcError(f"{message}: {e.strerror} in '{folder}'") from None
    os.close(fd)
    os.unlink(name)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


class PipeTolerant:
    """A text stream that, once its reader is gone (EPIPE), discards the rest of the output instead of failing.

    The file descriptor is pointed at /dev/null, so that the interpreter's
    flush at exit does not report the closed pipe either.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._discard()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard()

    def isatty(self) -> bool:
        return not self._gone and self._stream.isatty()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def _discard(self) -> None:
        self._gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no real descriptor (a test's StringIO): nothing to redirect
            pass
