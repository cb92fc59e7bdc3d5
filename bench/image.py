"""Programming-image size, load time and write memory, for a 2-layer LSTM of a given hidden size.

    python bench/image.py [--hidden 1024] [--repeat 5]

The model is bench/compile.py's ``lstm_stack`` (input = hidden, 16 H^2 + 16 H
float32 weights), compiled once by ``cimc compile`` on a chip with enough
arrays. The script then prints

* bytes per weight of the device entries (``arrays/*.levels.npy``) alone, of the
  reference weights, and of the whole file;
* the median over --repeat runs of ``load_image`` followed by ``Image.program()``
  (checksums, op-set validation, building the Module the simulator runs), and of
  the I/O floor measured in the same run: reading every zip entry's bytes
  (what any reader must do), with their ratio;
* the peak of Python/numpy allocations (tracemalloc) while ``Image.save`` writes
  the loaded image again, as a multiple of the image's arrays held in memory and
  of its JSON documents: the writer encodes one array entry at a time, so the
  peak is the encoded manifest and program, not a second copy of the image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from compile import cimc_script, lstm_stack  # noqa: E402

from cimc.image import image_sizes, load_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, image_path, hw = folder / "lstm.onnx", folder / "lstm.cimg", folder / "hw.toml"
        hw.write_text("[array]\ncount = 1000000\n")
        onnx.save(lstm_stack(args.hidden), model)
        start = time.perf_counter()
        subprocess.run([cimc_script(), "compile", str(model), "--hw", str(hw), "-o", str(image_path)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"2-layer LSTM {args.hidden}->{args.hidden}: compiled in {time.perf_counter() - start:.1f} s")

        loads, floors = [], []
        for _ in range(args.repeat):  # interleaved, so that machine load hits both alike
            start = time.perf_counter()
            with zipfile.ZipFile(image_path) as zf:
                for name in zf.namelist():
                    zf.read(name)
            floors.append(time.perf_counter() - start)
            start = time.perf_counter()
            image = load_image(image_path)
            image.program()
            loads.append(time.perf_counter() - start)
        sizes = image_sizes(image)
        total = image_path.stat().st_size
        w = sizes["weights"]
        print(f"weights programmed: {w:,}; arrays: {len(image.arrays)}")
        print(f"bytes/weight: devices {sizes['device_bytes'] / w:.2f}, reference weights {sizes['reference_bytes'] / w:.2f}, "
              f"whole image {total / w:.2f} ({total / 2**20:.1f} MB)")
        load, floor = statistics.median(loads), statistics.median(floors)
        print(f"load_image + program(): median {load:.3f} s over {args.repeat}; reading the entries' bytes: "
              f"{floor:.3f} s; ratio {load / floor:.1f}")

        held = sum(a.nbytes for a in image.arrays.values()) + sum(a.nbytes for a in image.reference.values())
        documents = len(json.dumps(image.manifest)) + len(json.dumps(image.program_data.document))
        tracemalloc.start()
        image.save(folder / "again.cimg")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"save: peak allocation {peak / 2**20:.1f} MB = {peak / held:.3f} x the image's arrays "
              f"({held / 2**20:.1f} MB), {peak / documents:.1f} x its two JSON documents ({documents / 2**20:.1f} MB)")
        assert (folder / "again.cimg").read_bytes() == image_path.read_bytes(), "a loaded image saved again differs"


if __name__ == "__main__":
    main()
