"""The ``cimc`` command line.

Every subcommand exits 0 on success, 2 on bad input (with one ``error:`` line
on stderr and no traceback) and 1 on an internal compiler error.

Careless commands are answered at the edge, before any work starts: every
numeric option has a range (argparse ``type=`` functions below), every input
path must be a readable file, every output path must have a writable folder
and must not name an input (``cimc.cli_io``), and ``--print-ir-after``
must name a pass of the pipeline. A closed stdout or stderr pipe (``| head``)
ends the printing, not the command.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cimc import __version__
from cimc.cli_io import PathPlan, PipeTolerant
from cimc.diagnostics import CimcError

if TYPE_CHECKING:
    from cimc.ir import Module

# Every other cimc module is imported by the command that needs it, not here: building the parser (every command,
# --help included) then costs no numpy, onnx or networkx, and `cimc dump` or `cimc run` no pass registry.


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper end when ``high`` is None)."""
    span = f"at least {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got '{text}'") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    return parse


def label_spec(text: str) -> tuple[str, str | None]:
    """``--labels KEY[:OUTPUT]`` (verify, sweep) as (key, output or None); a malformed one is a usage error (exit 2)."""
    from cimc.labels import parse_label_spec

    try:
        return parse_label_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    """An argparse type: a finite, non-negative time in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a time in seconds, got '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite time >= 0 s, got {text}")
    return value


SEED_MAX = 2**63 - 1  # numpy's generators take any non-negative integer; 63 bits keep seeds printable as int64
BITS_MAX = 16  # the hardware's converter resolutions lie in 1..16 (cimc/hardware.py)


def _check_printed_passes(pipeline: str, printed: Sequence[str] | None) -> None:
    """``--print-ir-after PASS`` must name a pass the pipeline runs (a typo would otherwise print nothing, silently)."""
    if not printed:
        return
    from cimc.pass_manager import parse_pipeline, registered_passes

    ran = [p.name for p in parse_pipeline(pipeline)]
    for name in printed:
        if name not in ran:
            known = "" if name in registered_passes() else "unknown pass; "
            raise CimcError(f"--print-ir-after {name}: {known}the pipeline runs {', '.join(ran) or 'no passes'}")


def _plan_ir_output(plan: PathPlan, path: str) -> None:
    """A ``.cir`` output and the sidecar ``.npz`` beside it, which write_ir may write too."""
    plan.write("output", path)
    plan.write("sidecar of the output", Path(path).with_suffix(".npz"))


def _cmd_opt(args: argparse.Namespace) -> int:
    from cimc.hardware import load_hardware
    from cimc.pass_manager import PassContext, PassManager, parse_pipeline
    from cimc.printer import print_module
    from cimc.timing import Timing, terminal_stream

    plan = PathPlan()
    plan.read("input", args.file)
    if args.hw:
        plan.read("hardware description", args.hw)
    if args.output:
        _plan_ir_output(plan, args.output)
    if args.dump_ir:
        plan.write_folder("--dump-ir folder", args.dump_ir)
    passes = parse_pipeline(args.pipeline)
    _check_printed_passes(args.pipeline, args.print_ir_after)
    context = PassContext(load_hardware(args.hw)) if args.hw else None
    timing = Timing(progress=terminal_stream())
    from cimc.irfile import read_ir, write_ir  # here, not at the top: the textual-IR parser (lark) is for .cir files

    with timing.phase("parse"):
        module = read_ir(args.file)
    dump = _dumper(Path(args.dump_ir)) if args.dump_ir else None
    PassManager(passes, args.print_ir_after_all, frozenset(args.print_ir_after or ()), dump,
                context=context, timing=timing).run(module)
    with timing.phase("output"):
        if args.output:
            write_ir(module, args.output)
        else:
            sys.stdout.write(print_module(module).text)
    if args.timing:
        sys.stderr.write(timing.table())
    return 0


def _dumper(folder: Path):  # noqa: ANN202
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CimcError(f"cannot create {folder}: {e.strerror}") from None
    counter = iter(range(1, 10_000))

    def dump(pass_name: str, module: Module) -> None:
        from cimc.irfile import write_ir

        write_ir(module, folder / f"{next(counter):02d}-{pass_name}.cir")

    return dump


def parse_input_shape(text: str) -> tuple[str, list[int | str | None]]:
    """``NAME=D0,D1,...`` where each dim is a positive integer, a symbol name, or ``?`` to keep the model's."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,..., got '{text}'")
    out: list[int | str | None] = []
    for d in dims.split(","):
        d = d.strip()
        if d == "?":
            out.append(None)
        elif d.isdigit():
            if int(d) < 1:
                raise argparse.ArgumentTypeError(f"dim '{d}' in '{text}' must be at least 1")
            out.append(int(d))
        elif d.isidentifier():
            out.append(d)
        else:
            raise argparse.ArgumentTypeError(f"dim '{d}' in '{text}' is neither a size, a symbol nor '?'")
    return name, out


