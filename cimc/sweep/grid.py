"""The hardware points of a sweep: NL-ADC bits x stuck rates x programming noise x defect-aware mapping.

A point is what an image is compiled for (its hardware description) plus whether each chip
gets a defect-aware image of its own (``cimc compile --defects`` from that chip's
measurement). Every axis the command line leaves out keeps the base hardware's value, so a
point always names a complete, validated hardware description.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, hardware_from_dict

DEFECT_AWARE_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}


@dataclass(frozen=True, order=True)
class HardwarePoint:
    """One point of the grid; ``order=True`` sorts points by bits, then stuck rates, noise, mapping."""

    nl_adc_bits: int
    stuck_on_rate: float
    stuck_off_rate: float
    program_noise_us: float
    defect_aware: bool

    @property
    def plain(self) -> HardwarePoint:
        """The point whose (plain) image this point's chips start from: the same hardware, no defect-aware mapping."""
        return HardwarePoint(self.nl_adc_bits, self.stuck_on_rate, self.stuck_off_rate, self.program_noise_us, False)

    def hardware(self, base: Hardware) -> Hardware:
        """``base`` with this point's values, validated again (a ramp too tall for the arrays is refused here)."""
        data = base.to_dict()
        data["converters"]["nl_adc_bits"] = self.nl_adc_bits
        data["nonideality"].update(stuck_on_rate=self.stuck_on_rate, stuck_off_rate=self.stuck_off_rate,
                                   program_noise_us=self.program_noise_us)
        return hardware_from_dict(data, f"sweep point {self.label()}")

    def label(self) -> str:
        return (f"{self.nl_adc_bits} bits, stuck {self.stuck_on_rate:g}/{self.stuck_off_rate:g}, "
                f"noise {self.program_noise_us:g} uS, {'defect-aware' if self.defect_aware else 'plain'}")

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def grid(base: Hardware, bits: Sequence[int] | None = None, stuck_rates: Sequence[tuple[float, float]] | None = None,
         program_noise_us: Sequence[float] | None = None, defect_aware: str = "off") -> list[HardwarePoint]:
    """Every combination of the axes, sorted; an axis left as None takes ``base``'s value alone."""
    if defect_aware not in DEFECT_AWARE_CHOICES:
        raise CimcError(f"--defect-aware {defect_aware}: expected one of {', '.join(DEFECT_AWARE_CHOICES)}")
    n = base.nonideality
    points = sorted(HardwarePoint(b, on, off, noise, aware) for b, (on, off), noise, aware in itertools.product(
        bits or [base.converters.nl_adc_bits], stuck_rates or [(n.stuck_on_rate, n.stuck_off_rate)],
        program_noise_us or [n.program_noise_us], DEFECT_AWARE_CHOICES[defect_aware]))
    for point in points:
        point.hardware(base)  # every point must be a valid description before any work starts
    return points
