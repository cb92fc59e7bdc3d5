"""Writing an image: the chunked blob writer gives the image's bytes, and a failed write or sync is one clear error
(exit 2), with no output; the device levels, reference weights and device counts of emit-image against their
closed form; program tensors stored once per content; the compile summary of a large mapping, folded."""

from __future__ import annotations

import errno
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import cimc
import cimc.image
import cimc.step_program
from cimc import cli
from cimc.attributes import Tensor
from cimc.compiler import build_image, compile_to_ir
from cimc.diagnostics import CimcError
from cimc.hardware import hardware_from_dict, load_hardware
from cimc.image import image_summary, format_summary, load_image
from cimc.ir import Block, Module
from cimc.passes.emit_image import _Layout
from cimc.passes.fuse_activation import fusion_summary
from cimc.report import LISTED_ARRAYS, index_ranges, mapping_summary
from cimc.step_program import _BYTES_KEY_LIMIT, _Emitter
from range_models import recurrent_model

ROOT = Path(__file__).parents[1]
KWS = ROOT / "examples" / "kws" / "kws_lstm.onnx"
CALIB = ROOT / "examples" / "kws" / "calib.npz"


@pytest.fixture(scope="module")
def kws() -> cimc.CompiledModel:
    return cimc.compile(KWS, calib=CALIB)


def test_chunks_hold_the_tensors_back_to_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed form: the chunks, joined, are each tensor's little-endian C-order bytes in turn, whatever the tensor's
    layout (a strided view, big-endian, empty, larger than a chunk), and no chunk is larger than _CHUNK_BYTES."""
    monkeypatch.setattr(cimc.image, "_CHUNK_BYTES", 64)
    rng = np.random.default_rng(0)
    members = [rng.random((3, 5), dtype=np.float32), rng.random((9, 9), dtype=np.float32)[::2, 1:7],
               np.zeros((0, 4), np.float32), rng.random(50).astype(">f4"), rng.random((2, 3), dtype=np.float32),
               rng.random((4, 11), dtype=np.float32)[:, ::3]]
    expected = b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in members)
    chunks = [bytes(c) for c in cimc.image._chunks(members, np.dtype("<f4"))]  # copied at once: the buffer is reused
    assert b"".join(chunks) == expected
    assert all(0 < len(c) <= 64 for c in chunks) and len(chunks) == -(-len(expected) // 64)


@pytest.mark.parametrize("chunk", [4096, 4 << 20])
def test_streamed_save_writes_the_bytes_of_the_image(kws: cimc.CompiledModel, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Streaming the blobs chunk by chunk into the file changes no byte against to_bytes(), whatever the chunk size
    (hundreds of chunks per blob at 4 KB); every CRC-32 and checksum holds, and the JSON is canonical."""
    monkeypatch.setattr(cimc.image, "_CHUNK_BYTES", chunk)
    kws.image.save(tmp_path / "out.cimg")
    monkeypatch.setattr(cimc.image, "_CHUNK_BYTES", 4 << 20)
    assert (tmp_path / "out.cimg").read_bytes() == kws.image.to_bytes()
    with zipfile.ZipFile(tmp_path / "out.cimg") as zf:
        assert zf.testzip() is None
        for name in ("manifest.json", "program.json"):  # canonical JSON: what json.dumps gives of what it holds
            text = zf.read(name).decode()
            assert text == _dumps(json.loads(text))
    loaded = load_image(tmp_path / "out.cimg")  # checks every SHA-256
    assert all(np.array_equal(loaded.arrays[k], kws.image.arrays[k]) for k in kws.image.arrays)


def _failing_after(calls: int, error: BaseException):  # noqa: ANN202
    """A zip entry writer's write that fails on its ``calls``-th call."""
    original = zipfile._ZipWriteFile.write  # type: ignore[attr-defined]
    count = [0]

    def write(self, data):  # noqa: ANN001, ANN202
        count[0] += 1
        if count[0] == calls:
            raise error
        return original(self, data)

    return write