def _cmd_import(args: argparse.Namespace) -> int:
    from cimc.importer import import_onnx
    from cimc.printer import print_module

    plan = PathPlan()
    plan.read("input model", args.model)
    if args.output:
        _plan_ir_output(plan, args.output)
    module = import_onnx(args.model, dict(args.input_shape or ()))
    if args.output:
        from cimc.irfile import write_ir

        write_ir(module, args.output)
        print(f"wrote {args.output}")
        return 0
    printed = print_module(module)
    sys.stdout.write(printed.text)
    if printed.resources:
        print(f"note: {len(printed.resources)} large tensors are shown by key only; "
              "use -o FILE.cir to write them to FILE.npz as well", file=sys.stderr)
    return 0


def _nl_adc_bits(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits or 'auto', got '{text}'") from None
    if not 1 <= bits <= BITS_MAX:
        raise argparse.ArgumentTypeError(f"must be a number of bits in 1..{BITS_MAX} or 'auto', got {bits}")
    return bits


def _load_defects(path: str | None):  # noqa: ANN202
    """The chip measurement of ``--defects`` (docs/faults.md), or None."""
    if path is None:
        return None
    from cimc.defects import load_measurement

    return load_measurement(path)


def _cmd_compile(args: argparse.Namespace) -> int:
    from cimc.compiler import CompileOptions, compile_to_ir, default_pipeline
    from cimc.hardware import load_hardware
    from cimc.limits import check_compile_memory
    from cimc.pass_manager import parse_pipeline
    from cimc.passes.fuse_activation import fusion_summary
    from cimc.ranges import CALIB_SEPARATOR, range_warning
    from cimc.report import mapping_summary
    from cimc.timing import Timing, terminal_stream

    plan = PathPlan()
    plan.read("input model", args.model)
    if args.hw:
        plan.read("hardware description", args.hw)
    for calib in args.calib or ():
        plan.read("calibration data", calib, folder_ok=True)
    if args.defects:
        plan.read("--defects measurement", args.defects)
    writes_ir = bool(args.output) and Path(args.output).suffix == ".cir"
    if writes_ir:
        _plan_ir_output(plan, args.output)
    elif args.output:
        plan.write("output", args.output)
    if args.plots:
        plan.write_folder("--plots folder", args.plots)
    if args.dump_ir:
        plan.write_folder("--dump-ir folder", args.dump_ir)
    hw = load_hardware(args.hw)
    if args.nl_adc_bits not in (None, "auto"):
        from cimc.compiler import with_nl_adc_bits

        hw = with_nl_adc_bits(hw, args.nl_adc_bits)
    calib = CALIB_SEPARATOR.join(str(Path(c).resolve()) for c in args.calib) if args.calib else None
    input_ranges = ";".join(f"{n}={lo!r},{hi!r}" for n, lo, hi in args.input_range or ())
    pipeline = args.pipeline if args.pipeline is not None else \
        default_pipeline(calib, args.identity, input_ranges=input_ranges, auto_bits=args.nl_adc_bits == "auto",
                         defects=args.defects is not None)
    parse_pipeline(pipeline)  # a bad pipeline is refused before the import
    _check_printed_passes(pipeline, args.print_ir_after)
    check_compile_memory(args.model)
    timing = Timing(progress=terminal_stream())
    options = CompileOptions(
        pipeline=pipeline,
        input_shapes=dict(args.input_shape or ()),
        print_ir_after_all=args.print_ir_after_all,
        print_ir_after=frozenset(args.print_ir_after or ()),
        dump=_dumper(Path(args.dump_ir)) if args.dump_ir else None,
        timing=timing,
        defects=_load_defects(args.defects),
    )
    module = compile_to_ir(args.model, hw, options)
    image = None
    if writes_ir:
        from cimc.irfile import write_ir

        with timing.phase("write IR"):
            write_ir(module, args.output)
    elif args.output:
        from cimc.compiler import build_image, image_provenance, pipeline_of

        if not any(op.name == "cim.tile_mvm" and "array" in op.attributes for op in module.walk()):
            raise CimcError(f"the pipeline mapped nothing onto crossbar arrays (it ran no 'place'), so an image would "
                            f"have nothing to program and would run in float: {args.output} not written (use the "
                            "default pipeline, or -o OUT.cir for the IR)")
        with timing.phase("build image"):
            # release: what follows reads no conductances of the module (its summaries), so module and image are not both held
            image = build_image(module, hw, image_provenance(args.model, hw, pipeline_of(options)), not args.no_reference,
                                release=True)
        with timing.phase("write image"):
            image.save(args.output)
    sys.stdout.write(mapping_summary(module, hw, None if writes_ir else args.output))
    sys.stdout.write(f"ranges: {module.attributes.get('ranges', 'not computed')}\n")
    warning = range_warning(module)
    if warning:
        print(warning, file=sys.stderr)
    sys.stdout.write(fusion_summary(module))
    sys.stdout.write(str(module.attributes.get("defects.summary", "")))
    if args.plots:
        from cimc.plots import plot_module_ramps

        for path in plot_module_ramps(module, hw, Path(args.plots)):
            print(f"wrote {path}")
    if args.timing:
        sys.stderr.write(timing.table())
    if args.output:
        print(f"wrote {args.output}" + ("" if image is None else f" ({len(image.manifest['arrays'])} arrays)"))
    else:
        print("note: nothing written (give -o OUT.cimg for the programming image, or -o OUT.cir for the lowered IR)",
              file=sys.stderr)
    return 0


def _input_range(text: str) -> tuple[str, float, float]:
    from cimc.ranges import parse_input_range

    try:
        return parse_input_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _load_inputs(path: str) -> dict:
    from cimc.npz import load_npz

    return load_npz(path, "inputs")


def _load_for_fidelity(path: str, fidelity: str):  # noqa: ANN202
    """The image at ``path``, refused at an analog fidelity when nothing of it is on arrays (it would run in float)."""
    from cimc.image import load_image

    image = load_image(path)
    if fidelity != "exact" and not image.manifest["arrays"]:
        raise CimcError(f"{path} maps nothing onto crossbar arrays (compiled without 'place'), so --fidelity {fidelity} "
                        "would run it in float and tell nothing about the hardware: compile it with the default "
                        "pipeline, or use --fidelity exact")
    return image


def _cmd_dump(args: argparse.Namespace) -> int:
    import json

    from cimc.image import format_summary, image_summary, load_image

    PathPlan().read("image", args.image)
    summary = image_summary(load_image(args.image))
    sys.stdout.write(json.dumps(summary, indent=1, sort_keys=True) + "\n" if args.json else format_summary(summary))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from cimc.backends.simulator import Simulator, SimulatorOptions, terminal_progress
    from cimc.feeds import check_feeds
    from cimc.npz import npz_bytes, write_atomic

    plan = PathPlan()
    plan.read("image", args.image)
    plan.read("inputs", args.inputs)
    plan.write("output", args.output)
    image = _load_for_fidelity(args.image, args.fidelity)
    inputs = check_feeds(image, _load_inputs(args.inputs), args.inputs)
    options = SimulatorOptions(args.fidelity, args.seed, args.drift_time, counters=True)
    simulator = Simulator(image, options)
    outputs = simulator.run(inputs, progress=terminal_progress)
    write_atomic(args.output, npz_bytes(outputs))
    if simulator.saturation is not None:
        print(simulator.saturation.summary())
    print(f"wrote {args.output}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from cimc.backends.simulator import SimulatorOptions
    from cimc.feeds import check_feeds
    from cimc.npz import write_atomic
    from cimc.labels import split_labels
    from cimc.verification import verify_image

    plan = PathPlan()
    plan.read("model", args.model)
    plan.read("image", args.image)
    if args.inputs:
        plan.read("inputs", args.inputs)
    if args.defects:
        plan.read("--defects measurement", args.defects)
    if args.json:
        plan.write("--json report", args.json)
    if args.labels and not args.inputs:
        raise CimcError("--labels reads the labels from the inputs file: give --inputs IN.npz")
    image = _load_for_fidelity(args.image, args.fidelity)
    labels = None
    raw = _load_inputs(args.inputs) if args.inputs else None
    if args.labels:
        key, output = args.labels
        raw, values = split_labels(raw, key, args.inputs)
        labels = (values, output)
    inputs = check_feeds(image, raw, args.inputs) if raw is not None else None
    report = verify_image(args.model, image, inputs, args.samples,
                          SimulatorOptions(args.fidelity, args.seed, args.drift_time), _load_defects(args.defects), labels)
    sys.stdout.write(report.table())
    if args.json:
        write_atomic(args.json, report.to_json())
    return 0 if report.passed else 1


def _cmd_chip(args: argparse.Namespace) -> int:
    from cimc.backends.tester import measure_file

    plan = PathPlan()
    plan.read("image", args.image)
    plan.write("output", args.output)
    m = measure_file(args.image, args.seed, args.output)
    used = sum(int((g > 0).sum()) for g in m.g_us.values())
    on = sum(int((s > 0).sum()) for s in m.stuck.values())
    off = sum(int((s < 0).sum()) for s in m.stuck.values())
    print(f"chip {m.seed}: {used} devices read on {len(m.g_us)} arrays; stuck as inferred: {on} at G_max, {off} at G_min")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cimc.backends.cost.command import run

    return run(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from cimc.sweep.command import run

    return run(args)


def _cmd_passes(args: argparse.Namespace) -> int:
    from cimc.pass_manager import registered_passes

    for name, cls in registered_passes().items():
        print(f"{name}: {cls.summary()}")
        for field, typ in cls.option_types().items():
            print(f"    {field}: {typ.__name__} = {cls.option_default(field)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cimc", description="Compile trained recurrent networks (ONNX) to analog crossbar hardware.")
    parser.add_argument("--version", action="version", version=f"cimc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser("opt", help="run a pass pipeline over a .cir file", description="Parse FILE.cir, run PIPELINE, print or write the result.")
    opt.add_argument("file", metavar="FILE.cir")
    opt.add_argument("-p", "--pipeline", default="", help="comma-separated passes, e.g. 'canonicalize,cse' (default: none)")
    opt.add_argument("-o", "--output", metavar="OUT.cir", help="write here (and OUT.npz for large tensors) instead of stdout")
    opt.add_argument("--print-ir-after-all", action="store_true", help="print the IR to stderr after every pass")
    opt.add_argument("--print-ir-after", action="append", metavar="PASS", help="print the IR to stderr after the named pass")
    opt.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass to DIR/NN-pass.cir")
    opt.add_argument("--hw", metavar="HW.toml", help="hardware the passes' hardware options default to (default: cimc/hardware_default.toml)")
    opt.add_argument("--timing", action="store_true", help="print each pass's wall time to stderr (like mlir-opt --mlir-timing)")
    opt.set_defaults(run=_cmd_opt)

    imp = sub.add_parser("import", help="import an ONNX model into textual IR",
                         description="Check, shape-infer and import MODEL.onnx; print the IR or write it with -o.")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("-o", "--output", metavar="OUT.cir", help="write OUT.cir and its OUT.npz of weights")
    imp.add_argument("--input-shape", action="append", type=parse_input_shape, metavar="NAME=D0,D1,...",
                     help="fix dims of a graph input: sizes, symbol names, or ? to keep (repeatable)")
    imp.set_defaults(run=_cmd_import)

    comp = sub.add_parser("compile", help="import and lower an ONNX model onto crossbar arrays",
                          description="Import MODEL.onnx, run the lowering pipeline for the hardware description, "
                                      "and print which weight block went to which array.")
    comp.add_argument("model", metavar="MODEL.onnx")
    comp.add_argument("--hw", metavar="HW.toml", help="hardware description overriding the defaults (see cimc/hardware_default.toml)")
    comp.add_argument("-p", "--pipeline", help="pass pipeline (default: the lowering pipeline; hardware options come from --hw)")
    comp.add_argument("-o", "--output", metavar="OUT.cimg", help="write the programming image (OUT.cimg), or the "
                      "lowered IR if the name ends in .cir (with OUT.npz)")
    comp.add_argument("--calib", action="append", metavar="DATA.npz|DIR",
                      help="calibration inputs, named like the ONNX graph inputs, from which every MVM's input and column "
                           "ranges are measured (default: analytic bounds). Repeatable; a directory stands for its .npz "
                           "files; each file is one sample, or several stacked on a new leading axis when every input has "
                           "the model input's rank + 1. Ranges are the union over all samples, which may differ in "
                           "sequence length")
    comp.add_argument("--input-range", action="append", type=_input_range, metavar="NAME=LO,HI",
                      help="declare that graph input NAME lies within [LO, HI]: replaces the assumed +-1 of the analytic "
                           "bounds and the range 'cimc verify --samples' draws from (repeatable)")
    comp.add_argument("--identity", choices=("auto", "column", "digital"), default="auto",
                      help="tanh(c_t) and other activations of digital values: through an identity column into an "
                           "NL-ADC, digitally, or whichever the hardware's cost table favours (default)")
    comp.add_argument("--nl-adc-bits", type=_nl_adc_bits, metavar="N|auto",
                      help="NL-ADC resolution: N bits for every ramp (overrides the hardware's nl_adc_bits), or auto: "
                           "per ramp the fewest bits in 3..8 whose output error over the calibrated range is at most "
                           "1/32 (in the activation's output units)")
    comp.add_argument("--no-reference", action="store_true",
                      help="leave the unquantized reference weights out of the image (smaller; the image then runs at "
                           "ideal and noisy fidelity only and cannot be verified)")
    comp.add_argument("--plots", metavar="DIR", help="write PNG plots of every distinct NL-ADC (needs matplotlib)")
    comp.add_argument("--input-shape", action="append", type=parse_input_shape, metavar="NAME=D0,D1,...",
                      help="fix dims of a graph input (repeatable)")
    comp.add_argument("--print-ir-after-all", action="store_true", help="print the IR to stderr after every pass")
    comp.add_argument("--print-ir-after", action="append", metavar="PASS", help="print the IR to stderr after the named pass")
    comp.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass to DIR/NN-pass.cir (with sidecars)")
    comp.add_argument("--timing", action="store_true", help="print the wall time of the import, each pass, the verifier "
                      "and the image to stderr (like mlir-opt --mlir-timing)")
    comp.add_argument("--defects", metavar="MEASURED.npz",
                      help="map around the stuck devices of a measured chip ('cimc chip IMAGE --seed S -o MEASURED.npz' "
                           "of an image of this model and hardware): stuck devices compensated by their differential "
                           "partner, ramps re-synthesized on their healthy devices (docs/faults.md)")
    comp.set_defaults(run=_cmd_compile)

    dump = sub.add_parser("dump", help="summarize a programming image", description="Print a programming image's arrays, "
                          "their utilization and regions, its NL-ADC ramps and its program.")
    dump.add_argument("image", metavar="MODEL.cimg")
    dump.add_argument("--json", action="store_true", help="print the summary as JSON")
    dump.set_defaults(run=_cmd_dump)

    def simulation_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--fidelity", choices=("exact", "ideal", "noisy"), default="exact",
                       help="exact: float conductances; ideal: programmed levels and converter codes; noisy: plus device effects")
        p.add_argument("--seed", type=_integer(0, SEED_MAX), default=0,
                       help="seed of the device effects (noisy) and random inputs (0..2^63-1)")
        p.add_argument("--drift-time", type=_seconds, metavar="SECONDS", help="read this long after programming (noisy: "
                       "drift; >= 0)")

    run = sub.add_parser("run", help="run a programming image on the simulator", description="Execute MODEL.cimg on "
                         "IN.npz (keys: the ONNX input names) and write OUT.npz (keys: the ONNX output names).")
    run.add_argument("image", metavar="MODEL.cimg")
    run.add_argument("--inputs", required=True, metavar="IN.npz")
    run.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    simulation_options(run)
    run.set_defaults(run=_cmd_run)

    ver = sub.add_parser("verify", help="compare a programming image with onnxruntime",
                         description="Run onnxruntime and the simulator on the same inputs; print per-output and per-layer "
                                     "errors. Exit 0 within the tolerance, 1 outside, 2 on bad input.")
    ver.add_argument("model", metavar="MODEL.onnx")
    ver.add_argument("image", metavar="MODEL.cimg")
    group = ver.add_mutually_exclusive_group()
    group.add_argument("--inputs", metavar="IN.npz", help="inputs named like the ONNX graph inputs")
    group.add_argument("--samples", type=_integer(1), default=8, metavar="N",
                       help="random inputs: batch N (>= 1) inside the calibrated ranges")
    ver.add_argument("--json", metavar="REPORT.json", help="also write the report as JSON")
    ver.add_argument("--labels", type=label_spec, metavar="KEY[:OUTPUT]",
                     help="score the outputs against the labels KEY of the inputs file, class indices or 0/1 targets "
                          "(accuracy, bits per label); OUTPUT names the output when several fit")
    ver.add_argument("--defects", metavar="MEASURED.npz",
                     help="noisy: the measurement of the chip verified ('cimc chip' of the image the defect-aware one "
                          "was compiled from, same --seed): the bound then knows its stuck devices")
    simulation_options(ver)
    ver.set_defaults(run=_cmd_verify)

    chip = sub.add_parser("chip", help="program chip SEED with an image and read every device back (a tester)",
                          description="Program chip SEED (noisy device model, write-verify) with MODEL.cimg, read every "
                                      "device back once and write the measured conductances and inferred stuck devices "
                                      "(docs/faults.md), the input of 'cimc compile --defects'.")
    chip.add_argument("image", metavar="MODEL.cimg")
    chip.add_argument("--seed", type=_integer(0, SEED_MAX), default=0, help="the chip instance (as in 'cimc run --fidelity noisy --seed')")
    chip.add_argument("-o", "--output", required=True, metavar="MEASURED.npz", help="where to write the measurement")
    chip.set_defaults(run=_cmd_chip)

    report = sub.add_parser("report", help="area, energy, latency and throughput of a programming image",
                            description="Cost MODEL.cimg per component, layer and time step, as compiled (NL-ADC) and "
                                        "against linear-ramp-ADC and SAR-ADC baselines with digital activations "
                                        "(docs/cost-model.md).")
    from cimc.backends.cost.command import add_arguments as add_report_arguments

    add_report_arguments(report)
    report.set_defaults(run=_cmd_report)

    sweep = sub.add_parser("sweep", help="Monte Carlo chip sweep over hardware points, on Dask",
                           description="Compile MODEL.onnx once per hardware point (bits x stuck rate x programming "
                                       "noise x mapping; images cached by content hash), run every chip seed on Dask "
                                       "workers, and compare each with onnxruntime (and the labels): one row per "
                                       "(point, seed), a summary per point.")
    from cimc.sweep.command import add_arguments as add_sweep_arguments

    add_sweep_arguments(sweep)
    sweep.set_defaults(run=_cmd_sweep)

    passes = sub.add_parser("passes", help="list every pass with its options", description="List every registered pass, its options and their defaults.")
    passes.set_defaults(run=_cmd_passes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeTolerant(sys.stdout), PipeTolerant(sys.stderr)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CimcError as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("cimc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (a bug must still not dump a traceback on users)
        if os.environ.get("CIMC_TRACEBACK"):
            raise
        print(f"internal error: {type(e).__name__}: {e} (set CIMC_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
