"""Image format v3 (docs/image-format.md): sizes, the step program's op set, validation on load, provenance, the
documented reader. Exact fidelity against onnxruntime over the corpus is tests/test_image.py's."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.compiler import CompileOptions, build_image, compile_to_ir
from cimc.diagnostics import CimcError
from cimc.hardware import hardware_from_dict, load_hardware
from cimc.image import image_sizes, load_image
from cimc.printer import print_module
from cimc.step_program import module_to_program
from range_models import recurrent_model

ROOT = Path(__file__).parents[1]
KWS = ROOT / "examples" / "kws" / "kws_lstm.onnx"
CALIB = ROOT / "examples" / "kws" / "calib.npz"


@pytest.fixture(scope="module")
def kws(tmp_path_factory: pytest.TempPathFactory) -> tuple[cimc.CompiledModel, Path]:
    model = cimc.compile(KWS, calib=CALIB)
    path = tmp_path_factory.mktemp("image") / "kws.cimg"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def kws_inputs() -> dict[str, np.ndarray]:
    return {"features": np.load(ROOT / "examples" / "kws" / "eval_set.npz")["features"][:, :8]}


def _rewrite(src: Path, dst: Path, change) -> None:  # noqa: ANN001
    """Copy an image, letting ``change(name, data)`` alter entries (None drops one); checksums are updated, so that
    what load_image refuses is the content, not a digest."""
    with zipfile.ZipFile(src) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(entries.pop("manifest.json"))
    changed = {}
    for name, data in entries.items():
        new = change(name, data)
        if new is not None:
            changed[name] = new
    manifest = change("manifest.json", manifest) or manifest
    manifest["checksums"] = {name: hashlib.sha256(data).hexdigest() for name, data in changed.items()}
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in changed.items():
            zf.writestr(name, data)


def _edit_program(edit):  # noqa: ANN001, ANN202
    def change(name: str, data):  # noqa: ANN001, ANN202
        if name != "program.json":
            return data if name != "manifest.json" else None
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()
    return change


def _reads(document: dict) -> list[dict]:
    found = []

    def visit(ops: list[dict]) -> None:
        for op in ops:
            if op["op"] == "read":
                found.append(op)
            if "body" in op:
                visit(op["body"]["ops"])

    visit(document["ops"])
    return found


# --- sizes ----------------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::cimc.api.RangeAssumptionWarning")  # analytic ranges are fine for sizes
def test_devices_take_at_most_3_bytes_per_weight(tmp_path: Path) -> None:
    """LSTM 64->256 (the issue's model). A weight is a differential pair of int8 levels (2 B); unused devices of
    partly filled arrays and ramp columns add the rest, which must stay under 1 B/weight. The reference weights are
    float32, 4 B/weight (packed in one blob; 128 B a tile of slack). Everything else is per read, not per weight: its
    JSON op (~0.8 KB), manifest region (~0.3 KB), the tensor-table entries of its four tensors (~0.1 KB each), three
    per-column float64 tensors and the row scales (<= 8 B x (3 x 32 + 128)): <= 4 KiB a read; and per ramp its
    thresholds and output levels as JSON text (<= 2 x 31 x 24 B) and its region: <= 2 KiB. The blobs' headers and zip
    records are a few hundred bytes in all."""
    onnx.save(recurrent_model("LSTM", 64, 256, seed=0, scale=1 / 16), tmp_path / "lstm.onnx")
    model = cimc.compile(tmp_path / "lstm.onnx", input_ranges={"X": (-1.0, 1.0)})
    sizes = image_sizes(model.image)
    weights = sizes["weights"]
    # W, R and the bias row (the two ONNX biases fold into one), plus the identity columns of tanh(c_t) (256 in
    # 31-column diagonal blocks: 8 x 31^2 + 8^2) that the devices also hold.
    assert weights == 4 * 256 * (64 + 256 + 1) + 8 * 31 ** 2 + 8 ** 2
    assert sizes["device_bytes"] / weights <= 3.0
    tiles = len(model.image.reference)
    assert sizes["reference_bytes"] <= 4 * weights + 128 * tiles
    whole = len(model.image.to_bytes())
    other = whole - sizes["device_bytes"] - sizes["reference_bytes"]
    reads = sum(1 for op in model.image.program_data.ops() if op["op"] == "read")
    assert other <= 4096 * reads + 2048 * len(model.image.manifest["ramps"]), f"{other / reads:.0f} B per read"
    print(f"LSTM 64->256: devices {sizes['device_bytes'] / weights:.2f} B/weight, whole image {whole / weights:.2f}")


def test_levels_are_int8_or_int16_beyond_128_levels(kws: tuple, tmp_path: Path) -> None:
    model, _ = kws
    assert all(a.dtype == np.int8 for a in model.image.arrays.values())
    data = load_hardware().to_dict()
    data["device"]["levels"] = 256
    fine = cimc.compile(KWS, hw=hardware_from_dict(data, "test"), calib=CALIB)
    fine.save(tmp_path / "fine.cimg")
    levels = load_image(tmp_path / "fine.cimg").arrays
    assert all(a.dtype == np.int16 for a in levels.values())
    assert max(int(a.max()) for a in levels.values()) > 127  # the wider type is needed, not just chosen


# --- the step program -----------------------------------------------------------------------------------------------

def test_emit_leaves_the_module_unchanged() -> None:
    hw = load_hardware()
    module = compile_to_ir(KWS, hw, CompileOptions(calib=str(CALIB)))
    before = print_module(module)
    build_image(module, hw)
    after = print_module(module)
    assert after.text == before.text
    assert after.resources.keys() == before.resources.keys()
    assert all(np.array_equal(after.resources[k], before.resources[k]) for k in before.resources)


def test_program_is_the_op_set_and_round_trips(kws: tuple) -> None:
    """The Module built from program.json writes back the same document and tensors; it holds no compiler-only
    attribute and no ramp data beyond the manifest's."""
    model, path = kws
    image = load_image(path)
    program = image.program()
    again = module_to_program(program)
    assert again.document == image.program_data.document
    assert again.tensors.keys() == image.program_data.tensors.keys()
    assert all(np.array_equal(again.tensors[k], image.program_data.tensors[k]) for k in again.tensors)
    text = (zipfile.ZipFile(path).read("program.json")).decode()
    for compiler_only in ("fuse.reason", "range.lo", "g_pos", "device_levels", "steps_us", "share", "ranges"):
        assert f'"{compiler_only}"' not in text
    thresholds = [r["thresholds"] for r in image.manifest["ramps"]]
    assert not any(json.dumps(t[0]) in text for t in thresholds)  # ramps are recorded once, in the manifest
    names = {op.name for op in program.walk()}
    assert {"cim.tile_mvm", "cim.nl_adc", "cim.ramp", "cim.adc", "cim.loop"} <= names


def test_an_op_outside_the_op_set_is_refused_at_emit(cimc_cli, tmp_path: Path) -> None:
    """A pipeline that leaves the LSTM unlowered: the image lowering names the op; the CLI, which first checks that
    anything was mapped, says so and writes nothing."""
    hw = load_hardware()
    module = compile_to_ir(KWS, hw, CompileOptions(pipeline="canonicalize"))
    with pytest.raises(CimcError, match=r"'onnx.LSTM' at kws_lstm.onnx:/lstm/LSTM is not in the step op set cimc-step/1"):
        build_image(module, hw)
    result = cimc_cli("compile", str(KWS), "-p", "canonicalize", "-o", "x.cimg", cwd=tmp_path)
    assert result.returncode == 2 and "mapped nothing onto crossbar arrays" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.cimg").exists()


def test_an_onnx_attribute_outside_the_op_set_is_refused_at_emit() -> None:
    """Dropping an attribute of a digital op would change what it computes: the lowering refuses it instead."""
    hw = load_hardware()
    module = compile_to_ir(KWS, hw, CompileOptions(calib=str(CALIB)))
    sub = next(op for op in module.walk() if op.name == "onnx.Sub")
    sub.attributes["fmod"] = 1
    with pytest.raises(CimcError, match=r"'onnx.Sub' at kws_lstm.onnx:/Sub has attributes \['fmod'\]"):
        build_image(module, hw)


# --- what load refuses ----------------------------------------------------------------------------------------------

def _bad_manifest_version(manifest: dict) -> None:
    manifest["version"] = 2


MUTATIONS = {
    "unknown op": (lambda d: d["ops"].insert(0, {"op": "onnx.LSTM", "results": [{"name": "q", "type": "f32[1]"}]}),
                   r"unknown op 'onnx.LSTM'"),
    "undefined operand": (lambda d: _reads(d)[0].update(operands=["nowhere"]), r"operand 'nowhere' is not defined"),
    "read outside its array": (lambda d: _reads(d)[0]["attrs"].update(bit_line=60), r"do not fit array"),
    "unknown attribute": (lambda d: _reads(d)[0]["attrs"].update({"fuse.reason": "x"}), r"unknown attributes \['fuse.reason'\]"),
    "wrong attribute kind": (lambda d: _reads(d)[0]["attrs"].update(rows="0:73"), r"attribute 'rows': expected a list \(ints\)"),
    "a loop's value used after it": (lambda d: d["ops"][-1].update(operands=[_reads(d)[0]["results"][0]["name"]]),
                                     r"operand '7' is not defined before its use"),
    "no terminator": (lambda d: d["ops"].pop(), r"must end with 'return'"),
    "other op set": (lambda d: d.update(format="cimc-step/9"), r"op set 'cimc-step/9'"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_program_that_breaks_the_op_set_is_refused(kws: tuple, tmp_path: Path, mutation: str, cimc_cli) -> None:
    _, path = kws
    edit, message = MUTATIONS[mutation]
    bad = tmp_path / "bad.cimg"
    _rewrite(path, bad, _edit_program(edit))
    with pytest.raises(CimcError, match=message):
        load_image(bad)
    result = cimc_cli("dump", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tampered_levels_and_v2_images_are_refused(kws: tuple, tmp_path: Path, cimc_cli) -> None:
    _, path = kws
    flipped = tmp_path / "flipped.cimg"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(flipped, "w") as dst:  # checksums kept: the digest catches it
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name == "data/int8.npy" else data)
    out_of_range = tmp_path / "range.cimg"
    packed = json.loads(zipfile.ZipFile(path).read("manifest.json"))["tensors"]["arrays/0.levels.npy"]

    def level_100(name: str, data):  # noqa: ANN001, ANN202
        if name != packed["blob"]:
            return data if name != "manifest.json" else None
        levels = np.load(io.BytesIO(data)).copy()
        levels[packed["offset"]] = 100  # array 0's device (0, 0); the default hardware has 64 levels
        buffer = io.BytesIO()
        np.save(buffer, levels)
        return buffer.getvalue()

    _rewrite(path, out_of_range, level_100)
    v2 = tmp_path / "v2.cimg"
    _rewrite(path, v2, lambda name, data: _bad_manifest_version(data) if name == "manifest.json" else data)
    for bad, message in ((flipped, "checksum mismatch in data/int8.npy"), (out_of_range, r"levels -1\.\.63"),
                         (v2, "version 2 image; this cimc reads version 3; recompile")):
        with pytest.raises(CimcError, match=message):
            load_image(bad)
        result = cimc_cli("dump", str(bad))
        assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _swap_offsets(tensors: dict) -> None:
    tensors["arrays/1.levels.npy"]["offset"] = tensors["arrays/0.levels.npy"]["offset"] + 1


TABLE_EDITS = {
    "out of bounds": (lambda t: t["arrays/0.levels.npy"].update(offset=10**9), r"runs past the end of data/int8.npy"),
    "overlapping": (_swap_offsets, r"overlaps tensor arrays/0.levels.npy"),
    "a gap": (lambda t: t.pop("arrays/1.levels.npy"), r"data/int8.npy elements \d+:\d+ belong to no tensor"),
    "unknown blob": (lambda t: t["arrays/0.levels.npy"].update(blob="data/int9.npy"), r"which the image does not hold"),
    "negative offset": (lambda t: t["arrays/0.levels.npy"].update(offset=-1), r"neither may be negative"),
    "fractional offset": (lambda t: t["arrays/0.levels.npy"].update(offset=0.5), r"offset must be an integer"),
    "wrong shape": (lambda t: t["arrays/0.levels.npy"].update(shape=[64, 128]), r"of a 128 x 64 array, got int8\[64, 128\]"),
    "wrong type": (lambda t: t["arrays/0.levels.npy"].update(blob="data/float64.npy", offset=0, shape=[0]),
                   r"data/int8.npy elements 0:\d+ belong to no tensor"),
    "no table": (lambda t: t.clear() or t.update(x=1), r"tensor x must be an object"),
}


@pytest.mark.parametrize("edit", sorted(TABLE_EDITS))
def test_a_tensor_table_that_misplaces_tensors_is_refused(kws: tuple, tmp_path: Path, edit: str, cimc_cli) -> None:
    """The manifest's tensor table is checked against the blobs before any tensor is read: each tensor inside its
    blob, none overlapping, every element of every blob some tensor's, offsets whole elements (so none misaligned),
    each the type and shape its reader expects."""
    _, path = kws
    change, message = TABLE_EDITS[edit]

    def edited(name: str, data):  # noqa: ANN001, ANN202
        if name == "manifest.json":
            change(data["tensors"])
        return data

    bad = tmp_path / "bad.cimg"
    _rewrite(path, bad, edited)
    with pytest.raises(CimcError, match=message):
        load_image(bad)
    result = cimc_cli("dump", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_blob_of_another_type_than_its_name_is_refused(kws: tuple, tmp_path: Path) -> None:
    _, path = kws

    def widened(name: str, data):  # noqa: ANN001, ANN202
        if name != "data/int8.npy":
            return data if name != "manifest.json" else None
        buffer = io.BytesIO()
        np.save(buffer, np.load(io.BytesIO(data)).astype(np.int16))
        return buffer.getvalue()

    bad = tmp_path / "bad.cimg"
    _rewrite(path, bad, widened)
    with pytest.raises(CimcError, match=r"data/int8.npy holds int16\[\d+\]; a blob is a 1-D array of the type its name says"):
        load_image(bad)


def test_blobs_are_few_aligned_and_hold_every_tensor(kws: tuple) -> None:
    """One stored entry per element type, each blob's data at a multiple of 64 bytes of the file (so that views of a
    memory map are aligned for any type), and the loaded tensors equal to the emitted ones."""
    model, path = kws
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        data = path.read_bytes()
        for info in zf.infolist():
            if info.filename.startswith("data/"):
                name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
                start = info.header_offset + 30 + name_len + extra_len
                header_len = struct.unpack("<H", data[start + 8:start + 10])[0]
                assert (start + 10 + header_len) % 64 == 0, info.filename
    assert sorted(names) == names and all(n in ("manifest.json", "program.json") or n.startswith("data/") for n in names)
    assert len(names) <= 6
    loaded = load_image(path)
    emitted = model.image.tensors()
    assert loaded.tensors().keys() == emitted.keys()
    assert all(np.array_equal(loaded.tensors()[k], a) and loaded.tensors()[k].dtype == a.dtype for k, a in emitted.items())


def test_a_compressed_entry_is_refused_unread(kws: tuple, tmp_path: Path) -> None:
    """An image stores every entry; a deflated one (a decompression bomb, say: 64 MB of zeros in 64 kB) is refused
    from the zip directory, before anything is inflated."""
    _, path = kws
    bomb = tmp_path / "bomb.cimg"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("data/zz.npy", bytes(64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < path.stat().st_size + (1 << 20)
    with pytest.raises(CimcError, match="entry data/zz.npy is compressed or encrypted"):
        load_image(bomb)


# --- provenance -----------------------------------------------------------------------------------------------------

def test_provenance_records_model_cimc_pipeline_and_hardware(kws: tuple) -> None:
    model, _ = kws
    p = model.image.manifest["provenance"]
    assert p["model"] == {"name": "kws_lstm.onnx", "sha256": hashlib.sha256(KWS.read_bytes()).hexdigest()}
    assert p["cimc_version"] == cimc.__version__
    assert p["pipeline"].startswith("decompose-rnn,") and 'calib="calib.npz"' in p["pipeline"]
    assert str(ROOT) not in p["pipeline"]  # an image does not depend on the folder it was compiled in
    assert re.fullmatch(r"[0-9a-f]{64}", p["hardware_sha256"])


def test_verify_refuses_another_model_and_warns_on_other_bytes(kws: tuple, tmp_path: Path, cimc_cli) -> None:
    _, path = kws
    onnx.save(recurrent_model("GRU", 8, 16, seed=1, scale=0.4), tmp_path / "gru.onnx")
    result = cimc_cli("verify", str(tmp_path / "gru.onnx"), str(path), "--samples", "2", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [next(line for line in result.stderr.splitlines() if line)]
    assert "gru.onnx is not the model this image was compiled from: its inputs are X f32 rank 3" in result.stderr
    assert "features f32 rank 3" in result.stderr

    retrained = onnx.load(str(KWS))  # same inputs and outputs, other weights
    weights = next(t for t in retrained.graph.initializer if len(t.dims) == 3)
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * np.float32(1.001), weights.name))
    onnx.save(retrained, tmp_path / "retrained.onnx")
    result = cimc_cli("verify", str(tmp_path / "retrained.onnx"), str(path), "--samples", "2", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "retrained.onnx differs from the model this image was compiled from (kws_lstm.onnx" in warnings[0]
    same = cimc_cli("verify", str(KWS), str(path), "--samples", "2", cwd=tmp_path)
    assert same.returncode == 0 and "warning: " not in same.stderr.replace("warning: converter", "")


# --- without reference weights ----------------------------------------------------------------------------------------

def test_no_reference_runs_ideal_the_same_and_refuses_exact(kws: tuple, kws_inputs: dict, tmp_path: Path, cimc_cli) -> None:
    model, path = kws
    result = cimc_cli("compile", str(KWS), "--calib", str(CALIB), "--no-reference", "-o", "small.cimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    small = load_image(tmp_path / "small.cimg")
    assert not small.reference and not any(n.startswith("reference/") for n in zipfile.ZipFile(tmp_path / "small.cimg").namelist())
    full = load_image(path)
    assert all(np.array_equal(small.arrays[k], full.arrays[k]) for k in full.arrays)
    ideal = Simulator(small, SimulatorOptions("ideal")).run(kws_inputs)["logits"]
    np.testing.assert_array_equal(ideal, Simulator(full, SimulatorOptions("ideal")).run(kws_inputs)["logits"])
    with pytest.raises(CimcError, match="no reference weights"):
        Simulator(small, SimulatorOptions("exact")).run(kws_inputs)
    result = cimc_cli("verify", str(KWS), "small.cimg", "--samples", "2", cwd=tmp_path)
    assert result.returncode == 2 and "compiled with --no-reference" in result.stderr


# --- the documented reader ------------------------------------------------------------------------------------------

def test_the_reader_in_the_docs_reads_devices_and_a_ramp(kws: tuple, tmp_path: Path) -> None:
    """docs/image-format.md's numpy + stdlib reader, run on a fresh image, against cimc's own reading: the same
    conductances (elementwise from the same integers), and the ramp thresholds the ideal simulator realizes. Both
    compute them with the same float64 operations in the same order (sums of at most a few devices), so they agree to
    the last bits; rtol 1e-12 admits only a different summation order."""
    model, path = kws
    doc = (ROOT / "docs" / "image-format.md").read_text()
    code = re.search(r"<!-- reader-example -->\n```python\n(.*?)```", doc, re.S)
    assert code is not None, "the reader example is missing from docs/image-format.md"
    script = tmp_path / "reader.py"
    script.write_text(code.group(1))
    run = subprocess.run([sys.executable, "-I", str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "import cimc" not in code.group(1) and "from cimc" not in code.group(1)
    got = json.loads(run.stdout)

    image = load_image(path)
    d = image.hardware.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    (tile,) = [op for op in image.program().walk() if op.name == "cim.tile_mvm" and op.attributes["image.tile"] == got["region_tile"]]
    assert int(tile.attributes["array"]) == got["array"]
    for levels, g in zip(cimc.image.tile_levels(image, tile), (got["g_pos"], got["g_neg"])):
        np.testing.assert_array_equal(np.where(levels >= 0, d.g_min_us + levels * delta, 0.0), np.array(g))
    simulator = Simulator(image, SimulatorOptions("ideal"))
    realized = simulator.realized_thresholds(got["ramp"])
    np.testing.assert_allclose(got["thresholds"], realized, rtol=1e-12, atol=0)
    ramp = image.manifest["ramps"][got["ramp"]]
    assert got["output"] == ramp["output_levels"][int(np.searchsorted(realized, got["z"], side="right"))]


@pytest.mark.parametrize(("where", "value"), [(("model", "inputs", 0, "dtype"), []), (("ramps", 0, "array"), {}),
                                              (("arrays", 0, "regions", 0, "kind"), [1])])
def test_manifest_values_of_the_wrong_json_type_are_refused(kws, tmp_path: Path, where, value) -> None:  # noqa: ANN001
    """Found by the 10,000-case fuzz run: a list where a name belongs was an unhashable-type internal error."""
    _, path = kws

    def change(name: str, data):  # noqa: ANN001, ANN202
        if name != "manifest.json":
            return data
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
        return data

    bad = tmp_path / "bad.cimg"
    _rewrite(path, bad, change)
    with pytest.raises(CimcError, match="is corrupt"):
        load_image(bad)
