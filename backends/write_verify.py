"""Write-verify: how a device of a chip comes to hold (about) its target conductance.

RRAM is not programmed open-loop: the programmer applies a pulse train, reads
the device back and repeats until the read is within a tolerance of the target
([Hu18], [Wan22] in cimc/hardware_default.toml). cimc models it per device:

- each round, the pulse train lands the device at ``target + program_noise_us * N(0, 1)``
  (clipped at 0 uS), a fresh draw per round;
- the verify read sees that conductance times ``1 + read_noise_rel * N(0, 1)``;
- the device stops at the first round whose read is within ``verify_tolerance_us`` of
  the target, after at most ``verify_iterations`` rounds; it keeps the conductance of
  its last programming (the *residual* is that minus the target);
- a stuck device holds G_max (+1) or G_min (-1) whatever the pulses do, so its
  verify fails unless its target happens to be its stuck value.

The draws come from streams keyed by (chip seed, stream, array, programming
index): programming an image twice onto one chip (index 0, 1, ...) gives two
independent noise realizations, while the stuck positions (a property of the
chip, ``backends/chip.py``) stay where they are. Every round draws for every
device, converged or not, so that a device's noise does not depend on how many
rounds its neighbours needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.hardware import Hardware

# Stream numbers beside backends/chip.py's STUCK, PROGRAM, VREAD, READ (1..4).
VERIFY_READ, TESTER_READ = 5, 6


def program_stream(seed: int, kind: int, array: int, programming: int) -> np.random.Generator:
    """The generator of one per-programming effect of array ``array`` of chip ``seed``."""
    return np.random.default_rng([seed, kind, array, programming])


def position_normals(hw: Hardware, seed: int, kind: int, array: int, programming: int, shape: tuple[int, int],
                     draws: int | None = None) -> np.ndarray:
    """Standard normals per device position of an array of ``shape`` (``draws`` of them per device if given).

    The rows x cols devices draw from the programming's stream exactly as on
    hardware without spare lines; the spare lines' devices from a stream of
    their own, so that declaring spares changes no draw of the main lines.
    """
    a = hw.array
    lead = () if draws is None else (draws,)
    main = program_stream(seed, kind, array, programming).standard_normal((*lead, a.rows, a.cols))
    if shape[0] <= a.rows and shape[1] <= a.cols:
        return main[..., :shape[0], :shape[1]]
    full = (max(shape[0], a.rows), max(shape[1], a.cols))
    out = np.random.default_rng([seed, kind, array, programming, 1]).standard_normal((*lead, *full))
    out[..., :a.rows, :a.cols] = main
    return out[..., :shape[0], :shape[1]]


@dataclass(frozen=True)
class Programmed:
    """The outcome of write-verify on one array: what each device holds and whether its verify succeeded."""

    g_us: np.ndarray  # conductance after the last round (uS); 0 for an unformed device
    verified: np.ndarray  # bool: the last verify read was within tolerance (True for unformed devices)
    rounds: np.ndarray  # rounds each device took (0 for unformed devices)


def write_verify(hw: Hardware, target_us: np.ndarray, stuck: np.ndarray, seed: int, array: int,
                 programming: int, program_kind: int) -> Programmed:
    """Program ``target_us`` (0 = leave unformed) onto one array whose stuck devices are ``stuck`` (+1/-1/0)."""
    n, d = hw.nonideality, hw.device
    used = target_us > 0
    shape = target_us.shape
    pulses = position_normals(hw, seed, program_kind, array, programming, shape, n.verify_iterations)
    reads = position_normals(hw, seed, VERIFY_READ, array, programming, shape, n.verify_iterations)
    rail = np.where(stuck > 0, d.g_max_us, d.g_min_us)
    g = np.zeros(shape)
    done = ~used
    rounds = np.zeros(shape, np.int32)
    for i in range(n.verify_iterations):
        active = ~done
        landing = np.where(stuck != 0, rail, np.maximum(target_us + n.program_noise_us * pulses[i], 0.0))
        g = np.where(active, landing, g)
        rounds += active
        read = g * (1.0 + n.read_noise_rel * reads[i])
        done = done | (active & (np.abs(read - target_us) <= n.verify_tolerance_us))
    return Programmed(np.where(used, g, 0.0), done, rounds)
