"""Tensor types of SSA values: an element type and a static or symbolic shape.

Recurrent models keep batch and sequence length open until run time, so a
dimension is either an ``int``, a symbolic name (``"batch"``) that stands for
the same extent wherever it appears, or ``None`` for an extent nobody knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Dim = int | str | None

DTYPES: dict[str, np.dtype] = {
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "u8": np.dtype(np.uint8),
    "u16": np.dtype(np.uint16),
    "u32": np.dtype(np.uint32),
    "u64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
}
_NAME_OF_DTYPE = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: np.dtype | type) -> str:
    """The IR spelling of a numpy dtype; raises ``KeyError`` for unsupported ones."""
    return _NAME_OF_DTYPE[np.dtype(dtype)]


@dataclass(frozen=True, slots=True)
class TensorType:
    """The type of every SSA value: ``f32[seq, batch, 40]``; a scalar is ``f32[]``."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown element type '{self.dtype}'")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("f")

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(format_dim(d) for d in self.shape)}]"

    @staticmethod
    def of_array(array: np.ndarray) -> TensorType:
        return TensorType(dtype_name(array.dtype), tuple(int(d) for d in array.shape))


def format_dim(dim: Dim) -> str:
    return "?" if dim is None else str(dim)


def scalar(dtype: str = "i64") -> TensorType:
    return TensorType(dtype, ())