def test_a_failed_write_is_a_clean_error(kws: cimc.CompiledModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills up while a chunk is written is one clear error; the output is not created and the temporary
    file is gone."""
    monkeypatch.setattr(cimc.image, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(zipfile._ZipWriteFile, "write",  # type: ignore[attr-defined]
                        _failing_after(5, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CimcError, match=r"cannot write .*out\.cimg: No space left on device"):
        kws.image.save(tmp_path / "out.cimg")
    assert list(tmp_path.iterdir()) == []


def test_compile_exits_2_when_the_image_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(zipfile._ZipWriteFile, "write",  # type: ignore[attr-defined]
                        _failing_after(2, OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "kws.cimg"
    assert cli.main(["compile", str(KWS), "--calib", str(CALIB), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"cannot write {out}: No space left on device")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_device_levels_are_computed_in_float64() -> None:
    """Closed form: level = -1 below G_min / 2, else clip(rint((G - G_min) / delta_g), 0, levels - 1), with G the
    float32 target taken exactly in float64. G_min = 0.3 uS makes G_min / 2 and the level boundaries fall between
    float32 values, so a float32 evaluation would give other levels to the targets next to them."""
    data = load_hardware().to_dict()
    data["device"]["g_min_us"] = 0.3
    hw = hardware_from_dict(data, "test")
    d = hw.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    edges = [d.g_min_us / 2] + [d.g_min_us + (k + 0.5) * delta for k in range(d.levels - 1)]
    near = [np.nextafter(np.float32(e), np.float32(s)) for e in edges for s in (-np.inf, np.inf)] + \
        [np.float32(e) for e in edges] + [np.float32(0), np.float32(d.g_max_us), np.float32(2 * d.g_max_us)]
    g = np.array(near, np.float32)
    g = np.resize(g, (len(g) // 2 + 1, 2))
    exact = g.astype(np.float64)
    expected = np.where(exact < d.g_min_us / 2, -1, np.clip(np.rint((exact - d.g_min_us) / delta), 0, d.levels - 1))
    layout = _Layout(hw, [0])
    out, _ = layout.natural(g, g[:, ::-1].copy())
    assert np.array_equal(out[:, 0::2], expected) and np.array_equal(out[:, 1::2], expected[:, ::-1])


def test_index_ranges() -> None:
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert index_ranges([3]) == "3"
    assert index_ranges(list(range(0, 20, 2)), shown=2) == "0, 2, ... (8 more runs)"


def test_a_small_mapping_lists_every_array(kws: cimc.CompiledModel) -> None:
    module = compile_to_ir(KWS, load_hardware())
    text = mapping_summary(module, load_hardware())
    arrays = sorted({int(op.attributes["array"]) for op in module.walk() if op.name == "cim.tile_mvm"})
    assert len(arrays) <= LISTED_ARRAYS
    assert [line.split(":")[0].strip() for line in text.splitlines() if line.startswith("  array ")] == \
        [f"array {k}" for k in arrays]


@pytest.mark.filterwarnings("ignore::cimc.api.RangeAssumptionWarning")  # the default analytic input range; no calibration
def test_a_large_mapping_is_folded(tmp_path: Path) -> None:
    """More than LISTED_ARRAYS arrays: counts by fill that add up to the arrays holding weights, each node with the
    arrays its tiles occupy, ramps by kind adding up to every ramp, and `cimc dump` named for the list it prints."""
    path = tmp_path / "lstm.onnx"
    onnx.save(recurrent_model("LSTM", 64, 256, seed=0, scale=1 / 16), path)
    hw = load_hardware()
    module = compile_to_ir(path, hw)
    tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
    arrays = {int(op.attributes["array"]) for op in tiles}
    assert len(arrays) > LISTED_ARRAYS
    text = mapping_summary(module, hw, "lstm.cimg")
    lines = text.splitlines()
    assert len(lines) < 20 and not any(line.startswith("  array ") for line in lines)
    fills = [int(m.group(1)) for line in lines for m in [re.match(r"  (\d+) arrays?: ", line)] if m]
    assert sum(fills) == len(arrays)
    for node in {str(op.location) for op in tiles}:
        mine = {int(op.attributes["array"]) for op in tiles if str(op.location) == node}
        arrays_text = "1 array" if len(mine) == 1 else f"{len(mine)} arrays"
        assert any(line.startswith(f"  {node}: ") and f"on {arrays_text} ({index_ranges(sorted(mine))})" in line
                   for line in lines), node
    assert "`cimc dump lstm.cimg` lists each array and its regions" in text
    ramps = [op for op in module.walk() if op.name == "cim.ramp"]
    fused = fusion_summary(module).splitlines()
    kinds = [line for line in fused if line.startswith("  ") and " x " in line and "uS per unit of z" in line]
    assert len(ramps) > LISTED_ARRAYS and sum(int(line.split()[0]) for line in kinds) == len(ramps)
    assert len(fused) < 20
    # what the hint promises: the dump of the image lists every array
    image = cimc.compile(path).image
    dump = format_summary(image_summary(image))
    assert {int(line.split()[1].rstrip(":")) for line in dump.splitlines() if line.startswith("  array ")} == \
        set(image.arrays)


@pytest.mark.parametrize("onto", ["tile", "ramp"])
def test_overlapping_regions_are_a_placement_clash(onto: str) -> None:
    """A tile laid over devices another tile or a ramp already holds is refused, also while the first tile's levels
    are still queued to be computed with the next tiles of its shape."""
    from cimc.compiler import build_image

    hw = load_hardware()
    module = compile_to_ir(KWS, hw, cimc.compiler.CompileOptions(calib=str(CALIB)))
    tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
    first, second = tiles[0], tiles[1]
    if onto == "tile":  # one word line below the first tile, on its bit lines (clear of its array's ramp column)
        target = {"array": first.attributes["array"], "array_row": int(first.attributes["array_row"]) + 1,  # type: ignore[arg-type]
                  "array_col": first.attributes["array_col"]}
    else:  # over the ramp column of the first tile's array
        ramp = next(op for op in module.walk() if op.name == "cim.ramp")
        width = int(second.attributes["cols"][1]) - int(second.attributes["cols"][0])  # type: ignore[index]
        target = {"array": ramp.attributes["array"], "array_row": 0,
                  "array_col": int(ramp.attributes["array_col"]) - 2 * width + 2}  # type: ignore[arg-type]
    second.attributes.update(target)
    with pytest.raises(CimcError, match="internal placement clash in array"):
        build_image(module, hw)


def test_a_failed_sync_is_a_clean_error(kws: cimc.CompiledModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync that makes the written image durable fails: one clear error, no output, no temporary file."""
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CimcError, match=r"cannot write .*out\.cimg: Input/output error"):
        kws.image.save(tmp_path / "out.cimg")
    assert list(tmp_path.iterdir()) == []


