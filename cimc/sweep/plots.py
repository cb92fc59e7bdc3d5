"""The distribution of a sweep's lead metric (accuracy with labels) over chips, against bits and stuck rate.

Drawn as the rest of cimc draws (``cimc.plots``: a private Agg canvas, PNGs written
atomically without a software tag, so the same results give the same bytes). Each figure
has one box per x value and series (the other axes' combination: stuck rate or bits,
program noise, mapping), over that point's chips: median, quartiles, whiskers at 1.5 IQR,
and the outlier chips; the ideal-fidelity value is marked where it was run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cimc.plots import new_figure, save_png
from cimc.sweep.grid import HardwarePoint
from cimc.sweep.results import SweepResult, metric_value


def _series_label(p: HardwarePoint, axis: str) -> str:
    parts = [] if axis == "stuck" else [f"stuck {p.stuck_on_rate:g}/{p.stuck_off_rate:g}"]
    if axis == "stuck":
        parts.append(f"{p.nl_adc_bits} bits")
    parts += [f"noise {p.program_noise_us:g} uS", "defect-aware" if p.defect_aware else "plain"]
    return ", ".join(parts)


def _distribution(result: SweepResult, path: Path, axis: str, x_of: Callable[[HardwarePoint], object],
                  x_label: str) -> None:
    key, label = result.primary_metric()
    scale = 1.0 if key.endswith("relative_error") else 100.0
    xs = sorted({x_of(p) for p in result.points})  # type: ignore[type-var]
    series = sorted({_series_label(p, axis) for p in result.points})
    figure = new_figure()
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        points = [p for p in result.points if _series_label(p, axis) == name]
        positions = [xs.index(x_of(p)) + (j - (len(series) - 1) / 2) * width for p in points]
        data = [[scale * v for v in result.values(p, key)] for p in points]
        boxes = axes.boxplot(data, positions=positions, widths=0.9 * width, patch_artist=True, manage_ticks=False)
        for box in boxes["boxes"]:
            box.set_facecolor(f"C{j % 10}")
            box.set_alpha(0.6)
        boxes["boxes"][0].set_label(name)
        ideal = [(x, scale * metric_value(result.ideal[p.plain], key)) for x, p in zip(positions, points) if p.plain in result.ideal]
        if ideal:
            axes.plot(*zip(*ideal), linestyle="none", marker="_", markersize=14, color="black",
                      label="ideal (no device effects)" if j == 0 else None)
    axes.set_xticks(range(len(xs)), [str(x) for x in xs])
    axes.set_xlabel(x_label)
    axes.set_ylabel(label + (" (%)" if scale == 100.0 else ""))
    axes.set_title(f"{label} over {len(result.describe['seeds'])} chips per point")  # type: ignore[arg-type]
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    save_png(figure, path)


def plot_sweep(result: SweepResult, folder: Path) -> list[Path]:
    """Write ``<metric>_vs_bits.png`` and ``<metric>_vs_stuck_rate.png`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = result.primary_metric()[0].replace(".", "_")
    written = [folder / f"{stem}_vs_bits.png", folder / f"{stem}_vs_stuck_rate.png"]
    _distribution(result, written[0], "bits", lambda p: p.nl_adc_bits, "NL-ADC bits")
    _distribution(result, written[1], "stuck", lambda p: f"{p.stuck_on_rate:g}/{p.stuck_off_rate:g}",
                  "stuck-on / stuck-off rate")
    return written
