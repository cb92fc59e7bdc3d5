"""The compile driver: import an ONNX model and lower it for a given hardware description.

The default pipeline is derived from the hardware description, so that the
pass options (array size, conductance window, converter bits) and the
hardware the image is built for can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cimc.hardware import Hardware, hardware_from_dict
from cimc.importer import DimSpec, import_onnx
from cimc.ir import Module
from cimc.pass_manager import PassManager, format_pipeline, parse_pipeline
from cimc.passes.fuse_activation import identity_break_even
from cimc.passes.ranges import Ranges


def default_pipeline(hw: Hardware, calib: str | None = None, identity: str = "auto", auto_bits: bool = False) -> str:
    """The lowering pipeline with every option taken from ``hw``; ``calib`` names calibration data for ``ranges``.

    ``auto_bits``: fuse-activation picks each ramp's bits (3..8) instead of using ``nl_adc_bits``.
    """
    a, d, c = hw.array, hw.device, hw.converters
    gains = ",".join(f"{v!r}" for v in c.ramp_gains)
    analog = "true" if c.analog_partial_sums else "false"
    return ",".join([
        "decompose-rnn",
        "form-mvm",
        "lift-activation",
        "canonicalize",
        "cse",
        format_pipeline([Ranges(calib=calib or "")]),
        f"map-conductance{{g_min={d.g_min_us!r} g_max={d.g_max_us!r} granularity=column}}",
        f"tile{{rows={a.rows} cols={a.cols} analog_sum={analog} adc_bits={c.adc_bits} ramp_cols=true}}",
        "canonicalize",
        "cse",
        f"place{{rows={a.rows} cols={a.cols} arrays={a.count} ramp_cols=true}}",
        f"fuse-activation{{bits={c.nl_adc_bits} g_min={d.g_min_us!r} g_max={d.g_max_us!r} levels={d.levels} "
        f"calibration_devices={c.ramp_calibration_devices} rows={a.rows} cols={a.cols} arrays={a.count} "
        f"identity={identity} identity_min_width={identity_break_even(hw)} quantization=cumulative max_inl=1.0 "
        f"ramp_gains=\"{gains}\" auto_bits={'true' if auto_bits else 'false'}}}",
        "canonicalize",
        "schedule",
    ])


def with_nl_adc_bits(hw: Hardware, bits: int) -> Hardware:
    """``hw`` with ``nl_adc_bits`` replaced and validated again: an array too short for the ramp is refused, with the
    rows that bit width needs."""
    data = hw.to_dict()
    data["converters"]["nl_adc_bits"] = bits
    return hardware_from_dict(data, f"--nl-adc-bits {bits}")


@dataclass
class CompileOptions:
    pipeline: str | None = None
    calib: str | None = None
    identity: str = "auto"
    auto_bits: bool = False  # fuse-activation picks every ramp's bits (--nl-adc-bits auto)
    input_shapes: Mapping[str, Sequence[DimSpec]] | None = None
    print_ir_after_all: bool = False
    print_ir_after: frozenset[str] = frozenset()
    dump: Callable[[str, Module], None] | None = None
    out: TextIO | None = None


def compile_to_ir(model: str | Path, hw: Hardware, options: CompileOptions | None = None) -> Module:
    """Import ``model`` and run the lowering pipeline (the hardware's default unless one is given)."""
    opts = options or CompileOptions()
    module = import_onnx(model, opts.input_shapes)
    pipeline = opts.pipeline if opts.pipeline is not None else default_pipeline(hw, opts.calib, opts.identity, opts.auto_bits)
    passes = parse_pipeline(pipeline)
    PassManager(passes, opts.print_ir_after_all, opts.print_ir_after, opts.dump, opts.out).run(module)
    return module
