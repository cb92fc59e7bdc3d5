"""Reading and writing ``.cir`` files with their sidecar ``.npz`` of large tensors.

The text names its sidecar in the graph's ``sidecar`` attribute, relative to
the ``.cir`` file, so a pair of files can be moved together.
"""

from __future__ import annotations

from pathlib import Path

from cimc.attributes import iter_tensors
from cimc.diagnostics import CimcError
from cimc.ir import Module
from cimc.npz import npz_bytes, write_atomic
from cimc.parser import SIDECAR_ATTR, parse_module
from cimc.printer import INLINE_LIMIT, PrintedModule, print_module


def read_ir(path: str | Path) -> Module:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CimcError(f"cannot read {path}: {e}") from None
    return parse_module(text, str(path), path.parent)


def has_large_tensors(module: Module) -> bool:
    return any(
        t.array.size > INLINE_LIMIT
        for op in module.walk()
        for v in op.attributes.values()
        for t in iter_tensors(v)
    )


def write_ir(module: Module, path: str | Path) -> PrintedModule:
    """Write ``path`` and, when the module has large tensors, the sidecar ``.npz`` beside it (same stem)."""
    path = Path(path)
    sidecar = path.with_suffix(".npz")
    if has_large_tensors(module):
        module.attributes[SIDECAR_ATTR] = sidecar.name
    else:
        module.attributes.pop(SIDECAR_ATTR, None)
    printed = print_module(module)
    if printed.resources:
        write_atomic(sidecar, npz_bytes(printed.resources))
    write_atomic(path, printed.text)
    return printed
