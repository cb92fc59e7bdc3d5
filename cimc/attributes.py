"""Attribute values attached to ops.

Attributes are immutable so that ops can be compared and hashed (CSE) and so
that a pass cannot change an attribute another op shares. The Python types are
``int``, ``float``, ``str``, tuples of those, and :class:`Tensor`.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterator

import numpy as np

from cimc.types import TensorType


# CPython before 3.14 counts every reference in sys.getrefcount (3.14 may borrow the ones on its stack): a pass may
# then tell that it alone holds a tensor's array and reuse its memory (map-conductance, tile).
EXACT_REFCOUNTS = sys.implementation.name == "cpython" and sys.version_info < (3, 14)


class Tensor:
    """An immutable dense tensor: constants and weights.

    ``key`` is only a naming hint for the sidecar ``.npz`` the printer writes
    large tensors to; it is not part of the value, so two tensors with equal
    contents compare equal whatever their keys.
    """

    __slots__ = ("array", "key", "_digest", "_min", "_max", "_floor", "origin")

    def __init__(self, array: np.ndarray, key: str | None = None) -> None:
        arr = np.array(array, copy=True, order="C")
        arr.setflags(write=False)
        self.array: np.ndarray = arr
        self.key = key
        self._digest: bytes | None = None
        self._min: float | None = None
        self._max: float | None = None
        self._floor: float | None = None  # a lower bound of the elements known without a pass over them
        self.origin: tuple[Tensor, tuple[slice, ...]] | None = None  # a window's tensor and index (see window)

    @classmethod
    def adopt(cls, array: np.ndarray, key: str | None = None, lower_bound: float | None = None) -> Tensor:
        """A tensor over ``array`` itself, without the copy ``Tensor()`` makes.

        For arrays a pass has just built and hands over (weights-sized
        conductance matrices, where a copy is a memory pass and a peak of its
        own): the array becomes read-only, and the caller must hold no other
        writable view of it. A C-contiguous view of an immutable ``bytes``
        object (onnx's ``to_array`` of an initializer's raw data, a private copy
        of it) is taken as it is: no one can write to it. Anything else is
        copied as by ``Tensor()``. ``lower_bound``: a bound the elements are
        known to be at or above (:meth:`known_lower_bound`), for an array cut
        from a tensor whose bound is known.
        """
        if type(array) is not np.ndarray or not array.flags.c_contiguous \
                or (not array.flags.owndata and type(_memory_of(array)) is not bytes):
            tensor = cls(array, key)
        else:
            array.setflags(write=False)
            tensor = cls.__new__(cls)
            tensor.array, tensor.key, tensor._digest, tensor._min, tensor._max = array, key, None, None, None
            tensor.origin = None
        tensor._floor = lower_bound
        return tensor

    def window(self, index: tuple[slice, ...], key: str | None = None) -> Tensor:
        """The tensor of a basic slice of this one, over the same (read-only) array: no copy.

        For the pieces a pass cuts a weights-sized tensor into (``tile``'s row tiles of an MVM's column chunk,
        fuse-activation's of a rescaled chunk): a copy of each would be a pass over the weights and a peak of its own. Unlike other tensors' arrays, a
        window's is not C-contiguous in general (the digest hashes its elements in C order all the same). This
        tensor's minimum, if known (and not NaN, so that the window has no NaN either), bounds the window's from
        below: see :meth:`any_below` and :meth:`all_above`. ``origin`` says where it was cut from, so that a pass
        can treat the windows of one tensor together (fuse-activation rescales a column chunk's tiles at once).
        """
        tensor = Tensor.__new__(Tensor)
        tensor.array, tensor.key, tensor._digest, tensor._min, tensor._max, tensor._floor = \
            self.array[index], key, None, None, None, self.known_lower_bound()
        tensor.origin = (self, index)
        return tensor

    def view(self, array: np.ndarray, key: str | None = None) -> Tensor:
        """The tensor of ``array``, a view of this tensor's array (a transpose, a slice of it), without a copy.

        For weights a pass re-arranges and a later pass copies once: decompose-rnn gives each gate MVM the
        transposed gate rows of the imported W and R as views, and form-mvm's merge of an MVM's parts is their one
        copy (a copy in each would be two passes over the weights, and the weights held twice). ``array`` must be
        read-only and lie in this tensor's memory (a ValueError otherwise): then no one can write it, as no one can
        write this tensor's. Like a window's, the view's array is not C-contiguous in general.
        """
        if array.flags.writeable or _memory_of(array) is not _memory_of(self.array) \
                or not np.may_share_memory(array, self.array):
            raise ValueError("Tensor.view needs a read-only view of the tensor's own array")
        tensor = Tensor.__new__(Tensor)
        tensor.array, tensor.key, tensor._digest, tensor._min, tensor._max, tensor._floor = array, key, None, None, None, None
        tensor.origin = None
        return tensor

    def contiguous(self, key: str | None = None) -> Tensor:
        """This tensor with a C-contiguous array of its own (a copy of a window's elements; itself if it has one),
        its known bounds kept: ``tile`` copies each column chunk of an MVM once and cuts its row tiles from it."""
        if self.array.flags.c_contiguous and self.origin is None:
            return self
        tensor = Tensor.adopt(np.array(self.array, order="C", copy=True), key)
        tensor._min, tensor._max, tensor._floor = self._min, self._max, self._floor
        return tensor

    def renamed(self, key: str | None) -> Tensor:
        """This tensor under another ``key``, over the same (read-only) array: no copy, the digest shared."""
        tensor = Tensor.__new__(Tensor)
        tensor.array, tensor.key, tensor._digest, tensor._min, tensor._max, tensor._floor = \
            self.array, key, self._digest, self._min, self._max, self._floor
        tensor.origin = self.origin
        return tensor

    @property
    def type(self) -> TensorType:
        return TensorType.of_array(self.array)

    @property
    def digest(self) -> bytes:
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.array.dtype).encode())
            h.update(repr(self.array.shape).encode())
            h.update(np.ascontiguousarray(self.array))  # the buffer's bytes, copied only for a window
            self._digest = h.digest()
        return self._digest

    def extrema(self) -> tuple[float, float]:
        """(min, max) of the elements, (inf, -inf) if there are none, NaN if any is NaN; each computed once.

        The verifier checks value bounds (conductances >= 0, row scales in (0, 1]) after every pass:
        the tensor is immutable, so one pass over its data serves every run.
        """
        return self.minimum(), self.maximum()

    def known_lower_bound(self) -> float | None:
        """A bound every element is at or above, known without a pass over them: the minimum if it was computed (and
        is not NaN: a NaN element is below nothing), else the bound the tensor was cut with; None if neither."""
        return self._min if self._min is not None and not math.isnan(self._min) else self._floor

    def minimum(self) -> float:
        """The smallest element (see :meth:`extrema`); the conductance rules need only this one."""
        if self._min is None:
            self._min = float(self.array.min()) if self.array.size else np.inf
        return self._min

    def any_below(self, bound: float) -> bool:
        """``minimum() < bound`` (so NaN elements are not below anything), without a pass over the elements when
        the known lower bound (a window's) already says no."""
        if self._floor is not None and self._floor >= bound:
            return False
        return self.minimum() < bound

    def all_above(self, bound: float) -> bool:
        """``minimum() > bound`` (False if any element is NaN), without a pass over the elements when the known
        lower bound (a window's) already says yes."""
        if self._floor is not None and self._floor > bound:
            return True
        return self.minimum() > bound

    def maximum(self) -> float:
        """The largest element (see :meth:`extrema`)."""
        if self._max is None:
            self._max = float(self.array.max()) if self.array.size else -np.inf
        return self._max

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tensor) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Tensor({self.type}, key={self.key!r})"


def _memory_of(array: np.ndarray) -> object:
    """The object that owns ``array``'s memory: the array itself, the array it is a view of, or a non-array buffer."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner


AttrValue = int | float | str | Tensor | tuple["AttrValue", ...]


def is_annotation(name: str) -> bool:
    """Dotted attribute names (``sched.stage``) are annotations any op may carry, as in MLIR; they never change what an op computes."""
    return "." in name


def normalize_attr(value: object) -> AttrValue:
    """Turn lists, numpy scalars and arrays into the immutable attribute types."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (str, Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return Tensor(value)
    if isinstance(value, (list, tuple)):
        if all(type(v) in _PLAIN for v in value):
            return tuple(value)  # the common case, a list of plain scalars (a ramp's device levels): nothing to convert
        return tuple(normalize_attr(v) for v in value)
    raise TypeError(f"unsupported attribute value {value!r} of type {type(value).__name__}")


_PLAIN = (int, float, str)  # types normalize_attr keeps as they are (bool, a subclass of int, is converted)


def attr_kind(value: AttrValue) -> str:
    """A short kind name used by op definitions: int, float, str, tensor, ints, floats, strs, list."""
    if isinstance(value, tuple):
        types = {type(v) for v in value}
        if len(types) == 1 and next(iter(types)) in _SCALAR_KINDS:  # the common case, long lists of one scalar type
            return _SCALAR_KINDS[next(iter(types))] + "s"
        kinds = {attr_kind(v) for v in value}
        if len(kinds) == 1 and next(iter(kinds)) in ("int", "float", "str"):
            return next(iter(kinds)) + "s"
        return "list"
    if isinstance(value, bool):
        return "int"
    return {**_SCALAR_KINDS, Tensor: "tensor"}[type(value)]


_SCALAR_KINDS: dict[type, str] = {int: "int", float: "float", str: "str"}


def iter_tensors(value: AttrValue) -> Iterator[Tensor]:
    """Every tensor inside an attribute value, lists included."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from iter_tensors(item)


def attrs_equal(a: AttrValue, b: AttrValue) -> bool:
    """Equality where NaN equals NaN, so that ops carrying NaN still CSE and compare."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(attrs_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
