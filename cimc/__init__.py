"""cimc: a compiler from trained recurrent networks to analog in-memory-computing crossbars.

The package is organised the way MLIR-style compilers are: a typed SSA graph IR
(:mod:`cimc.ir`) with a textual form (:mod:`cimc.printer`, :mod:`cimc.parser`),
dialects of op definitions (:mod:`cimc.dialects`), a verifier, and a pass
manager that runs named passes (:mod:`cimc.passes`) over the IR.
"""

__version__ = "0.1.0"
