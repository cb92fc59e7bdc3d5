"""Chip sizes, device utilization and image sizes of models compiled on the default (auto-sized) chip.

    python bench/chip.py [--big]

For each model: the arrays the mapping uses, the fraction of their devices
that are programmed (weights, identity columns and ramps), the image size and
the compile time, measured in this run. The 20-step GRU decoder (20 GRU nodes
over the same initializers) is compiled with and without share-weights and
against a one-step decoder: shared, it should take the arrays of one decoder.
``--big`` adds the 2-layer LSTM-1024 (67 MB of weights; about 4,500 arrays).
Models are generated with onnx.helper (tests/chip_models.py), seeded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import cimc
from cimc.npz import npz_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from chip_models import gru_decoder, lstm_stack  # noqa: E402


def measure(name: str, path: Path, calib: Path | None, share: bool = True) -> None:
    start = time.perf_counter()
    model = cimc.compile(path, calib=calib, share_weights=share)
    data = model.image.to_bytes()
    seconds = time.perf_counter() - start
    arrays = model.image.manifest["arrays"]
    devices = sum(a["rows"] * a["cols"] for a in arrays)
    used = sum(a["devices_used"] for a in arrays)
    program = model.image.program()
    fused = int(program.attributes.get("fuse.activations", 0))  # type: ignore[arg-type]
    digital = sum(1 for op in program.walk() if op.name == "cim.activation")
    print(f"{name:<34} {len(arrays):>6} {100 * used / devices:>9.1f}% {len(data) / 1e6:>9.2f} {fused:>3}/{fused + digital:<3} {seconds:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also the 2-layer LSTM-1024")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(1)
    print(f"{'model':<34} {'arrays':>6} {'devices':>10} {'image MB':>9} {'fused':>7} {'compile s':>8}")
    kws = ROOT / "examples" / "kws"
    measure("KWS LSTM 40->32 + classifier", kws / "kws_lstm.onnx", kws / "calib.npz")
    models = [("LSTM 64->256", lstm_stack(64, 256), "x", (10, 4, 64))]
    if args.big:
        models.append(("2-layer LSTM 1024->1024", lstm_stack(1024, 1024, 2), "x", (4, 2, 1024)))
    for name, model, input_name, shape in models:
        path = folder / "model.onnx"
        onnx.save(model, path)
        calib = folder / "calib.npz"
        calib.write_bytes(npz_bytes({input_name: rng.uniform(-1, 1, shape).astype(np.float32)}))
        measure(name, path, calib)
    calib = folder / "decoder_calib.npz"
    calib.write_bytes(npz_bytes({"h0": rng.uniform(-1, 1, (1, 4, 64)).astype(np.float32)}))
    for steps in (1, 20):
        onnx.save(gru_decoder(steps), folder / f"decoder{steps}.onnx")
    measure("GRU-64 decoder, 1 step", folder / "decoder1.onnx", calib)
    measure("GRU-64 decoder, 20 steps, shared", folder / "decoder20.onnx", calib)
    measure("GRU-64 decoder, 20 steps, copies", folder / "decoder20.onnx", calib, share=False)


if __name__ == "__main__":
    main()
