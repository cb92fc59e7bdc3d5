"""Resource limits checked before the work starts, so that a model too large for this machine is refused in a
second, with its numbers, rather than after an hour or by the kernel's out-of-memory killer.

The chip's own limit (a fixed ``[array] count`` the model needs more arrays
than) is the ``place`` pass's: it names the number of arrays the model needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from cimc.diagnostics import CimcError

# Peak resident memory of a compile over the model's weight bytes: 4.1x on a 2-layer LSTM-1024 and 3.0x at hidden
# 2048 (bench/README.md, "Memory"; the ratio falls with size as Python's ~65 MB fixed share does), rounded up to 5
# so that a model that would fit is never refused. A compile estimated above the available memory is refused.
COMPILE_PEAK_FACTOR = 5
# A model file this small is parsed (without its external data) to add the sizes of its external weight files.
_PARSE_LIMIT = 16 << 20
MEMORY_ENV = "CIMC_MEMORY_LIMIT"  # bytes; overrides the machine's available memory (batch systems, tests)


def available_memory() -> int | None:
    """Bytes this process may still use: ``$CIMC_MEMORY_LIMIT`` if set, else the kernel's MemAvailable (None if unknown)."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            return int(override)
        except ValueError:
            raise CimcError(f"{MEMORY_ENV} must be a number of bytes, got '{override}'") from None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def model_bytes(path: str | Path) -> int:
    """The model's bytes: the file, plus its external data files inside its folder (others are refused when loading)."""
    path = Path(path)
    size = path.stat().st_size
    if size > _PARSE_LIMIT:
        return size  # a large file holds its weights itself
    import onnx  # here, not at the top: check_allocation (every archive read, cimc run) needs no onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (garbage is refused, with its reason, by the importer)
        return size
    folder = path.parent.resolve()
    seen: set[Path] = set()
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), None)
        if location is None:
            continue
        target = (folder / location).resolve()
        if folder not in target.parents or target in seen or not target.is_file():
            continue
        seen.add(target)
        size += target.stat().st_size
    return size


def check_compile_memory(path: str | Path) -> None:
    """Refuse a model whose compile would need more memory than is available (estimated from its bytes)."""
    available = available_memory()
    if available is None:
        return
    weights = model_bytes(path)
    need = COMPILE_PEAK_FACTOR * weights
    if need > available:
        raise CimcError(f"{path} holds {_gb(weights)} of weights; compiling it needs about {_gb(need)} "
                        f"({COMPILE_PEAK_FACTOR}x, the measured peak), but only {_gb(available)} of memory is available")


def check_allocation(nbytes: int, what: str, factor: int = 1) -> None:
    """Refuse to allocate ``nbytes`` (used ``factor`` times over) for ``what`` when the memory is not there."""
    available = available_memory()
    if available is not None and nbytes * factor > available:
        raise CimcError(f"{what} take {_gb(nbytes)}" + (f" (about {_gb(nbytes * factor)} while in use)" if factor > 1 else "")
                        + f", but only {_gb(available)} of memory is available")
