"""map-conductance: weights become differential conductance pairs within [G_min, G_max].

A weight w in column j is stored as w = (G+ - G-) / s_j with
G+ = G_min + s_j max(w, 0) and G- = G_min + s_j max(-w, 0), so one device of
each pair sits at G_min (the pair's zero) and the largest |w| of the scale's
group reaches G_max. ``granularity=column`` gives every column its own
scale s_j, using each column's full range; ``granularity=block`` shares one
scale over the whole weight block, so every array that holds part of it reads
in the same units. Conductances stay float here (float64, in uS): quantizing
them to programmable levels is the image's job, so exact execution of the IR
remains possible.

With per-segment DAC full scales (``row_scale`` r_i, set by ``ranges``) the
crossbar stores w_i r_i: the DAC drives row i with x_i / r_i, so the column
current is still sum_i w_i x_i (in units of the reference full scale) and
g_scale / input_scale keeps meaning uS per unit of z. The r_i are powers of
two, so w_i r_i is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.attributes import Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.ir import Module, Operation
from cimc.pass_manager import ModulePass, from_hardware, register_pass

RANGE_ATTRS = ("input_scale", "row_scale", "z_lo", "z_hi")


def conductance_pair(weights: np.ndarray, g_min: float, g_max: float, granularity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(g_pos, g_neg, g_scale) in uS for a [rows, cols] weight matrix; see the module docstring."""
    w = weights.astype(np.float64, copy=False)
    peak = np.maximum(w.max(axis=0, initial=0.0), -w.min(axis=0, initial=0.0))  # max |w| per column, without |w|
    if granularity != "column":
        peak = np.full(w.shape[1], peak.max(initial=0.0))
    span = g_max - g_min
    scale = np.where(peak > 0, span / np.where(peak > 0, peak, 1.0), span)
    # g = min(g_min + max(+-w, 0) * scale, g_max), each step in place: no weight-sized temporaries beyond g itself.
    g_pos, g_neg = np.maximum(w, 0.0), np.negative(w)
    np.maximum(g_neg, 0.0, out=g_neg)
    for g in (g_pos, g_neg):
        np.multiply(g, scale, out=g)
        np.add(g, g_min, out=g)
        np.minimum(g, g_max, out=g)
    return g_pos, g_neg, scale


def map_matvec(op: Operation, g_min: float, g_max: float, granularity: str) -> None:
    weights = op.attributes["weights"]
    assert isinstance(weights, Tensor)
    row_scale = op.attributes.get("row_scale")
    stored = weights.array if not isinstance(row_scale, Tensor) else weights.array.astype(np.float64) * row_scale.array[:, None]
    g_pos, g_neg, scale = conductance_pair(stored, g_min, g_max, granularity)
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
