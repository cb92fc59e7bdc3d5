"""map-conductance: weights become differential conductance pairs within [G_min, G_max].

A weight w in column j is stored as w = (G+ - G-) / s_j with
G+ = G_min + s_j max(w, 0) and G- = G_min + s_j max(-w, 0), so one device of
each pair sits at G_min (the pair's zero) and the largest |w| of the scale's
group reaches G_max. ``granularity=column`` gives every column its own
scale s_j, using each column's full range; ``granularity=block`` shares one
scale over the whole weight block, so every array that holds part of it reads
in the same units. Conductances stay float here (in uS; float32 for float32
weights, see ``conductance_pair``): quantizing them to programmable levels is
the image's job, so exact execution of the IR remains possible.

With per-segment DAC full scales (``row_scale`` r_i, set by ``ranges``) the
crossbar stores w_i r_i: the DAC drives row i with x_i / r_i, so the column
current is still sum_i w_i x_i (in units of the reference full scale) and
g_scale / input_scale keeps meaning uS per unit of z. The r_i are powers of
two, so w_i r_i is exact.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from cimc.attributes import EXACT_REFCOUNTS, Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.ir import Module, Operation
from cimc.pass_manager import ModulePass, from_hardware, register_pass

RANGE_ATTRS = ("input_scale", "row_scale", "z_lo", "z_hi")


_BLOCK_ELEMENTS = 1 << 15  # float64 temporaries of this many elements (256 KiB: they stay in cache) while mapping


def conductance_dtype(weights: np.ndarray) -> np.dtype:
    """float32 conductances for float32 (or narrower) weights, float64 otherwise: see :func:`conductance_pair`."""
    return np.dtype(np.float32) if weights.dtype.itemsize <= 4 else np.dtype(np.float64)


def conductance_pair(weights: np.ndarray, g_min: float, g_max: float, granularity: str,
                     row_scale: np.ndarray | None = None,
                     g_pos_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(g_pos, g_neg, g_scale) in uS for a [rows, cols] weight matrix times ``row_scale`` per row; see the module docstring.

    ``g_pos_out`` (of the shape and :func:`conductance_dtype`) receives G+; it may be ``weights`` itself, whose
    every block of rows is read before G+ is written over it.

    Every conductance is computed in float64 and rounded once to :func:`conductance_dtype`, a block of
    rows at a time (no weights-sized float64 temporaries). Why float32 suffices for float32 weights:
    a stored G in [G_min, G_max] is off by at most 2^-24 G, so w = (G+ - G-) / s is off by at most
    2^-24 (G+ + G-) / s <= 2^-24 (G_max + G_min) / (G_max - G_min) * max_col |w|, about one float32 ulp of
    the column's largest weight: the rounding a float32 model already has. A column sum over K rows then
    moves by at most K of those (sqrt(K) of them typically), the order of float32 accumulation error in
    onnxruntime itself, and far below a device level ((G_max - G_min) / (levels - 1), 2^17 times coarser
    at 128 levels), which is what the image programs.
    """
    rows, cols = weights.shape
    block = max(1, _BLOCK_ELEMENTS // max(1, cols))
    factors = None if row_scale is None else row_scale.astype(np.float64, copy=False)[:, None]
    buffer = np.empty((block, cols))  # float64: a block's w r, then t = w r s, then -t (cache-sized, reused)

    def stored(r0: int, r1: int) -> np.ndarray:
        """w r of rows r0:r1 in float64 (w widened exactly by the product), in the reused buffer."""
        out = buffer[:r1 - r0]
        if factors is None:
            out[...] = weights[r0:r1]
        else:
            np.multiply(weights[r0:r1], factors[r0:r1], out=out)
        return out

    peak = np.zeros(cols)  # max |w r| per column, without |w|
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        w = weights[r0:r1] if factors is None else stored(r0, r1)  # max and min are exact in any float type
        np.maximum(peak, np.maximum(w.max(axis=0, initial=0.0), -w.min(axis=0, initial=0.0)), out=peak)
    if granularity != "column":
        peak = np.full(cols, peak.max(initial=0.0))
    span = g_max - g_min
    scale = np.where(peak > 0, span / np.where(peak > 0, peak, 1.0), span)
    dtype = conductance_dtype(weights)
    g_pos = np.empty((rows, cols), dtype) if g_pos_out is None else g_pos_out
    g_neg = np.empty((rows, cols), dtype)
    part = np.empty((block, cols))
    for r0 in range(0, rows, block):
        # g+ = min(g_min + max(w, 0) s, g_max) and g- = min(g_min + max(-w, 0) s, g_max), from t = w s (s > 0):
        # max(w, 0) s = max(t, 0) and max(-w, 0) s = max(-t, 0), exactly (NaN's sign included).
        r1 = min(rows, r0 + block)
        t = stored(r0, r1)
        np.multiply(t, scale, out=t)
        _clamped_shift(t, g_min, g_max, part[:r1 - r0], g_pos[r0:r1])
        _clamped_shift(np.negative(t, out=t), g_min, g_max, part[:r1 - r0], g_neg[r0:r1])
    return g_pos, g_neg, scale


def _clamped_shift(t: np.ndarray, g_min: float, g_max: float, scratch: np.ndarray, out: np.ndarray) -> None:
    """``out = min(g_min + max(t, 0), g_max)``, every step in float64 (in ``scratch``), rounded once into ``out``'s type."""
    np.maximum(t, 0.0, out=scratch)
    np.add(scratch, g_min, out=scratch)
    np.minimum(scratch, g_max, out=out, casting="same_kind")




def _private_weights(op: Operation) -> np.ndarray | None:
    """``op``'s weights array if nothing else holds it nor its Tensor, so G+ may be written over it; else None.

    Then the MVM's weights, G+ and G- are never alive at once (the pass's memory peak falls by one MVM's weight
    bytes) and G+ needs no fresh pages. The op's attributes hold the Tensor and the Tensor the array; the local
    name and getrefcount's argument add one each.
    """
    tensor = op.attributes["weights"]
    if not (EXACT_REFCOUNTS and isinstance(tensor, Tensor) and sys.getrefcount(tensor) == 3):
        return None
    array = tensor.array
    if sys.getrefcount(array) != 3 or not array.flags.owndata or not array.flags.c_contiguous \
            or array.dtype != conductance_dtype(array):
        return None
    return array


def map_matvec(op: Operation, g_min: float, g_max: float, granularity: str) -> None:
    private = _private_weights(op)
    if private is not None:
        del op.attributes["weights"]  # from here on the op does not hold what is overwritten with G+
        private.setflags(write=True)
    weights = private if private is not None else op.attributes["weights"].array  # type: ignore[union-attr]
    row_scale = op.attributes.get("row_scale")
    g_pos, g_neg, scale = conductance_pair(weights, g_min, g_max, granularity,
                                           row_scale.array if isinstance(row_scale, Tensor) else None, private)
    block = str(op.attributes.get("block", "mvm"))
    attrs = {
        "g_pos": Tensor.adopt(g_pos, key=f"{block}.g_pos"),
        "g_neg": Tensor.adopt(g_neg, key=f"{block}.g_neg"),
        "g_scale": Tensor.adopt(scale, key=f"{block}.g_scale"),
        "bias_rows": op.attributes.get("bias_rows", 0),
        "block": block,
        **{k: op.attributes[k] for k in RANGE_ATTRS if k in op.attributes},
    }
    b = Builder(op.parent, op, op.location)  # type: ignore[arg-type]
    mapped = b.value("cim.crossbar_mvm", op.operands, op.results[0].type, attrs, op.results[0].name)
    op.results[0].replace_all_uses_with(mapped)
    op.erase()


@register_pass
@dataclass(frozen=True)
class MapConductance(ModulePass):
    """Map every MVM's weights to differential conductance pairs with a per-column or per-block scale."""

    name = "map-conductance"
    g_min: float | None = from_hardware(lambda hw: hw.device.g_min_us, "device.g_min_us")
    g_max: float | None = from_hardware(lambda hw: hw.device.g_max_us, "device.g_max_us")
    granularity: str = "column"

    def apply(self, module: Module) -> bool:
        if not 0 <= self.g_min < self.g_max:
            raise CimcError(f"map-conductance needs 0 <= g_min < g_max, got g_min={self.g_min}, g_max={self.g_max}")
        if self.granularity not in ("column", "block"):
            raise CimcError(f"map-conductance granularity must be 'column' or 'block', got '{self.granularity}'")
        ops = [op for op in module.walk() if op.name == "cim.matvec"]
        for op in ops:
            map_matvec(op, self.g_min, self.g_max, self.granularity)
        return bool(ops)