def _dumps(document: object) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def test_reference_weights_and_formed_devices_against_their_closed_form() -> None:
    """Closed form of what the batched layout writes, tile by tile: the reference weights of a tile are
    (G+ - G-) / g_scale in float64, rounded once to the model's float type (bit for bit, whatever batch and shape
    the tile was computed in), and each array's devices_used is the count of its devices at a level >= 0. The
    hardware has narrow arrays so that tiles of several widths interleave in the walk."""
    data = load_hardware().to_dict()
    data["array"]["cols"] = 24  # 12 weight columns a tile: the gates' remainders give tiles of other widths
    hw = hardware_from_dict(data, "test")
    module = compile_to_ir(KWS, hw)
    tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
    assert len({op.attributes["g_pos"].array.shape for op in tiles}) > 1
    image = build_image(module, hw)
    reads = {op["attrs"]["tile"]: op["attrs"] for op in image.program_data.ops() if op["op"] == "read"}
    for tile, op in enumerate(tiles):
        g_pos, g_neg = (op.attributes[k].array.astype(np.float64) for k in ("g_pos", "g_neg"))
        expected = ((g_pos - g_neg) / op.attributes["g_scale"].array).astype(op.results[0].type.np_dtype)
        got = image.reference[reads[tile]["reference"]]
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), tile
    for entry in image.manifest["arrays"]:
        assert entry["devices_used"] == np.count_nonzero(image.arrays[entry["index"]] >= 0)


@pytest.mark.parametrize("keys", ["content", "all equal"])
def test_program_tensors_are_stored_once_per_content(keys: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program tensor's entry is shared by every tensor of the same dtype, shape and bytes (small ones keyed by
    a hash of their bytes, large ones by their digest; a strided window like its contiguous copy), and named after
    the first; the same bytes under another dtype or shape, and -0.0 against 0.0, are other contents. Keys that
    all collide change nothing: equal keys are told apart by their content."""
    if keys == "all equal":
        monkeypatch.setattr(cimc.step_program, "_content_key", lambda tensor, data: 0)
    emitter = _Emitter(Module("main", Block([], []), {}), {})

    def entry(array: np.ndarray, key: str = "t") -> str:
        return emitter.tensor(Tensor(array, key))["npy"]

    small, large = np.arange(32.0), np.arange(1000.0)
    assert small.nbytes <= _BYTES_KEY_LIMIT < large.nbytes
    assert entry(small) == entry(small.copy(), "other") == "program/t.npy"
    assert entry(np.zeros(64, np.float32)) == "program/t_1.npy"  # the bytes of np.zeros(32), as float32
    assert entry(np.zeros(32)) == "program/t_2.npy"
    assert entry(np.zeros((2, 16))) == "program/t_3.npy"
    assert entry(-np.zeros(32)) == "program/t_4.npy"
    window = Tensor(np.stack([large, -large], axis=1)).window((slice(None), 0), "window")
    assert not window.array.flags.c_contiguous
    assert entry(large, "big") == entry(large.copy()) == emitter.tensor(window)["npy"] == "program/big.npy"
    assert entry(large + 1, "big") == "program/big_1.npy"
    assert sorted(emitter.tensors) == ["program/big.npy", "program/big_1.npy"] + [
        f"program/t{s}.npy" for s in ("", "_1", "_2", "_3", "_4")]
