"""Saturation counters: how often each converter saw a value outside the range it was compiled for.

A converter clips silently: an input beyond the DAC's full scale is driven at
full scale, a column current beyond the linear ADC's range reads as its first
or last code, and one beyond an NL-ADC ramp's range reads as the ramp's end
code. When ``cimc verify`` fails, these counts say where and why. Counted per
layer (the weight block a crossbar read belongs to, with its ONNX node
location), and in total:

- ``dac_clipped`` of ``dac_inputs``: row inputs with |x| > the MVM's input
  scale. Counted once per array read; tiles that share their inputs and rows
  are read together, under the first tile's block. Identity columns are the
  exception: their full scale is their activation's informative range (the
  code no longer changes beyond it), so a value clipped there reads the right
  code and is not counted; the NL-ADC counters below judge those columns.
- ``adc_rail`` of ``adc_codes``: linear-ADC codes at 0 or at the top code.
  A value at the very edge of its range also lands there, so ``adc_clipped``
  counts those whose column value lies beyond the range by more than half a
  step: the code then misstates it by more than half an LSB.
- NL-ADC: for a saturating f (sigmoid, tanh) an end code is the right answer
  far out, so rail codes say little. ``nl_adc_beyond`` of ``nl_adc_codes``
  counts column values outside the ramp's conversion range [z_lo, z_hi];
  ``nl_adc_clipped`` those of them where f still changes: |f(z) - f(edge)| is
  more than half an output LSB, so the end code is wrong because of the range.

Counting costs a few vectorized comparisons per conversion and is done only
when the simulator is asked to (``SimulatorOptions.counters``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cimc.cim_kernels import apply_activation
from cimc.dialects.cim import is_identity_tile
from cimc.ir import Operation


@dataclass
class LayerCounts:
    block: str
    location: str
    dac_inputs: int = 0
    dac_clipped: int = 0
    adc_codes: int = 0
    adc_rail: int = 0
    adc_clipped: int = 0
    nl_adc_codes: int = 0
    nl_adc_beyond: int = 0
    nl_adc_clipped: int = 0

    def add(self, other: LayerCounts) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), int):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def clipped(self) -> int:
        """Conversions whose result the range made wrong (beyond half an LSB or beyond full scale)."""
        return self.dac_clipped + self.adc_clipped + self.nl_adc_clipped

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SaturationCounts:
    """Counts per layer, in the order the program first converts for each."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerCounts] = {}
        self._by_tile: dict[int, LayerCounts] = {}
        self._edges: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _layer(self, tile: Operation) -> LayerCounts:
        layer = self._by_tile.get(id(tile))
        if layer is None:
            block = str(tile.attributes.get("block", tile.name))
            layer = self.layers.setdefault(block, LayerCounts(block, tile.location or ""))
            self._by_tile[id(tile)] = layer
        return layer

    # Each counter first checks the extremes (two reductions, no temporary arrays): nearly every
    # conversion is in range, and only then are the offending elements counted.

    def dac(self, tile: Operation, x: np.ndarray, scale: float) -> None:
        layer = self._layer(tile)
        layer.dac_inputs += x.size
        if x.size and not is_identity_tile(tile) and (x.max() > scale or x.min() < -scale):
            layer.dac_clipped += int(np.count_nonzero(x > scale)) + int(np.count_nonzero(x < -scale))

    def adc(self, tile: Operation, z: np.ndarray, code: np.ndarray, steps: int, lo: np.ndarray, hi: np.ndarray) -> None:
        layer = self._layer(tile)
        layer.adc_codes += code.size
        if not code.size:
            return
        if code.min() == 0:  # a clipped value sits at a rail: only then look at z
            layer.adc_rail += int(np.count_nonzero(code == 0))
            layer.adc_clipped += int(np.count_nonzero(z < self._clip_edges(tile, steps, lo, hi)[0]))
        if code.max() == steps:
            layer.adc_rail += int(np.count_nonzero(code == steps))
            layer.adc_clipped += int(np.count_nonzero(z > self._clip_edges(tile, steps, lo, hi)[1]))

    def _clip_edges(self, tile: Operation, steps: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The column values beyond which a linear-ADC code is off by more than half a step (per tile, cached)."""
        edges = self._edges.get(id(tile))
        if edges is None:
            half = np.where(hi > lo, hi - lo, 1.0) / (2 * steps)
            edges = self._edges[id(tile)] = (lo - half, hi + half)
        return edges

    def dac_within(self, tile: Operation, inputs: int) -> None:
        """``inputs`` DAC inputs known to lie within the full scale (the caller checked)."""
        self._layer(tile).dac_inputs += inputs

    def nl_adc_within(self, tile: Operation, codes: int) -> None:
        """``codes`` NL-ADC conversions known to lie within their ramp's range (the caller checked)."""
        self._layer(tile).nl_adc_codes += codes

    def nl_adc(self, tile: Operation, op: Operation, z: np.ndarray, z_lo: float, z_hi: float, levels: np.ndarray,
               vread_scale: float = 1.0) -> None:
        """``z`` as read (scaled by ``vread_scale``, like the ramp), [z_lo, z_hi] the ramp's range at the nominal
        read voltage, ``levels`` the ramp's output levels."""
        layer = self._layer(tile)
        layer.nl_adc_codes += z.size
        lo, hi = z_lo * vread_scale, z_hi * vread_scale
        if not z.size or (z.min() >= lo and z.max() <= hi):
            return
        beyond = (z < lo) | (z > hi)
        out = z[beyond] / z.dtype.type(vread_scale)
        layer.nl_adc_beyond += out.size
        lsb = (float(levels.max()) - float(levels.min())) / max(len(levels) - 1, 1)
        miss = np.abs(apply_activation(op, out) - apply_activation(op, np.clip(out, z_lo, z_hi).astype(out.dtype)))
        layer.nl_adc_clipped += int(np.count_nonzero(miss > lsb / 2))

    def total(self) -> LayerCounts:
        out = LayerCounts("total", "")
        for layer in self.layers.values():
            out.add(layer)
        return out

    def as_json(self) -> dict[str, Any]:
        return {"layers": [layer.as_dict() for layer in self.layers.values()], "total": self.total().as_dict()}

    def summary(self) -> str:
        """One line: the totals, and the layer that clipped most."""
        t = self.total()
        text = (f"saturation: DAC {_part(t.dac_clipped, t.dac_inputs)} inputs clipped; linear ADC "
                f"{_part(t.adc_clipped, t.adc_codes)} codes clipped ({t.adc_rail} at the rails); NL-ADC "
                f"{_part(t.nl_adc_clipped, t.nl_adc_codes)} codes clipped ({t.nl_adc_beyond} beyond the ramp's range)")
        worst = max(self.layers.values(), key=lambda layer: layer.clipped, default=None)
        if worst is not None and worst.clipped:
            text += f"; most in {worst.block}" + (f" ({worst.location})" if worst.location else "")
        return text


def _part(count: int, total: int) -> str:
    return f"{count} of {total}" + (f" ({count / total:.2%})" if total and count else "")
