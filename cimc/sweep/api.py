"""The Python entry point of a sweep: what ``cimc sweep`` does, from arrays.

    from cimc.sweep import sweep
    result, counts = sweep("kws_lstm.onnx", {"features": x}, labels=y, calib=["calib.npz"], bits=[4, 5],
                           seeds=range(8))
    result.summary(result.points[0])["accuracy"]    # {mean, std, p5, worst} over the 8 chips

Pass ``client`` (a ``distributed.Client``) to run several sweeps on one cluster;
otherwise each call starts a LocalCluster of ``workers`` processes (or joins
``scheduler``) and stops it when done.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from cimc.hardware import Hardware, load_hardware
from cimc.labels import output_producers
from cimc.npz import file_sha256
from cimc.sweep.cache import CompileSpec, ImageCache, default_cache_dir
from cimc.sweep.fanout import Progress, SweepPlan, reference_outputs, run_sweep
from cimc.sweep.grid import grid
from cimc.sweep.metrics import Scoring
from cimc.sweep.results import SweepResult


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of named arrays (names, dtypes, shapes, bytes), recorded so a result says what it ran on."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def sweep(model: str | Path, feeds: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None,
          label_output: str | None = None, calib: Sequence[str | Path] = (), hw: str | Path | Hardware | None = None,
          identity: str = "auto", pipeline: str | None = None, bits: Sequence[int] | None = None,
          stuck_rates: Sequence[tuple[float, float]] | None = None, program_noise_us: Sequence[float] | None = None,
          defect_aware: str = "off", seeds: Iterable[int] = range(10), client: object | None = None,
          workers: int | None = None, scheduler: str | None = None, cache: str | Path | None = None,
          progress: Progress | None = None, inputs_name: str | None = None,
          label_key: str | None = None, on_client: Callable[[object], None] | None = None,
          ) -> tuple[SweepResult, dict[str, int]]:
    """Compile ``model`` per hardware point and run every seed as a chip; returns the result and counts
    {compiled, cached, chip_runs}. ``calib`` are .npz files (as ``cimc compile --calib``); ``hw`` the base hardware
    the points override; an axis left None keeps the base's value. ``inputs_name`` and ``label_key`` (the file and
    key the arrays came from) are only recorded in the result. The model runs once in onnxruntime on ``feeds``
    before any cluster starts (inputs that do not match it are refused first); ``on_client`` is then called with
    the client, before the first task (the CLI prints the cluster and its dashboard)."""
    from cimc.sweep.cluster import open_client

    base = hw if isinstance(hw, Hardware) else load_hardware(hw)
    points = grid(base, bits, stuck_rates, program_noise_us, defect_aware)
    spec = CompileSpec(str(model), tuple(str(c) for c in calib), identity, pipeline)
    scored = dict(feeds) if labels is None else {**feeds, "<labels>": labels}
    describe = {"model": {"name": Path(model).name, "sha256": file_sha256(model)},
                "inputs": {"name": inputs_name, "sha256": arrays_sha256(scored)},
                "labels": None if labels is None else {"key": label_key, "output": label_output},
                "calib": [{"name": Path(c).name, "sha256": file_sha256(c)} for c in spec.calib],
                "identity": identity, "pipeline": pipeline, "base_hardware": base.to_dict()}
    scoring = Scoring(output_producers(onnx.load(str(model), load_external_data=False)), labels, label_output)
    plan = SweepPlan(spec, base, points, list(seeds), feeds, reference_outputs(model, feeds), scoring, describe)
    store = ImageCache(cache if cache is not None else default_cache_dir())
    with contextlib.nullcontext(client) if client is not None else open_client(workers, scheduler) as live:
        if on_client is not None:
            on_client(live)
        return run_sweep(live, plan, store, progress)
