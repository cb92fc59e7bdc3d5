"""cimc: a compiler from trained recurrent networks to analog in-memory-computing crossbars.

The package is organised the way MLIR-style compilers are: a typed SSA graph IR
(:mod:`cimc.ir`) with a textual form (:mod:`cimc.printer`, :mod:`cimc.parser`),
dialects of op definitions (:mod:`cimc.dialects`), a verifier, and a pass
manager that runs named passes (:mod:`cimc.passes`) over the IR. The Python
API (:func:`compile`, :class:`CompiledModel`, :func:`verify`) is in :mod:`cimc.api`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["CompiledModel", "compile", "verify"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that importing a submodule does not pull in the whole compiler.
    if name in __all__:
        from cimc import api

        return getattr(api, name)
    raise AttributeError(f"module 'cimc' has no attribute {name!r}")
