"""The compile driver: import an ONNX model and lower it for a given hardware description.

The hardware reaches every pass through one typed :class:`PassContext`, the
same description the image is then built for, so that the pass options and
the image can never disagree; the default pipeline names only the choices that
are not the hardware's (calibration data, identity columns, ramp quantization).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cimc.hardware import Hardware, hardware_from_dict
from cimc.importer import DimSpec, import_onnx
from cimc.ir import Module
from cimc.pass_manager import PassContext, PassManager, format_pipeline, parse_pipeline
from cimc.passes.ranges import Ranges
from cimc.timing import Timing


def default_pipeline(calib: str | None = None, identity: str = "auto", share_weights: bool = True,
                     input_ranges: str = "", auto_bits: bool = False) -> str:
    """The lowering pipeline; hardware parameters come from the context, ``calib`` and ``input_ranges`` as ``ranges`` takes them.

    ``share_weights=False`` leaves out share-weights: every MVM then gets its own copy of its weights.
    ``auto_bits``: fuse-activation picks each ramp's bits (3..8) instead of using ``nl_adc_bits``.
    """
    return ",".join([
        "decompose-rnn",
        "form-mvm",
        "lift-activation",
        "canonicalize",
        "cse",
        format_pipeline([Ranges(calib=calib or "", input_ranges=input_ranges)]),
        "map-conductance{granularity=column}",
        "tile{ramp_cols=true}",
        "canonicalize",
        "cse",
        *(["share-weights"] if share_weights else []),
        "place{ramp_cols=true}",
        f"fuse-activation{{identity={identity} quantization=cumulative max_inl=1.0 auto_bits={'true' if auto_bits else 'false'}}}",
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
    calib: str | None = None  # the ranges pass's ``calib``: .npz files or directories joined by os.pathsep
    input_ranges: str = ""  # the ranges pass's ``input_ranges``: NAME=LO,HI entries joined by ';'
    identity: str = "auto"
    share_weights: bool = True
    auto_bits: bool = False  # fuse-activation picks every ramp's bits (--nl-adc-bits auto)
    input_shapes: Mapping[str, Sequence[DimSpec]] | None = None
    print_ir_after_all: bool = False
    print_ir_after: frozenset[str] = frozenset()
    dump: Callable[[str, Module], None] | None = None
    out: TextIO | None = None
    timing: Timing | None = None


def compile_to_ir(model: str | Path, hw: Hardware, options: CompileOptions | None = None) -> Module:
    """Import ``model`` and run the lowering pipeline (the default unless one is given) for ``hw``."""
    opts = options or CompileOptions()
    timing = opts.timing if opts.timing is not None else Timing()
    with timing.phase("import"):
        module = import_onnx(model, opts.input_shapes)
    pipeline = opts.pipeline if opts.pipeline is not None else \
        default_pipeline(opts.calib, opts.identity, opts.share_weights, opts.input_ranges, opts.auto_bits)
    passes = parse_pipeline(pipeline)
    PassManager(passes, opts.print_ir_after_all, opts.print_ir_after, opts.dump, opts.out,
                context=PassContext(hw), timing=timing).run(module)
    return module
