"""Writes lstm.defects.npz, the chip measurement the map-defects golden case maps around (tests/test_golden.py).

Eight arrays of lstm.hw.toml's 16 x 6 (physically 24 x 11 with the default spare lines; the golden placement's place{rows=4 cols=6} tiles and
3-bit ramp columns of up to 16 rows, fuse-activation{bits=3 rows=16 cols=6}), each with one stuck-on and one
stuck-off weight device and one stuck ramp device at fixed positions; conductances 0 (not read: the pass then assumes every
healthy device lands on its level).
Run: .venv/bin/python tests/golden/map-defects/make_defects.py
"""

from pathlib import Path

import numpy as np

from cimc.defects import ChipMeasurement
from cimc.npz import write_atomic

stuck = {}
for k in range(8):
    s = np.zeros((24, 11), np.int8)
    s[k % 4, 0] = 1  # a G+ device stuck at G_max
    s[(k + 1) % 4, 3] = -1  # a G- device stuck at G_min
    s[3, 4:6] = (-1, 1)  # a ramp-column device (if the array has a ramp there), one sign each
    stuck[k] = s
m = ChipMeasurement(7, "golden", "golden", {k: np.zeros((24, 11)) for k in stuck}, stuck)
write_atomic(Path(__file__).with_name("lstm.defects.npz"), m.to_npz())
