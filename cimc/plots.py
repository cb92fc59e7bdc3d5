"""Figures of a synthesised NL-ADC ramp (optional: needs matplotlib).

matplotlib is imported inside each function so the compiler itself never
depends on it. Figures are drawn on a private Agg canvas (no pyplot, so no
global backend or figure state is touched) and written atomically and
deterministically: the PNG carries no software tag, so the same ramp gives the
same bytes and a figure can be kept under version control or compared in a test.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cimc.diagnostics import CimcError
from cimc.dialects.cim import activation_key
from cimc.hardware import Hardware
from cimc.ir import Module
from cimc.npz import write_atomic
from cimc.ramp import Ramp

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DPI = 100
_SIZE_IN = (8.0, 5.0)
# Points of the z grid the transfer curve is drawn on.
_CURVE_POINTS = 4001


def new_figure() -> Figure:
    """A headless figure of cimc's plot size (Agg canvas: no display, the same pixels on every machine)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CimcError("plots need matplotlib: pip install 'cimc[plots]'") from None
    figure = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write a PNG so that a reader never sees a half-written file and equal figures give equal bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def plot_transfer(ramp: Ramp, path: str | os.PathLike[str]) -> None:
    """The NL-ADC transfer curve: the staircase y_code(z) the devices produce, over the ideal f.

    The staircase comes from the device-level comparison (:meth:`Ramp.codes`),
    so it shows what the realised conductances do, and the realised thresholds
    are marked on the midpoints they should cross.
    """
    figure = new_figure()
    transfer = ramp.transfer
    margin = 0.05 * (transfer.z_hi - transfer.z_lo)
    z = np.linspace(transfer.z_lo - margin, transfer.z_hi + margin, _CURVE_POINTS)
    axes = figure.add_subplot()
    axes.plot(z, transfer(z), color="0.6", linewidth=2.0, label=f"ideal {transfer.name}")
    axes.plot(z, ramp.outputs(ramp.codes(z)), color="C0", linewidth=1.0, label="NL-ADC output y_code")
    midpoints = (ramp.levels_y[:-1] + ramp.levels_y[1:]) / 2
    axes.plot(ramp.realized_thresholds, midpoints, linestyle="none", marker="|", markersize=8, color="C3",
              label="realised thresholds")
    axes.axvspan(transfer.z_lo - margin, transfer.z_lo, color="0.93")
    axes.axvspan(transfer.z_hi, transfer.z_hi + margin, color="0.93")
    axes.set_xlim(z[0], z[-1])
    axes.set_xlabel("column value z")
    axes.set_ylabel("output")
    axes.set_title(
        f"{transfer.name}, {ramp.bits}-bit NL-ADC ({ramp.quantization}): "
        f"max error {ramp.max_output_error_lsb():.3f} LSB"
    )
    axes.legend(loc="best")
    axes.grid(True, alpha=0.3)
    save_png(figure, path)


def plot_ramp_conductances(ramp: Ramp, path: str | os.PathLike[str]) -> None:
    """Each step's conductance (bars coloured by device count, infeasible steps marked)
    and the cumulative ramp level against its target on a second axis."""
    figure = new_figure()
    axes = figure.add_subplot()
    k = np.arange(1, len(ramp.steps) + 1)
    conductance = np.array([s.conductance_us for s in ramp.steps])
    devices = np.array([len(s.device_us) for s in ramp.steps])
    for count in np.unique(devices):
        chosen = devices == count
        label = "no device (zero width)" if count == 0 else f"{count} device{'s' if count > 1 else ''}"
        axes.bar(k[chosen], conductance[chosen], width=0.8, color="0.7" if count == 0 else f"C{min(count - 1, 9)}",
                 label=label)
    infeasible = np.array([not s.feasible for s in ramp.steps])
    if infeasible.any():
        axes.plot(k[infeasible], conductance[infeasible], linestyle="none", marker="x", color="red",
                  markersize=7, label="infeasible (< G_min)")
    axes.axhline(ramp.g_min_us, color="red", linewidth=0.8, linestyle=":")
    axes.axhline(ramp.g_max_us, color="0.3", linewidth=0.8, linestyle=":")
    axes.set_xlabel("ramp step k")
    axes.set_ylabel("step conductance (µS)")
    level_axes = axes.twinx()
    level_axes.plot(k, ramp.ramp_g_per_z * ramp.thresholds, color="0.4", linewidth=2.0, label="target level a·g·T_k")
    level_axes.plot(k, ramp.ramp_levels_us, color="black", linewidth=0.8, marker=".", markersize=3,
                    label="realised level")
    level_axes.set_ylabel("ramp level (µS)")
    axes.set_title(
        f"{ramp.transfer.name} ramp, {ramp.bits} bits ({ramp.quantization}): {ramp.rows} rows, "
        f"offset {ramp.offset_us:.4g} µS"
    )
    handles, labels = axes.get_legend_handles_labels()
    level_handles, level_labels = level_axes.get_legend_handles_labels()
    axes.legend(handles + level_handles, labels + level_labels, loc="upper center", fontsize="small")
    save_png(figure, path)


def plot_module_ramps(module: Module, hw: Hardware, folder: Path) -> list[Path]:
    """Plot every distinct NL-ADC ramp of a compiled module: its transfer curve and its conductances."""
    from cimc.ramp import ramp_from_op

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[tuple] = set()
    for op in module.walk():
        if op.name != "cim.ramp":
            continue
        a = op.attributes
        key = (activation_key(op), a["bits"], a["z_lo"], a["z_hi"], a["g_per_z"])
        if key in seen:
            continue
        seen.add(key)
        ramp = ramp_from_op(op, hw)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"ramp{a['array']}_{a['array_col']}_{activation_key(op)}_{a['bits']}bit").strip("_")
        for suffix, draw in (("transfer", plot_transfer), ("conductances", plot_ramp_conductances)):
            path = folder / f"{stem}.{suffix}.png"
            draw(ramp, path)
            written.append(path)
    return written
