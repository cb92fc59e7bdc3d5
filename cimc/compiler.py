"""The compile driver: import an ONNX model and lower it for a given hardware description.

The hardware reaches every pass through one typed :class:`PassContext`, the
same description the image is then built for, so that the pass options and
the image can never disagree; the default pipeline names only the choices that
are not the hardware's (calibration data, identity columns, ramp quantization).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cimc import __version__
from cimc.collector import collector_paused
from cimc.defects import ChipMeasurement
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, hardware_from_dict
from cimc.image import Image
from cimc.importer import DimSpec, import_onnx
from cimc.ir import Module
from cimc.npz import file_sha256
from cimc.pass_manager import PassContext, PassManager, format_pipeline, parse_pipeline
from cimc.passes.emit_image import emit_image
from cimc.passes.ranges import Ranges
from cimc.ranges import CALIB_SEPARATOR
from cimc.timing import Timing


def default_pipeline(calib: str | None = None, identity: str = "auto", share_weights: bool = True,
                     input_ranges: str = "", auto_bits: bool = False, defects: bool = False) -> str:
    """The lowering pipeline; hardware parameters come from the context, ``calib`` and ``input_ranges`` as ``ranges`` takes them.

    ``share_weights=False`` leaves out share-weights: every MVM then gets its own copy of its weights.
    ``auto_bits``: fuse-activation picks each ramp's bits (3..8) instead of using ``nl_adc_bits``.
    ``defects``: end with map-defects, which maps around a measured chip (the context's ``defects``).
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
        *(["map-defects"] if defects else []),
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
    defects: ChipMeasurement | None = None  # a measured chip to map around (cimc compile --defects)


def pipeline_of(options: CompileOptions) -> str:
    """The pipeline text the options run: theirs, or the default one for their choices."""
    if options.pipeline is not None:
        return options.pipeline
    return default_pipeline(options.calib, options.identity, options.share_weights, options.input_ranges,
                            options.auto_bits, options.defects is not None)


def hardware_sha256(hw: Hardware) -> str:
    """SHA-256 of the hardware description as compiled for (``count = "auto"`` included), as canonical JSON."""
    return hashlib.sha256(json.dumps(hw.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def image_provenance(model: str | Path | None, hw: Hardware, pipeline: str | None) -> dict[str, Any]:
    """What an image records of where it came from: the model file (name, SHA-256 of its bytes), cimc, the pipeline
    and the hardware. Without a file (a model compiled from memory) the model's name and digest are null."""
    digest = name = None
    if model is not None:
        path = Path(model)
        name, digest = path.name, file_sha256(path)
    return {"model": {"name": name, "sha256": digest}, "cimc_version": __version__,
            "pipeline": None if pipeline is None else _without_folders(pipeline), "hardware_sha256": hardware_sha256(hw)}




def _without_folders(pipeline: str) -> str:
    """The pipeline with calibration paths reduced to file names: an image must not depend on where it was compiled."""
    def names(match: re.Match[str]) -> str:
        return 'calib="' + CALIB_SEPARATOR.join(Path(p).name for p in match.group(1).split(CALIB_SEPARATOR)) + '"'

    return re.sub(r'calib="([^"]*)"', names, pipeline)


def build_image(module: Module, hw: Hardware, provenance: dict[str, Any] | None = None, reference: bool = True,
                release: bool = False) -> Image:
    """The programming image of a scheduled module; see cimc.passes.emit_image.

    The module is not changed, unless ``release``: then its tiles' conductances are deleted as they are laid out
    (for a caller done with them; the peak memory is then the module's or the image's, not their sum).
    ``provenance`` defaults to what is known without the model file: cimc's version and the hardware. The cycle
    collector is paused meanwhile (the lowering creates tens of thousands of dicts and lists and keeps them all).
    """
    with collector_paused():
        image = emit_image(module, hw, provenance if provenance is not None else image_provenance(None, hw, None),
                           reference, release)
        _age_survivors()
    return image


def _age_survivors() -> None:
    """Move every object the collector tracks into its oldest generation, as surviving two collections would.

    The image's hundreds of thousands of dicts and lists are all alive, and all
    new: once the collector is on again, its next young-generation collection
    would traverse every one of them (a tenth of building a 2-layer LSTM-1024's
    image) to find nothing to free. ``gc.freeze`` + ``gc.unfreeze`` promotes
    them at no cost; cycles among them are still found by full collections.
    Skipped when the process froze objects itself (unfreezing would release them).
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


def compile_to_ir(model: str | Path, hw: Hardware, options: CompileOptions | None = None) -> Module:
    """Import ``model`` and run the lowering pipeline (the default unless one is given) for ``hw``."""
    opts = options or CompileOptions()
    timing = opts.timing if opts.timing is not None else Timing()
    with timing.phase("import"):
        module = import_onnx(model, opts.input_shapes)
    if opts.defects is not None and opts.defects.hardware_sha256 != hardware_sha256(hw):
        raise CimcError("the chip measurement was taken of an image compiled for other hardware (its hardware_sha256 "
                        "differs): measure the chip with an image compiled with the same --hw")
    passes = parse_pipeline(pipeline_of(opts))
    PassManager(passes, opts.print_ir_after_all, opts.print_ir_after, opts.dump, opts.out,
                context=PassContext(hw, opts.defects), timing=timing).run(module)
    return module
