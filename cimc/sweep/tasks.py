"""What a Dask worker runs: compile an image, or run chips (seeds) on one.

The functions here are plain functions of picklable arguments, so the same code runs in
a LocalCluster's processes, in a remote ``dask worker`` and, in tests, in threads. A
worker needs no file of the client's: the model and calibration files travel as bytes
(``CompileInputs``) and images as bytes; each process writes the inputs once into a
private temporary folder (under their own file names, so that an image's provenance is
the one a local compile records) and keeps the last few images it loaded, so a worker
loads an image once however many of its seeds it runs.

Results depend on the arguments only: a chip is its seed (``SimulatorOptions(seed)``,
docs/simulator.md), never a worker's or a task's index, so any split of the seeds over
any number of workers gives the same rows.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.hardware import Hardware
from cimc.image import Image, load_image
from cimc.sweep.metrics import Scoring, chip_metrics

LOADED_IMAGES = 8  # images a worker process keeps loaded (a sweep's tasks arrive grouped by image)


@dataclass(frozen=True)
class CompileInputs:
    """The files an image is compiled from, as (file name, bytes), and the compile options."""

    model: tuple[str, bytes]
    calib: tuple[tuple[str, bytes], ...]
    identity: str
    pipeline: str | None

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name, data in (self.model, *self.calib):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()


_lock = threading.Lock()
_images: OrderedDict[str, Image] = OrderedDict()
_folders: dict[str, tuple[tempfile.TemporaryDirectory, Path, list[Path]]] = {}


def _materialized(inputs: CompileInputs) -> tuple[Path, list[Path]]:
    """The model and calibration files on this process's disk (written once per process)."""
    with _lock:
        if inputs.digest not in _folders:
            folder = tempfile.TemporaryDirectory(prefix="cimc-sweep-")  # removed when the process exits
            root = Path(folder.name)
            model = root / inputs.model[0]
            model.write_bytes(inputs.model[1])
            calib = []
            for i, (name, data) in enumerate(inputs.calib):  # one folder each: two calib files may share a name
                (root / str(i)).mkdir()
                calib.append(root / str(i) / name)
                calib[-1].write_bytes(data)
            _folders[inputs.digest] = (folder, model, calib)
        _, model, calib = _folders[inputs.digest]
        return model, calib


def loaded_image(data: bytes) -> tuple[Image, str]:
    """The image in ``data`` and its SHA-256, loaded (and its program built) once per process."""
    sha = hashlib.sha256(data).hexdigest()
    with _lock:
        if sha in _images:
            _images.move_to_end(sha)
            return _images[sha], sha
        with tempfile.TemporaryDirectory(prefix="cimc-sweep-") as tmp:
            path = Path(tmp) / "image.cimg"
            path.write_bytes(data)
            image = load_image(path)
        image.program()  # built here, under the lock, so that threads of one worker never build it twice
        _images[sha] = image
        while len(_images) > LOADED_IMAGES:
            _images.popitem(last=False)
        return image, sha


def compile_image(inputs: CompileInputs, hardware: Hardware, defects: object | None = None) -> dict[str, object]:
    """Compile for ``hardware`` (around a measured chip's defects when given): {image: bytes, warning: str | None}."""
    import cimc
    from cimc.api import RangeAssumptionWarning

    model, calib = _materialized(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RangeAssumptionWarning)
        compiled = cimc.compile(model, hw=hardware, calib=calib or None, identity=inputs.identity,
                                pipeline=inputs.pipeline, defects=defects)  # type: ignore[arg-type]
    notes = [str(w.message) for w in caught if issubclass(w.category, RangeAssumptionWarning)]
    return {"image": compiled.image.to_bytes(), "warning": notes[0] if notes else None}


def image_of(compiled: Mapping[str, object]) -> bytes:
    """The image bytes of a ``compile_image`` result (a task of its own, so runs depend on the bytes only)."""
    return compiled["image"]  # type: ignore[return-value]


def run_chips(image_data: bytes, feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
              seeds: Sequence[int], fidelity: str = "noisy", scoring: Scoring = Scoring()) -> list[dict[str, object]]:
    """Program chip ``seed`` with the image and run ``feeds``, for every seed: one row of metrics each."""
    from cimc.backends.simulator import Simulator, SimulatorOptions

    image, sha = loaded_image(image_data)
    rows = []
    for seed in seeds:
        outputs = Simulator(image, SimulatorOptions(fidelity, seed)).run(feeds)
        rows.append({"seed": seed, "image_sha256": sha,
                     **chip_metrics(outputs, reference, fidelity, scoring)})
    return rows


def run_defect_aware(plain_data: bytes, inputs: CompileInputs, hardware: Hardware, seed: int,
                     feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                     cached: bytes | None = None, scoring: Scoring = Scoring()) -> dict[str, object]:
    """Chip ``seed`` as a defect-aware flow treats it: the tester measures it with the plain image
    (``cimc chip``), the model is compiled around that measurement (``cimc compile --defects``) unless the
    client had that image cached, and the defect-aware image runs on the same chip.

    Returns {row, image: the new image's bytes, or None when ``cached`` was used}.
    """
    from cimc.backends.tester import measure

    image_data = cached
    if image_data is None:
        plain, plain_sha = loaded_image(plain_data)
        image_data = compile_image(inputs, hardware, measure(plain, plain_sha, seed))["image"]  # type: ignore[assignment]
    (row,) = run_chips(image_data, feeds, reference, [seed], "noisy", scoring)  # type: ignore[arg-type]
    return {"row": row, "image": None if cached is not None else image_data}
