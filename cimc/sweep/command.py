"""``cimc sweep``: the command line of a Monte Carlo chip sweep (arguments, checks, printing).

Every argument is checked before any work starts (exit 2 and one line): the grid's values,
the paths (``cimc.cli_io``), the labels' key, Dask itself, the scheduler's reachability.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cimc.cli import BITS_MAX, SEED_MAX, label_spec
from cimc.cli_io import PathPlan
from cimc.diagnostics import CimcError
from cimc.sweep.grid import DEFECT_AWARE_CHOICES


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def parse_seeds(text: str) -> list[int]:
    """``A:B`` (the seeds A..B-1, as a Python range) or a comma-separated list; each seed is one chip."""
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            seeds = list(range(int(start), int(stop)))
        else:
            seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise _fail(f"expected A:B (seeds A..B-1) or a list such as 0,3,7, got '{text}'") from None
    if not seeds:
        raise _fail(f"'{text}' holds no seed (A:B holds A..B-1, so B must exceed A)")
    if min(seeds) < 0 or max(seeds) > SEED_MAX:
        raise _fail(f"seeds must lie in 0..2^63-1, got '{text}'")
    if len(set(seeds)) != len(seeds):
        raise _fail(f"a seed is listed twice in '{text}' (each seed is one chip)")
    return seeds


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise _fail(f"expected comma-separated numbers, got '{text}'") from None
    if len(set(values)) != len(values):
        raise _fail(f"a value is listed twice in '{text}'")
    return values


def parse_bits(text: str) -> list[int]:
    """``3,4,5,8``: NL-ADC resolutions."""
    values = _numbers(text)
    if any(v != int(v) or not 1 <= v <= BITS_MAX for v in values):
        raise _fail(f"each must be a number of bits in 1..{BITS_MAX}, got '{text}'")
    return [int(v) for v in values]


def parse_stuck_rates(text: str) -> list[tuple[float, float]]:
    """``0.001,0.01``: R sets the stuck-on and the stuck-off rate both to R; ``ON/OFF`` sets them apart
    (``0.001/0.005`` is the shipped default)."""
    rates = []
    for item in text.split(","):
        on, sep, off = item.partition("/")
        try:
            pair = (float(on), float(off) if sep else float(on))
        except ValueError:
            raise _fail(f"'{item}' is not a rate R or a pair ON/OFF") from None
        if not all(0.0 <= r <= 1.0 for r in pair) or sum(pair) > 1.0:
            raise _fail(f"rates are fractions of devices in [0, 1] with ON + OFF <= 1, got '{item}'")
        rates.append(pair)
    if len(set(rates)) != len(rates):
        raise _fail(f"a rate is listed twice in '{text}'")
    return rates


def parse_program_noise(text: str) -> list[float]:
    """``0.5,1,2``: standard deviations (uS) of one programming landing."""
    values = _numbers(text)
    if any(not 0.0 <= v < float("inf") for v in values):
        raise _fail(f"each must be a finite standard deviation >= 0 uS, got '{text}'")
    return values


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _fail(f"expected a number of worker processes >= 1, got '{text}'") from None
    if value < 1:
        raise _fail(f"must be at least 1 worker process, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cimc.sweep.cache import default_cache_dir

    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--inputs", required=True, metavar="EVAL.npz",
                   help="inputs named like the ONNX graph inputs (and the labels' key, with --labels)")
    p.add_argument("--labels", type=label_spec, metavar="KEY[:OUTPUT]",
                   help="score OUTPUT (default: the one output the labels fit) against the labels stored under KEY in the "
                        "inputs file, class indices or 0/1 targets: accuracy and bits per label per chip")
    p.add_argument("--calib", action="append", metavar="DATA.npz|DIR", help="calibration data, as for 'cimc compile'")
    p.add_argument("--hw", metavar="HW.toml", help="base hardware description the points override (default: cimc's)")
    p.add_argument("--identity", choices=("auto", "column", "digital"), default="auto", help="as for 'cimc compile'")
    p.add_argument("--bits", type=parse_bits, metavar="N,N,...", help="NL-ADC resolutions (default: the hardware's)")
    p.add_argument("--seeds", type=parse_seeds, required=True, metavar="A:B|S,S,...",
                   help="the chips of every point: seeds A..B-1, or a list")
    p.add_argument("--stuck-rate", type=parse_stuck_rates, metavar="R|ON/OFF,...",
                   help="stuck-device rates: R sets stuck-on and stuck-off to R each; ON/OFF sets them apart "
                        "(default: the hardware's, 0.001/0.005)")
    p.add_argument("--program-noise-us", type=parse_program_noise, metavar="S,...",
                   help="programming noise per write-verify round, uS (default: the hardware's)")
    p.add_argument("--defect-aware", choices=tuple(DEFECT_AWARE_CHOICES), default="off",
                   help="on: every chip gets its own defect-aware image (measured as 'cimc chip', compiled as "
                        "'cimc compile --defects'); both: plain and defect-aware points (default: off)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_workers, metavar="N",
                       help="worker processes of the LocalCluster (default: the CPU count)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help=f"where compiled images are kept by content hash (default: {default_cache_dir()}; "
                        "$CIMC_CACHE_DIR overrides)")
    p.add_argument("--json", metavar="OUT.json", help="write every row, the points and their summaries as JSON")
    p.add_argument("--csv", metavar="OUT.csv", help="write one CSV row per (hardware point, seed)")
    p.add_argument("--plots", metavar="DIR", help="write the metric's distribution against bits and stuck rate (PNG)")


def _calib_files(paths: list[str]) -> tuple[str, ...]:
    """--calib arguments as files: a folder stands for its .npz files, sorted by name (as cimc compile reads it)."""
    files: list[str] = []
    for c in paths:
        path = Path(c)
        files += sorted(str(f) for f in path.glob("*.npz")) if path.is_dir() else [str(path)]
    return tuple(files)


class Progress:
    """``sweep: 1/2 points, 12/16 chip runs, 9.1 s, ETA 3.0 s`` on stderr: redrawn in place on a terminal, else a
    line at every tenth of the runs. The ETA assumes the remaining runs go at the mean rate so far."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.printed = -1

    def __call__(self, done: int, total: int, points_done: int, points: int, elapsed: float) -> None:
        tenth = 10 * done // total
        if not self.tty and tenth == self.printed:
            return
        self.printed = tenth
        eta = elapsed / done * (total - done)
        line = f"sweep: {points_done}/{points} points, {done}/{total} chip runs, {elapsed:.1f} s, ETA {eta:.1f} s"
        if self.tty:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from cimc.hardware import load_hardware
    from cimc.labels import split_labels
    from cimc.npz import load_npz
    from cimc.sweep.api import sweep
    from cimc.sweep.grid import grid
    from cimc.sweep.cache import default_cache_dir
    from cimc.sweep.cluster import check_available, dashboard_link

    plan = PathPlan()
    plan.read("model", args.model)
    plan.read("inputs", args.inputs)
    for calib in args.calib or ():
        plan.read("calibration data", calib, folder_ok=True)
    if args.hw:
        plan.read("hardware description", args.hw)
    for role, path in (("--json output", args.json), ("--csv output", args.csv)):
        if path:
            plan.write(role, path)
    if args.json and args.csv and Path(args.json).resolve() == Path(args.csv).resolve():
        raise CimcError(f"--json and --csv name the same file {args.json}")
    if args.plots:
        plan.write_folder("--plots folder", args.plots)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CimcError("--plots needs matplotlib: pip install 'cimc[plots]'") from None
    cache_dir = Path(args.cache) if args.cache else default_cache_dir()
    plan.write_folder("--cache folder", cache_dir)
    check_available()
    base = load_hardware(args.hw)
    points = grid(base, args.bits, args.stuck_rate, args.program_noise_us, args.defect_aware)  # refused before work
    arrays = load_npz(args.inputs, "inputs")
    labels = None
    if args.labels:
        feeds, labels = split_labels(arrays, args.labels[0], args.inputs)
    else:
        feeds = dict(arrays)
    options = dict(labels=labels, label_output=args.labels[1] if args.labels else None,
                   calib=_calib_files(args.calib or []), hw=base, identity=args.identity, bits=args.bits,
                   stuck_rates=args.stuck_rate, program_noise_us=args.program_noise_us,
                   defect_aware=args.defect_aware, seeds=args.seeds, cache=cache_dir,
                   inputs_name=Path(args.inputs).name, label_key=args.labels[0] if args.labels else None)

    def announce(client: object) -> None:
        link = dashboard_link(client)
        n = len(client.scheduler_info()["workers"])  # type: ignore[attr-defined]
        where = f"the cluster at {args.scheduler}" if args.scheduler else \
            f"a LocalCluster of {n} worker process{'es' if n > 1 else ''}"
        print(f"sweep: {len(points)} hardware points x {len(args.seeds)} chips = {len(points) * len(args.seeds)} chip "
              f"runs on {where}" + (f"; dashboard {link}" if link else ""), file=sys.stderr, flush=True)

    start = time.perf_counter()
    result, counts = sweep(args.model, feeds, workers=args.workers, scheduler=args.scheduler, on_client=announce,
                           progress=Progress(), **options)  # type: ignore[arg-type]
    for warning in result.describe["range_warnings"]:  # type: ignore[union-attr]
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(result.table())
    print(f"images: {counts['compiled']} compiled, {counts['cached']} from the cache {cache_dir}; "
          f"{counts['chip_runs']} chip runs in {time.perf_counter() - start:.1f} s")
    if args.json:
        result.write_json(args.json)
        print(f"wrote {args.json}")
    if args.csv:
        result.write_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.plots:
        from cimc.sweep.plots import plot_sweep

        for path in plot_sweep(result, Path(args.plots)):
            print(f"wrote {path}")
    return 0
