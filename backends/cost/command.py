"""``cimc report``: the cost report of a programming image, as a table, JSON, a width sweep and plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cimc.diagnostics import CimcError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="MODEL.cimg")
    p.add_argument("--seq-len", type=int, metavar="T", help="time steps per inference where the model's time dim is "
                   "symbolic (default 1; per-step numbers do not depend on it)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="samples per inference (default 1)")
    p.add_argument("--bits", type=int, metavar="N", help="cost every NL-ADC at N bits on the compiled mapping")
    p.add_argument("--dac-bits", type=int, metavar="N", help="cost the input DACs at N bits (default: the hardware's)")
    p.add_argument("--sweep-bits", metavar="N,N,...", help="also re-cost the mapping at each NL-ADC width, e.g. 3,4,5,8")
    p.add_argument("--sweep-dac", action="store_true", help="in the sweep, the input DACs take each width too "
                   "(the paper's in/out precision 5(8))")
    p.add_argument("--json", action="store_true", help="print the report as JSON (keys area_mm2, energy_pj, latency_ns, "
                   "tops, tops_per_w, tops_per_mm2 per component and in total)")
    p.add_argument("--plots", metavar="DIR", help="write energy.png, area.png, timeline.png (and sweep.png) to DIR")
    p.add_argument("--cost", metavar="COST.toml", help="re-cost under other [cost] figures (a TOML file with only a "
                   "[cost] table; the image's figures otherwise)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the table (or JSON) to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from cimc.backends.cost.report import cost_report
    from cimc.backends.cost.sweep import format_sweep, parse_bits, sweep
    from cimc.backends.cost.tables import format_report
    from cimc.cli_io import PathPlan
    from cimc.hardware import with_cost_file
    from cimc.image import load_image
    from cimc.npz import write_atomic

    if args.seq_len is not None and args.seq_len < 1:
        raise CimcError(f"--seq-len must be at least 1 (got {args.seq_len})")
    if args.batch < 1:
        raise CimcError(f"--batch must be at least 1 (got {args.batch})")
    widths = parse_bits(args.sweep_bits) if args.sweep_bits else None
    plan = PathPlan()  # every path checked before any work; an output that is an input is refused
    plan.read("image", args.image)
    if args.cost:
        plan.read("--cost", args.cost)
    if args.output:
        plan.write("-o report", args.output)
    if args.plots:
        plan.write_folder("--plots folder", args.plots)
    image = load_image(args.image)
    hw = with_cost_file(image.hardware, args.cost) if args.cost else None
    report = cost_report(image, args.seq_len, args.batch, args.bits, args.dac_bits, hw)
    swept = sweep(image, widths, args.seq_len, args.batch, args.sweep_dac, hw) if widths else None
    if args.json:
        document = dict(report, **({"sweep": swept["sweep"], "sweep_dac_follows_bits": args.sweep_dac} if swept else {}))
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    else:
        text = format_report(report) + ("\n" + format_sweep(swept) if swept else "")
    if args.output:
        write_atomic(args.output, text.encode("utf-8"))
    else:
        sys.stdout.write(text)
    if args.plots:
        from cimc.backends.cost.plots import write_plots

        written = write_plots(report, Path(args.plots), swept)
        print(f"plots: {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
