"""Programming-image build, write and load time, size and memory, for a 2-layer LSTM of a given hidden size.

    python bench/image.py [--hidden 1024] [--repeat 7]

The model is bench/compile.py's ``lstm_stack`` (input = hidden, 16 H^2 + 16 H
float32 weights). Over --repeat rounds, interleaved so that machine load hits
every measurement alike, the script compiles it to a fresh scheduled module
(``compile_to_ir``, on a chip with enough arrays; not timed) and prints the
medians of

* ``build_image`` as ``cimc compile`` calls it (the model file's provenance,
  ``release=True``, on a module no image was built from before, so that nothing
  is cached from an earlier build: the emit-image lowering, levels, regions,
  ramps, reference weights, the step program) and ``Image.save`` (the atomic
  write, fsync included; its blobs streamed in chunks and hashed as they go),
  against the write half of bench/compile.py's I/O floor measured in the same
  rounds: ``np.savez`` of the model's weights into the same folder (no fsync);
* what the save is made of, each part timed alone on the same bytes: the JSON
  encoding of manifest.json and program.json (their documents read back from the
  file), SHA-256 and CRC-32 (the zip's) over the whole file, and writing the
  file's bytes (with fsync) from memory;
* ``load_image``, ``Image.program()`` (the Module the simulator runs) and the
  ideal simulator's plan (``Simulator(image).plan()``: devices realized, every
  tile's conductances and kernels), against reading every zip entry's bytes;

each in wall and in CPU time (user + system of this process: on a shared
machine the steadier of the two); and then bytes per weight of the device levels, the reference weights and the
whole file, and the peak of Python/numpy allocations (tracemalloc) of one
``build_image`` (of a fresh module) and one ``Image.save``, as multiples of the model's weight
bytes. Run it from a checkout of another cimc (PYTHONPATH) for its numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from compile import lstm_stack  # noqa: E402

from cimc.backends.simulator import Simulator, SimulatorOptions  # noqa: E402
from cimc.collector import collector_paused  # noqa: E402
from cimc.compiler import build_image, compile_to_ir, image_provenance  # noqa: E402
from cimc.hardware import load_hardware  # noqa: E402
from cimc.image import Image, _json_bytes, image_sizes, load_image  # noqa: E402
from cimc.ir import Module  # noqa: E402


def timed(action: Callable[[], object], cpu: list[float]) -> tuple[float, object]:
    """Wall seconds of ``action`` and its result; its CPU seconds (user + system of this process) go to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = action()
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, result


def peak_allocation(action: Callable[[], object]) -> int:
    tracemalloc.start()
    action()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_entries(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            zf.read(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path, image_path, hw_path = folder / "lstm.onnx", folder / "lstm.cimg", folder / "hw.toml"
        hw_path.write_text("[array]\ncount = 1000000\n")
        model = lstm_stack(args.hidden)
        onnx.save(model, model_path)
        weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        weight_bytes = sum(w.nbytes for w in weights.values())
        hw = load_hardware(hw_path)
        seconds, module = timed(lambda: compile_to_ir(model_path, hw), [])
        print(f"2-layer LSTM {args.hidden}->{args.hidden} ({weight_bytes / 2**20:.1f} MB of weights): compiled to the "
              f"scheduled module in {seconds:.1f} s")

        def build(module: Module) -> Image:  # as cimc compile builds it
            return build_image(module, hw, image_provenance(model_path, hw, None), release=True)

        names = ("build", "save", "floor", "load", "program", "plan", "read", "json", "sha256", "crc32", "write")
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}

        def measure(name: str, action: Callable[[], object]) -> object:
            seconds, result = timed(action, cpu[name])
            wall[name].append(seconds)
            return result

        for i in range(args.repeat):
            image_path.unlink(missing_ok=True)
            (folder / "floor.npz").unlink(missing_ok=True)
            if i:
                module = compile_to_ir(model_path, hw)
            image = measure("build", lambda: build(module))  # noqa: B023
            del module
            measure("save", lambda: image.save(image_path))  # noqa: B023
            measure("floor", lambda: np.savez(folder / "floor.npz", **weights))
            del image
            data = image_path.read_bytes()
            with zipfile.ZipFile(image_path) as zf:  # the documents as written (the manifest with its tensor table)
                documents = [json.loads(zf.read(name)) for name in ("manifest.json", "program.json")]
            with collector_paused():  # as in Image.save
                measure("json", lambda: [_json_bytes(d) for d in documents])  # noqa: B023
            measure("sha256", lambda: hashlib.sha256(data).digest())  # noqa: B023
            measure("crc32", lambda: zlib.crc32(data))  # noqa: B023
            measure("write", lambda: write_synced(folder / "copy.bin", data))  # noqa: B023
            del data
            measure("read", lambda: read_entries(image_path))
            loaded = measure("load", lambda: load_image(image_path))
            measure("program", loaded.program)
            measure("plan", lambda: Simulator(loaded, SimulatorOptions("ideal")).plan())  # noqa: B023
            del loaded
        print(f"medians over {args.repeat} rounds, wall s (CPU s):")
        for clock, m in (("wall", {k: statistics.median(v) for k, v in wall.items()}),
                         ("cpu", {k: statistics.median(v) for k, v in cpu.items()})):
            write, load = m["build"] + m["save"], m["load"] + m["program"] + m["plan"]
            print(f"  {clock:>4}: build_image {m['build']:.3f} + Image.save {m['save']:.3f} = {write:.3f}; np.savez of the "
                  f"weights {m['floor']:.3f}; ratio {write / m['floor']:.2f}")
            print(f"  {clock:>4}: of the save, alone: JSON {m['json']:.3f}, SHA-256 {m['sha256']:.3f}, CRC-32 "
                  f"{m['crc32']:.3f}, writing the bytes with fsync {m['write']:.3f}")
            print(f"  {clock:>4}: load_image {m['load']:.3f} + program() {m['program']:.3f} + ideal plan {m['plan']:.3f} = "
                  f"{load:.3f}; reading the entries' bytes {m['read']:.3f}; ratio {load / m['read']:.1f}")

        image = load_image(image_path)
        sizes = image_sizes(image)
        total, w = image_path.stat().st_size, sizes["weights"]
        with zipfile.ZipFile(image_path) as zf:
            entries = len(zf.namelist())
        print(f"weights programmed: {w:,}; arrays: {len(image.arrays)}; zip entries: {entries}")
        print(f"bytes/weight: devices {sizes['device_bytes'] / w:.2f}, reference weights {sizes['reference_bytes'] / w:.2f}, "
              f"whole image {total / w:.2f} ({total / 2**20:.1f} MB)")
        del image
        module = compile_to_ir(model_path, hw)
        build_peak = peak_allocation(lambda: build(module))
        fresh = build(compile_to_ir(model_path, hw))
        save_peak = peak_allocation(lambda: fresh.save(folder / "again.cimg"))
        print(f"peak allocation: build_image {build_peak / 2**20:.1f} MB = {build_peak / weight_bytes:.2f} x the weight "
              f"bytes; Image.save {save_peak / 2**20:.1f} MB = {save_peak / weight_bytes:.2f} x")
        again = folder / "again.cimg"
        assert again.read_bytes() == image_path.read_bytes(), "two compiles of the same model gave different images"
        load_image(again).save(folder / "third.cimg")
        assert (folder / "third.cimg").read_bytes() == image_path.read_bytes(), "a loaded image saved again differs"


if __name__ == "__main__":
    main()
