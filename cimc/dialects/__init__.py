"""Dialects: ``builtin`` (constants, return), ``onnx`` (as imported), ``cim`` (lowered hardware ops)."""

from cimc.dialects import builtin, cim, onnx  # noqa: F401  (importing registers the ops)
from cimc.dialects.registry import OpDef, VerifyError, dialects, lookup

__all__ = ["OpDef", "VerifyError", "dialects", "lookup"]
