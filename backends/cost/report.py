"""The cost report of one image: the compiled NL-ADC design and its two baselines, on the same mapping."""

from __future__ import annotations

from cimc.backends.cost.baselines import ratios, schemes
from cimc.backends.cost.model import price
from cimc.backends.cost.program import StepProgram, read_program
from cimc.backends.cost.summary import OP_CONVENTION, summarize
from cimc.backends.cost.tables import format_report
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.image import Image

__all__ = ["cost_report", "format_report", "ramp_fit"]

DEFAULT_SEQ_LEN = 1


def ramp_fit(program: StepProgram, ramp_rows: dict[int, int]) -> dict:
    """Whether every ramp, at the width costed, fits its array's word lines (else the mapping must be recompiled)."""
    tallest = max(ramp_rows.values(), default=0)
    return {"ramp_rows_max": tallest, "array_rows": program.rows, "fits": tallest <= program.rows}


def cost_report(image: Image, seq_len: int | None = None, batch: int = 1, bits: int | None = None,
                dac_bits: int | None = None, hardware: Hardware | None = None) -> dict:
    """Every number of ``cimc report`` for ``image``: one entry per scheme, the ratios, the ramps' fit.

    ``seq_len``: time steps per inference for loops whose trip count is the
    (symbolic) sequence length; per-step numbers do not depend on it.
    ``bits``: re-cost every NL-ADC conversion at this width without
    recompiling (``sweep.py`` explains what changes). ``dac_bits``: cost the
    input DACs at this width instead of the hardware's. ``hardware``: the
    image's description with other [cost] figures (``with_cost_file``).
    """
    for name, value in (("NL-ADC", bits), ("DAC", dac_bits)):
        if value is not None and not 1 <= value <= 16:
            raise CimcError(f"{name} bits must lie in 1..16 (got {value})")
    hw = hardware or image.hardware
    program = read_program(image, seq_len or DEFAULT_SEQ_LEN, batch)
    priced = [price(program, hw, scheme) for scheme in schemes(bits, dac_bits)]
    summaries = {p.scheme.name: summarize(p) for p in priced}
    compiled_bits = sorted({r.bits for r in program.ramps.values()})
    return {
        "model": image.manifest["model"].get("source"),
        "hardware": {"arrays": len(program.arrays), "rows": program.rows, "cols": program.cols,
                     "clock_ghz": hw.cost.clock_ghz, "dac_bits": dac_bits or hw.converters.dac_bits,
                     "adc_bits": hw.converters.adc_bits, "digital_lanes": hw.cost.digital_lanes},
        "seq_len": program.seq_len,
        "seq_len_given": seq_len is not None,
        "seq_len_used": program.symbolic_trips,
        "batch": batch,
        "nl_adc_bits": bits if bits is not None else (compiled_bits[0] if len(compiled_bits) == 1 else compiled_bits),
        "recompiled": False,
        "ramps": ramp_fit(program, priced[0].ramp_rows),
        "op_convention": OP_CONVENTION,
        "schemes": summaries,
        "ratios": ratios(summaries),
    }
