"""Fan a sweep out over a Dask cluster: one compile per distinct hardware point, then chips in batches.

The task graph, submitted at once so that chips run while other points still compile:

- per plain hardware point: its image, from the cache (scattered to the cluster) or
  compiled by a ``compile_image`` task; an ``ideal`` run of it (the noise-free reference);
- per plain point, its seeds in batches (``run_chips``): a batch is one task, which loads
  the image once and runs every seed of the batch; batches are sized so that each worker
  gets about four, which balances the load without loading an image per seed;
- per defect-aware point and seed, one ``run_defect_aware`` task: measure that chip with
  the plain image, compile around it (or take the cached image), run it.

The feeds, labels and onnxruntime's outputs (computed once, here) are scattered to every
worker once. Results arrive in any order; ``SweepResult`` sorts them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.sweep.cache import CompileSpec, ImageCache, image_key
from cimc.sweep.grid import HardwarePoint
from cimc.sweep.metrics import Scoring
from cimc.sweep.results import SweepResult
from cimc.sweep.tasks import CompileInputs, compile_image, image_of, run_chips, run_defect_aware

BATCHES_PER_WORKER = 4

# (chip runs done, chip runs in all, hardware points done, points in all, seconds elapsed)
Progress = Callable[[int, int, int, int, float], None]


def reference_outputs(model: str | Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs on ``feeds``: the float model every chip is compared with (computed once)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types)
        raise CimcError(f"onnxruntime cannot load {model}: {str(e).splitlines()[0]}") from None
    wanted = [i.name for i in session.get_inputs()]
    missing, unknown = [n for n in wanted if n not in feeds], sorted(set(feeds) - set(wanted))
    if missing or unknown:
        raise CimcError(f"the inputs do not match {Path(model).name}: its inputs are {wanted}"
                        + (f"; missing {missing}" if missing else "")
                        + (f"; unknown {unknown} (labels are named with --labels KEY)" if unknown else ""))
    try:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, dict(feeds))))
    except Exception as e:  # noqa: BLE001
        raise CimcError(f"onnxruntime cannot run {model} on these inputs: {str(e).splitlines()[0]}") from None


@dataclass
class SweepPlan:
    """What to sweep: the model and its compile options, the hardware points on a base description, the chips."""

    spec: CompileSpec
    base: Hardware
    points: Sequence[HardwarePoint]
    seeds: Sequence[int]
    feeds: Mapping[str, np.ndarray]
    reference: Mapping[str, np.ndarray]  # onnxruntime's outputs on the feeds (``reference_outputs``)
    scoring: Scoring = Scoring()  # the outputs' producers, and the labels if any
    describe: Mapping[str, object] | None = None  # what the result records about the inputs (names, digests...)

    @property
    def chip_runs(self) -> int:
        return len(self.points) * len(self.seeds)

    def inputs(self) -> CompileInputs:
        return CompileInputs((Path(self.spec.model).name, Path(self.spec.model).read_bytes()),
                             tuple((Path(c).name, Path(c).read_bytes()) for c in self.spec.calib),
                             self.spec.identity, self.spec.pipeline)


def batches(seeds: Sequence[int], size: int) -> list[list[int]]:
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]


def run_sweep(client: object, plan: SweepPlan, cache: ImageCache, progress: Progress | None = None) -> tuple[SweepResult, dict[str, int]]:
    """Run ``plan`` on the Dask ``client``; returns the result and counts {compiled, cached, chip_runs}."""
    from distributed import as_completed

    start = time.perf_counter()
    digest = plan.spec.digest()
    workers = max(1, len(client.scheduler_info()["workers"]))  # type: ignore[attr-defined]
    batch = max(1, math.ceil(plan.chip_runs / (BATCHES_PER_WORKER * workers)))
    inputs, feeds, ref, scoring = (client.scatter(v, broadcast=True)  # type: ignore[attr-defined]
                                   for v in (plan.inputs(), dict(plan.feeds), dict(plan.reference), plan.scoring))
    submit = client.submit  # type: ignore[attr-defined]
    task_kind: dict[object, tuple[str, object]] = {}  # future -> (kind, what it belongs to)
    images: dict[HardwarePoint, object] = {}
    keys: dict[HardwarePoint, str] = {}
    warnings: set[str] = set()
    counts = {"compiled": 0, "cached": 0, "chip_runs": 0}
    for point in sorted({p.plain for p in plan.points}):
        keys[point] = image_key(digest, point.hardware(plan.base).to_toml())
        data = cache.get(keys[point])
        if data is not None:
            images[point] = client.scatter(data)  # type: ignore[attr-defined]
            counts["cached"] += 1
        else:
            compiled = submit(compile_image, inputs, point.hardware(plan.base), pure=False)
            task_kind[compiled] = ("compiled", point)
            images[point] = submit(image_of, compiled, pure=False)
        ideal = submit(run_chips, images[point], feeds, ref, [0], "ideal", scoring, pure=False)
        task_kind[ideal] = ("ideal", point)
    for point in plan.points:
        hardware = point.hardware(plan.base)
        if not point.defect_aware:
            for seeds in batches(plan.seeds, batch):
                f = submit(run_chips, images[point.plain], feeds, ref, seeds, "noisy", scoring, pure=False)
                task_kind[f] = ("rows", point)
            continue
        for seed in plan.seeds:
            key = image_key(digest, hardware.to_toml(), (keys[point.plain], seed))
            data = cache.get(key)
            counts["cached" if data is not None else "compiled"] += 1
            cached = None if data is None else client.scatter(data)  # type: ignore[attr-defined]  (not in the graph)
            f = submit(run_defect_aware, images[point.plain], inputs, hardware, seed, feeds, ref, cached, scoring,
                       pure=False)
            task_kind[f] = ("aware", (point, key))

    rows: list[dict[str, object]] = []
    per_point = dict.fromkeys(plan.points, 0)
    ideal_rows: dict[HardwarePoint, dict[str, object]] = {}
    image_sha: dict[HardwarePoint, str] = {}
    try:
        for future, value in as_completed(list(task_kind), with_results=True):
            kind, owner = task_kind[future]
            if kind == "compiled":
                cache.put(keys[owner], value["image"])  # type: ignore[index,arg-type]
                counts["compiled"] += 1
                if value["warning"]:  # type: ignore[index]
                    warnings.add(value["warning"])  # type: ignore[index,arg-type]
                continue
            if kind == "ideal":
                (row,) = value  # type: ignore[misc]
                image_sha[owner] = row.pop("image_sha256")  # type: ignore[index]
                row.pop("seed")
                ideal_rows[owner] = row  # type: ignore[index]
                continue
            if kind == "aware":
                point, key = owner  # type: ignore[misc]
                if value["image"] is not None:  # type: ignore[index]
                    cache.put(key, value["image"])  # type: ignore[index,arg-type]
                new = [value["row"]]  # type: ignore[index]
            else:
                point, new = owner, value
            rows += [{**point.to_dict(), **r} for r in new]  # type: ignore[union-attr,dict-item]
            per_point[point] += len(new)  # type: ignore[index,arg-type]
            if progress is not None:
                points_done = sum(n == len(plan.seeds) for n in per_point.values())
                progress(len(rows), plan.chip_runs, points_done, len(per_point), time.perf_counter() - start)
    finally:
        for future in task_kind:
            future.cancel()  # type: ignore[attr-defined]
    counts["chip_runs"] = len(rows)
    describe = dict(plan.describe or {})
    describe.update(seeds=list(plan.seeds), range_warnings=sorted(warnings))
    return SweepResult(describe, list(plan.points), rows, ideal_rows, image_sha), counts
