"""Sweep throughput: chip runs per second on Dask with 1 and 2 workers, against a plain loop in one process.

    python bench/sweep.py                       # KWS at 5 bits, 12 and 48 chips x 600 clips, 3 repeats (~3 min)
    python bench/sweep.py --chips 24,96 --repeat 5

A chip run is what one row of ``cimc sweep`` costs: program chip S with the image (noisy,
write-verify), run the eval set, score it against onnxruntime and the labels
(``cimc.sweep.metrics.chip_metrics``). Measured in the same run:

- reference: those runs in a loop in this process, no Dask (the image compiled once, not timed), with one
  BLAS thread like the workers;
- ``cimc.sweep.sweep`` on a LocalCluster of 1 and of 2 single-threaded worker processes, already
  started (its start-up is printed apart) and with the image in the cache (the compile is not what is
  measured): from submitting the graph to the last row, which includes sending the feeds and the image
  to every worker and the point's one ideal run (not counted as a chip run).

Printed, per number of chips: the median over the repeats of each rate and its ratio to the reference
(a sweep has a fixed cost, the onnxruntime reference, sending the inputs, the ideal run, so the rate
grows with the chips), the machine's load average (the cores are shared), and the cluster start-up time.
"""

from __future__ import annotations

import os

# One BLAS thread, as in the workers (Dask's nanny sets these for the processes it spawns): the reference then
# measures the same single-threaded chip run, not this process's thread pool on a shared machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KWS = ROOT / "examples" / "kws"
sys.path.insert(0, str(KWS))

import cimc  # noqa: E402
from cimc.backends.simulator import Simulator, SimulatorOptions  # noqa: E402
from cimc.sweep import sweep  # noqa: E402
from cimc.sweep.cluster import open_client  # noqa: E402
from cimc.sweep.fanout import reference_outputs  # noqa: E402
from cimc.sweep.metrics import chip_metrics  # noqa: E402
from float_eval import load_eval_set  # noqa: E402

MODEL, CALIB, BITS = KWS / "kws_lstm.onnx", KWS / "calib.npz", 5


def in_loop(image: cimc.Image, feeds: dict, reference: dict, labels: np.ndarray, seeds: list[int]) -> float:
    """Chip runs per second of a plain loop in this process."""
    t0 = time.perf_counter()
    for seed in seeds:
        outputs = Simulator(image, SimulatorOptions("noisy", seed)).run(feeds)
        chip_metrics(outputs, reference, "noisy", labels)
    return len(seeds) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", default="12,48", help="comma-separated numbers of chips per sweep")
    parser.add_argument("--clips", type=int, default=600, help="eval clips per chip run (of 600)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    x, y = load_eval_set(KWS / "eval_set.npz")
    feeds, labels = {"features": x[:, :args.clips]}, y[:args.clips]
    reference = reference_outputs(MODEL, feeds)
    image = cimc.compile(MODEL, calib=CALIB, nl_adc_bits=BITS).image
    hows = ("in-loop (no Dask)", "Dask, 1 worker", "Dask, 2 workers")
    rates: dict[tuple[int, str], list[float]] = {}
    startup: dict[int, float] = {}
    chip_counts = [int(c) for c in args.chips.split(",")]
    with tempfile.TemporaryDirectory() as cache:
        options = dict(labels=labels, calib=[CALIB], bits=[BITS], cache=cache)
        with open_client(1) as warm:  # fills the cache: the measured sweeps compile nothing
            sweep(MODEL, feeds, client=warm, seeds=[0], **options)
        for repeat in range(args.repeat):
            for chips in chip_counts:
                seeds = list(range(chips))
                rates.setdefault((chips, hows[0]), []).append(in_loop(image, feeds, reference, labels, seeds))
                for workers in (1, 2):
                    t0 = time.perf_counter()
                    with open_client(workers) as client:
                        startup[workers] = time.perf_counter() - t0
                        t0 = time.perf_counter()
                        _, counts = sweep(MODEL, feeds, client=client, seeds=seeds, **options)
                        elapsed = time.perf_counter() - t0
                    assert counts == {"compiled": 0, "cached": 1, "chip_runs": chips}, counts
                    rates.setdefault((chips, hows[workers]), []).append(chips / elapsed)
                print(f"repeat {repeat + 1}, {chips} chips: " + ", ".join(f"{h} {rates[chips, h][-1]:.2f}/s" for h in hows),
                      file=sys.stderr, flush=True)
    print(f"KWS LSTM, {BITS}-bit NL-ADCs, {args.clips} clips per chip run, median of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| chips | how | chip runs / s | vs in-loop |")
    print("|---|---|---|---|")
    for chips in chip_counts:
        reference_rate = statistics.median(rates[chips, hows[0]])
        for how in hows:
            rate = statistics.median(rates[chips, how])
            print(f"| {chips} | {how} | {rate:.2f} | {rate / reference_rate:.2f}x |")
    print(f"\nLocalCluster start-up (not in the rates): 1 worker {startup[1]:.1f} s, 2 workers {startup[2]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
