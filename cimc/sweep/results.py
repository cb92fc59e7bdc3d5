"""A sweep's results: one row per (hardware point, chip seed), a summary per point, JSON, CSV, table.

Everything here is a function of the rows, and rows are sorted by (point, seed) before
anything is written, so the same sweep gives byte-identical JSON and CSV whatever the
number of workers and the order in which tasks finished (no timings in the files).

The summary of a metric over a point's chips is its mean, sample standard deviation
(ddof = 1; 0 for a single chip), 5th percentile and worst chip. "5th percentile" is
counted from the bad end: the 5th percentile of accuracy and of an agreement (95 % of
chips do at least as well), the 95th of an error or of the bits per label (95 % of chips
do no worse); numpy's linear interpolation between order statistics.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cimc.npz import write_atomic
from cimc.sweep.grid import HardwarePoint

FORMAT = "cimc-sweep"
VERSION = 1
# Per-output metrics (cimc.sweep.metrics) and whether a larger value is better.
OUTPUT_METRICS = {"relative_error": False, "max_abs_error": False, "argmax_agreement": True,
                  "decision_agreement": True}
LABEL_METRICS = {"accuracy": True, "bits_per_label": False}


def summarize(values: Sequence[float], higher_is_better: bool) -> dict[str, float]:
    """mean, std (ddof 1), p5 (5th percentile from the bad end) and worst of one metric over a point's chips."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "p5": float(np.percentile(v, 5 if higher_is_better else 95)),
            "worst": float(v.min() if higher_is_better else v.max())}


@dataclass
class SweepResult:
    """The rows of a sweep with what they were measured on (``describe``: model, inputs, labels, seeds...)."""

    describe: dict[str, object]
    points: list[HardwarePoint]
    rows: list[dict[str, object]]  # each: the point's fields, seed, image_sha256, outputs {...}, [accuracy, bits_per_label]
    ideal: dict[HardwarePoint, dict[str, object]] = field(default_factory=dict)  # per plain point: its ideal-fidelity run
    images: dict[HardwarePoint, str] = field(default_factory=dict)  # per plain point: its image's SHA-256

    def __post_init__(self) -> None:
        self.points = sorted(self.points)
        self.rows = sorted(self.rows, key=lambda r: (self._point_of(r), r["seed"]))

    @staticmethod
    def _point_of(row: dict[str, object]) -> HardwarePoint:
        return HardwarePoint(**{k: row[k] for k in HardwarePoint.__dataclass_fields__})  # type: ignore[arg-type]

    def rows_of(self, point: HardwarePoint) -> list[dict[str, object]]:
        return [r for r in self.rows if self._point_of(r) == point]

    @property
    def labelled(self) -> bool:
        return any("accuracy" in r for r in self.rows)

    def output_names(self) -> list[str]:
        return sorted(self.rows[0]["outputs"]) if self.rows else []  # type: ignore[arg-type]

    def summary(self, point: HardwarePoint) -> dict[str, object]:
        """Per metric, its summary over the point's chips (see the module docstring)."""
        rows = self.rows_of(point)
        out: dict[str, object] = {"chips": len(rows)}
        if self.labelled:
            for metric, better in LABEL_METRICS.items():
                out[metric] = summarize([r[metric] for r in rows], better)  # type: ignore[misc]
        outputs: dict[str, object] = {}
        for name in self.output_names():
            per = {}
            for metric, better in OUTPUT_METRICS.items():
                values = [r["outputs"][name][metric] for r in rows]  # type: ignore[index]
                if all(v is not None for v in values):
                    per[metric] = summarize(values, better)
            outputs[name] = per
        out["outputs"] = outputs
        return out

    def to_json(self) -> str:
        points = []
        for p in self.points:
            entry: dict[str, object] = {**p.to_dict(), "summary": self.summary(p),
                                        "plain_image_sha256": self.images.get(p.plain),
                                        "ideal": self.ideal.get(p.plain)}
            points.append(entry)
        document = {"format": FORMAT, "version": VERSION, **self.describe, "points": points, "rows": self.rows}
        return json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n"

    def csv_columns(self) -> list[str]:
        columns = [*HardwarePoint.__dataclass_fields__, "seed"]
        if self.labelled:
            columns += list(LABEL_METRICS)
        columns += [f"{name}.{metric}" for name in self.output_names() for metric in OUTPUT_METRICS]
        return columns + ["image_sha256"]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = self.csv_columns()
        writer.writerow(columns)
        for row in self.rows:
            cells = []
            for column in columns:
                name, _, metric = column.rpartition(".")
                value = row["outputs"][name][metric] if name in row["outputs"] else row[column]  # type: ignore[index,operator]
                cells.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
            writer.writerow(cells)
        return buffer.getvalue()

    def write_json(self, path: str) -> None:
        write_atomic(path, self.to_json())

    def write_csv(self, path: str) -> None:
        write_atomic(path, self.to_csv())

    def primary_metric(self) -> tuple[str, str]:
        """(key, label) of the metric tables and plots lead with: accuracy with labels, else the first output's
        argmax (or, for a Sigmoid's output, decision) agreement where it has one, else its relative error."""
        if self.labelled:
            return "accuracy", "accuracy"
        name = self.output_names()[0]
        for metric in ("argmax_agreement", "decision_agreement"):
            if self.rows[0]["outputs"][name].get(metric) is not None:  # type: ignore[index,union-attr]
                return f"{name}.{metric}", f"{name} {metric.replace('_', ' ')}"
        return f"{name}.relative_error", f"{name} relative error"

    def values(self, point: HardwarePoint, key: str) -> list[float]:
        """One metric over a point's chips; ``key`` is a row key or ``OUTPUT.metric``."""
        name, _, metric = key.rpartition(".")
        return [r["outputs"][name][metric] if name else r[key] for r in self.rows_of(point)]  # type: ignore[index]

    def table(self) -> str:
        """The summary per hardware point, as a markdown table (fractions in %)."""
        key, label = self.primary_metric()
        percent = not key.endswith("relative_error")
        scale, unit = (100.0, " (%)") if percent else (1.0, "")
        higher = not key.endswith("relative_error")
        columns = ["NL-ADC bits", "stuck on / off", "program noise (uS)", "mapping", "chips", "ideal",
                   f"{label}{unit}: mean ± std", "5th percentile", "worst"]
        if self.labelled:
            columns.append("bits per label (mean)")
        columns += [f"{n} rel. error (mean)" for n in self.output_names()]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for p in self.points:
            s = summarize(self.values(p, key), higher)
            ideal = self.ideal.get(p.plain)
            ideal_value = "–" if ideal is None else f"{scale * metric_value(ideal, key):.2f}"
            cells = [str(p.nl_adc_bits), f"{p.stuck_on_rate:g} / {p.stuck_off_rate:g}", f"{p.program_noise_us:g}",
                     "defect-aware" if p.defect_aware else "plain", str(len(self.rows_of(p))), ideal_value,
                     f"{scale * s['mean']:.2f} ± {scale * s['std']:.2f}", f"{scale * s['p5']:.2f}",
                     f"{scale * s['worst']:.2f}"]
            if self.labelled:
                cells.append(f"{np.mean(self.values(p, 'bits_per_label')):.4f}")
            cells += [f"{100 * np.mean(self.values(p, f'{n}.relative_error')):.2f} %" for n in self.output_names()]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def metric_value(metrics: dict[str, object], key: str) -> float:
    name, _, metric = key.rpartition(".")
    return metrics["outputs"][name][metric] if name else metrics[key]  # type: ignore[index,return-value]
