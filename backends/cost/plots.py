"""Figures of a cost report: energy and area breakdowns, one time step's timeline, the width sweep.

Drawn like ``cimc/plots.py`` (a private Agg canvas, PNGs without a software
tag, written atomically), from the report's numbers only, so a figure shows
exactly what the table and the JSON say.
"""

from __future__ import annotations

from pathlib import Path

from cimc.backends.cost.model import COMPONENTS
from cimc.plots import new_figure, save_png

_PHASE_COLOURS = {"read": "C0", "nonlinear convert": "C1", "linear convert": "C4", "digital activation": "C3",
                  "digital": "C2", "loop": "0.6"}


def _stacked(report: dict, key: str, per_step: bool, title: str, unit: str, path: Path) -> None:
    figure = new_figure()
    axes = figure.add_subplot()
    names = list(report["schemes"])
    bottoms = [0.0] * len(names)
    for i, component in enumerate(COMPONENTS):
        heights = [report["schemes"][n]["components"].get(component, {}).get(key) or 0.0 for n in names]
        if not any(heights):
            continue
        axes.bar(names, heights, bottom=bottoms, color=f"C{i % 10}", label=component)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.set_ylabel(unit)
    axes.set_title(title + (" (one time step)" if per_step else ""))
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.grid(True, axis="y", alpha=0.3)
    figure.subplots_adjust(right=0.72)
    save_png(figure, path)


def plot_timeline(report: dict, path: Path) -> None:
    """One time step of each scheme as a bar per phase: what sets each stage's length, in order."""
    figure = new_figure()
    axes = figure.add_subplot()
    names = list(report["schemes"])
    labelled: set[str] = set()
    for row, name in enumerate(names):
        for phase in report["schemes"][name]["per_step"]["timeline"]:
            what = phase["what"]
            axes.barh(row, phase["latency_ns"], left=phase["start_ns"], color=_PHASE_COLOURS.get(what, "0.5"),
                      edgecolor="white", label=None if what in labelled else what)
            labelled.add(what)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlabel("time within one step (ns)")
    loop = next(iter(report["schemes"].values()))["per_step"]["loop"] or "the program"
    axes.set_title(f"timeline of one time step of {loop}")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(labelled), fontsize="small")
    axes.grid(True, axis="x", alpha=0.3)
    figure.subplots_adjust(left=0.22, bottom=0.2)
    save_png(figure, path)


def plot_sweep(result: dict, path: Path) -> None:
    """TOPS/W and peak TOPS against NL-ADC width, per scheme."""
    figure = new_figure()
    left = figure.add_subplot(1, 2, 1)
    right = figure.add_subplot(1, 2, 2)
    bits = [row["bits"] for row in result["sweep"]]
    for i, name in enumerate(result["sweep"][0]["schemes"]):
        efficiency = [row["schemes"][name]["per_step"]["tops_per_w"] for row in result["sweep"]]
        throughput = [row["schemes"][name]["total"]["peak_tops"] for row in result["sweep"]]
        left.plot(bits, efficiency, marker="o", color=f"C{i}", label=name)
        right.plot(bits, throughput, marker="o", color=f"C{i}", label=name)
    for axes, label in ((left, "TOPS/W (one step)"), (right, "peak TOPS")):
        axes.set_xlabel("NL-ADC bits")
        axes.set_ylabel(label)
        axes.set_yscale("log")
        axes.set_xticks(bits)
        axes.grid(True, alpha=0.3)
    left.legend(fontsize="small")
    figure.suptitle(f"{result['model']}: cost against converter width (same mapping)")
    figure.subplots_adjust(wspace=0.35)
    save_png(figure, path)


def write_plots(report: dict, folder: Path, sweep: dict | None = None) -> list[Path]:
    """energy.png, area.png, timeline.png (and sweep.png) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "energy.png", folder / "area.png", folder / "timeline.png"]
    _stacked(report, "energy_pj_per_step", True, "energy by component", "energy (pJ)", written[0])
    _stacked(report, "area_mm2", False, "area by component", "area (mm²)", written[1])
    plot_timeline(report, written[2])
    if sweep is not None:
        written.append(folder / "sweep.png")
        plot_sweep(sweep, written[-1])
    return written
