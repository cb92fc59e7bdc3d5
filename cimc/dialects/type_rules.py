"""Type rules shared by op definitions: dtype agreement and broadcasting with symbolic dims."""

from __future__ import annotations

from cimc.dialects.registry import VerifyError
from cimc.ir import Operation, Value
from cimc.types import Dim, TensorType


def present(op: Operation) -> list[Value]:
    return [v for v in op.operands if v is not None]


def same_dtype(op: Operation) -> None:
    """All present operands and all results share one element type."""
    types = [v.type for v in present(op)] + [r.type for r in op.results]
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise VerifyError(op, f"type mismatch: '{op.name}' needs one element type, got {', '.join(sorted(dtypes))}")


def broadcast_dim(a: Dim, b: Dim) -> Dim | bool:
    """The broadcast of two dims, ``False`` when they cannot broadcast."""
    if a == 1:
        return b
    if b == 1 or a == b:
        return a
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return False
    return None  # two different symbols: only known at run time


def broadcast_shapes(shapes: list[tuple[Dim, ...]]) -> tuple[Dim, ...] | None:
    """Numpy-style multidirectional broadcast; None when shapes are incompatible."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        for i, d in enumerate(padded):
            r = broadcast_dim(out[i], d)
            if r is False:
                return None
            out[i] = r  # type: ignore[assignment]
    return tuple(out)


def shapes_compatible(declared: tuple[Dim, ...], inferred: tuple[Dim, ...]) -> bool:
    """Whether a declared shape can hold what a rule inferred (unknown dims match anything)."""
    if len(declared) != len(inferred):
        return False
    return all(a is None or b is None or a == b or isinstance(a, str) or isinstance(b, str) for a, b in zip(declared, inferred))


def elementwise(op: Operation) -> None:
    """Broadcasting elementwise op: one dtype, and the result shape is the broadcast of the operands."""
    same_dtype(op)
    shapes = [v.type.shape for v in present(op)]
    inferred = broadcast_shapes(shapes)
    if inferred is None:
        raise VerifyError(op, f"type mismatch: operand shapes {', '.join(map(str, (v.type for v in present(op))))} do not broadcast")
    for res in op.results:
        if not shapes_compatible(res.type.shape, inferred):
            raise VerifyError(op, f"type mismatch: result type {res.type} does not match the broadcast shape {TensorType(res.type.dtype, inferred)}")


def unary_same_type(op: Operation) -> None:
    """One operand, one result of the same element type and a compatible shape.

    Shapes are compared for compatibility, not equality, because shape
    inference may name the same run-time extent with two different symbols.
    """
    (x,) = present(op)
    res = op.results[0].type
    if res.dtype != x.type.dtype or not shapes_compatible(res.shape, x.type.shape):
        raise VerifyError(op, f"type mismatch: result {res} differs from operand {x.type}")
