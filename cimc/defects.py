"""A chip measurement: what ``cimc chip`` writes and ``cimc compile --defects`` reads (docs/faults.md).

It is a plain data type of the core, so the compiler can take a measurement
without importing the tester that made it (``backends/tester.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.diagnostics import CimcError
from cimc.npz import load_npz, npz_bytes


@dataclass(frozen=True)
class ChipMeasurement:
    """One chip as its tester saw it: per array the read conductances and the inferred stuck devices."""

    seed: int
    hardware_sha256: str
    image_sha256: str
    g_us: dict[int, np.ndarray]  # array -> [rows, cols] read conductance (uS); 0 where untested
    stuck: dict[int, np.ndarray]  # array -> [rows, cols] int8: +1 stuck at G_max, -1 at G_min, 0 healthy/untested

    def to_npz(self) -> bytes:
        # Scalars are stored as 1-element arrays (npz_bytes writes C-contiguous arrays, at least 1-d).
        arrays: dict[str, np.ndarray] = {"seed": np.array(self.seed, np.int64),
                                         "hardware_sha256": np.array(self.hardware_sha256),
                                         "image_sha256": np.array(self.image_sha256),
                                         "arrays": np.array(sorted(self.g_us), np.int64)}
        for k in sorted(self.g_us):
            arrays[f"array{k}.g_us"] = self.g_us[k]
            arrays[f"array{k}.stuck"] = self.stuck[k]
        return npz_bytes(arrays)



def load_measurement(path: str | Path) -> ChipMeasurement:
    """Read a ``cimc chip`` measurement back, refusing a file that is not one (one clear line)."""
    try:
        data = load_npz(path)
    except (OSError, ValueError) as e:
        raise CimcError(f"cannot read chip measurement {path}: {e}") from None
    missing = [key for key in ("seed", "hardware_sha256", "image_sha256", "arrays") if key not in data]
    if missing:
        raise CimcError(f"{path} is not a chip measurement (`cimc chip`): it lacks {', '.join(missing)}")
    g_us, stuck = {}, {}
    for k in data["arrays"].tolist():
        g, s = data.get(f"array{k}.g_us"), data.get(f"array{k}.stuck")
        if g is None or s is None or g.shape != s.shape or g.ndim != 2:
            raise CimcError(f"{path}: array {k} needs g_us and stuck of one [rows, cols] shape")
        if not np.isin(s, (-1, 0, 1)).all():
            raise CimcError(f"{path}: array {k}'s stuck mask holds values other than -1, 0, +1")
        g_us[int(k)], stuck[int(k)] = g.astype(np.float64), s.astype(np.int8)
    seed, hw_sha, image_sha = (data[key].reshape(-1)[0].item() for key in ("seed", "hardware_sha256", "image_sha256"))
    return ChipMeasurement(int(seed), str(hw_sha), str(image_sha), g_us, stuck)
