"""The chip sized to the model, placement monotone in the array count, gate column packing, and shared weights.

Outputs are compared with onnxruntime at the frontend's tolerance (rtol 1e-5,
atol 1e-6, see ``passes_support``): at ``exact`` fidelity the simulator reads
the target conductances, whose differences reproduce every float32 weight,
so only the float32 summation order differs from onnxruntime's (a few ulp per
dot product; the GRU and LSTM updates are contractions, so the steps do not
amplify it). Shared and unshared compiles are compared bit for bit: sharing
moves only conductance scales (g_common), and (G+ - G-) / g_scale rescaled in
float64 rounds back to the same float32 weight (the float64 value is a
float32 number perturbed by ~1e-16 relative, far inside half a float32 ulp).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from chip_models import gru_decoder, lstm_stack
from cimc.compiler import CompileOptions, compile_to_ir
from cimc.diagnostics import CimcError
from cimc.hardware import load_hardware
from cimc.compiler import build_image
from cimc.image import image_sizes
from cimc.npz import npz_bytes
from cimc.report import arrays_used, mapping_summary
from passes_support import assert_matches

ROOT = Path(__file__).parent.parent
KWS = ROOT / "examples" / "kws"


def _hw(tmp_path: Path, count: int | str) -> Path:
    path = tmp_path / f"hw_{count}.toml"
    path.write_text(f'[array]\ncount = {count if isinstance(count, int) else chr(34) + count + chr(34)}\n')
    return path


def _save(tmp_path: Path, name: str, model: onnx.ModelProto) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _fused(module) -> int:  # noqa: ANN001
    return int(module.attributes.get("fuse.activations", 0))


# --- 1. the chip sized to the model ---------------------------------------------------------------------------------

def test_default_count_is_auto_and_a_fixed_count_is_validated(tmp_path: Path) -> None:
    assert load_hardware().array.count == "auto" and load_hardware().array.limit is None
    assert load_hardware(_hw(tmp_path, 12)).array.limit == 12
    for bad, message in ((0, "count 1"), ("many", 'must be an integer or "auto"'), ("true", 'must be an integer or "auto"')):
        path = tmp_path / "bad.toml"
        path.write_text(f"[array]\ncount = {bad if bad != 'many' else chr(34) + bad + chr(34)}\n")
        with pytest.raises(CimcError, match=message):
            load_hardware(path)
    again = tmp_path / "again.toml"
    again.write_text(load_hardware().to_toml())
    assert load_hardware(again) == load_hardware()


def test_auto_sizes_a_model_larger_than_any_fixed_default(tmp_path: Path) -> None:
    """LSTM 64 -> 256 needs ~100 arrays; the default chip takes it, a fixed smaller chip refuses it with the count."""
    path = _save(tmp_path, "lstm256", lstm_stack(64, 256))
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 2, 64)).astype(np.float32)
    calib = tmp_path / "calib.npz"
    calib.write_bytes(npz_bytes({"x": x}))
    model = cimc.compile(path, calib=calib)
    used = len(model.image.manifest["arrays"])
    assert used > 64  # the old fixed default
    assert model.image.manifest["hardware"]["array"]["count"] == used  # the manifest records the count used
    assert_matches(model.run({"x": x}), _reference(path, {"x": x}))
    with pytest.raises(CimcError, match=r"the model needs \d+ arrays of 128 x 64, but the chip has 64"):
        cimc.compile(path, hw=_hw(tmp_path, 64), calib=calib)
    fixed = cimc.compile(path, hw=_hw(tmp_path, used), calib=calib)  # a chip of exactly that size maps it the same way
    assert fixed.image.arrays.keys() == model.image.arrays.keys()
    assert all(np.array_equal(fixed.image.device_levels(k), model.image.device_levels(k)) for k in model.image.arrays)


def test_compile_prints_the_arrays_used(cimc_cli, tmp_path: Path) -> None:
    result = cimc_cli("compile", str(KWS / "kws_lstm.onnx"), "--calib", str(KWS / "calib.npz"))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("arrays used: ") and "count = auto" in first
    fixed = cimc_cli("compile", str(KWS / "kws_lstm.onnx"), "--calib", str(KWS / "calib.npz"), "--hw", str(_hw(tmp_path, 9)))
    assert fixed.stdout.splitlines()[0].endswith(" of 9 (128 x 64)")
    tight = cimc_cli("compile", str(KWS / "kws_lstm.onnx"), "--hw", str(_hw(tmp_path, 3)))
    assert tight.returncode == 2 and "arrays of 128 x 64, but the chip has 3" in tight.stderr


# --- 2. placement never does worse with more arrays ------------------------------------------------------------------

def _tiny_gru() -> onnx.ModelProto:
    """A PyTorch-style GRU (linear_before_reset = 1, so its candidate tanh reads a digital value), hidden 40."""
    rng = np.random.default_rng(5)
    H, I = 40, 24
    inits = [numpy_helper.from_array(rng.uniform(-0.2, 0.2, size=s).astype(np.float32), n)
             for n, s in (("W", (1, 3 * H, I)), ("R", (1, 3 * H, H)), ("B", (1, 6 * H)))]
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, linear_before_reset=1, name="gru")
    graph = helper.make_graph([node], "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", I])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("name", ["kws", "gru", "lstm"])
def test_more_arrays_never_fuse_fewer_activations(name: str, tmp_path: Path) -> None:
    """Over counts 3..16: once a count compiles, every larger one does; fused activations never decrease; auto is the best."""
    if name == "kws":
        path, calib = KWS / "kws_lstm.onnx", str(KWS / "calib.npz")
    else:
        model = _tiny_gru() if name == "gru" else lstm_stack(16, 48)
        path = _save(tmp_path, name, model)
        inputs = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        (tmp_path / "calib.npz").write_bytes(npz_bytes({"x": np.random.default_rng(2).uniform(-1, 1, (6, 3, inputs)).astype(np.float32)}))
        calib = str(tmp_path / "calib.npz")
    auto = compile_to_ir(path, load_hardware(), CompileOptions(calib=calib))
    fused: list[int] = []
    for count in range(3, 17):
        try:
            module = compile_to_ir(path, load_hardware(_hw(tmp_path, count)), CompileOptions(calib=calib))
        except CimcError as e:
            assert "arrays of 128 x 64, but the chip has" in e.message
            assert not fused, f"count {count} fails after a smaller count compiled"
            continue
        assert arrays_used(module) <= count
        fused.append(_fused(module))
    assert fused, "no count in 3..16 compiled"
    assert fused == sorted(fused), f"fused activations per count: {fused}"
    assert _fused(auto) == max(fused) and arrays_used(auto) <= 16
    assert not any(op.name == "cim.activation" for op in auto.walk()), "auto leaves an activation digital"


# --- 3. gate column packing -----------------------------------------------------------------------------------------

def test_gate_remainders_do_not_take_an_array_each() -> None:
    """KWS: 32-wide gates on 64-bit-line arrays are cut 31 + 1; the four 1-column remainders share one array."""
    module = compile_to_ir(KWS / "kws_lstm.onnx", load_hardware(), CompileOptions(calib=str(KWS / "calib.npz")))
    columns: dict[int, int] = {}
    for tile in (op for op in module.walk() if op.name == "cim.tile_mvm"):
        c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
        columns[int(tile.attributes["array"])] = columns.get(int(tile.attributes["array"]), 0) + c1 - c0  # type: ignore[arg-type]
    lonely = [k for k, n in columns.items() if n == 1]
    assert not lonely, f"arrays holding a single weight column: {lonely}"
    # 4 x 31-column pieces, one array for the remainders (+ the classifier, + identity pieces), one for tanh(c_t)'s identity.
    assert arrays_used(module) == 6


# --- 4. one physical copy per weight tensor -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("decoder")
    h0 = np.random.default_rng(0).uniform(-1, 1, (1, 4, 64)).astype(np.float32)
    calib = tmp / "calib.npz"
    calib.write_bytes(npz_bytes({"h0": h0}))
    paths = {steps: _save(tmp, f"decoder{steps}", gru_decoder(steps)) for steps in (1, 20)}
    return {"h0": h0, "paths": paths,
            "one": cimc.compile(paths[1], calib=calib),
            "shared": cimc.compile(paths[20], calib=calib),
            "copies": cimc.compile(paths[20], calib=calib, share_weights=False)}


def test_unrolled_decoder_takes_the_arrays_of_one_decoder(decoders: dict) -> None:
    one, shared, copies = decoders["one"].image, decoders["shared"].image, decoders["copies"].image
    assert len(shared.manifest["arrays"]) == len(one.manifest["arrays"])
    assert [a["devices_used"] for a in shared.manifest["arrays"]] == [a["devices_used"] for a in one.manifest["arrays"]]
    assert len(copies.manifest["arrays"]) > 15 * len(one.manifest["arrays"])
    # What is programmed (devices, and the reference weights kept once per programmed tile) does not grow with the
    # steps; the step program does (20 steps of reads with their own ranges), so whole-file sizes are not compared.
    programmed = {k: sum(image_sizes(m)[part] for part in ("device_bytes", "reference_bytes"))
                  for k, m in (("one", one), ("shared", shared), ("copies", copies))}
    assert programmed["shared"] < 2 * programmed["one"] < programmed["copies"] / 5
    # Every weight region is programmed once and read by all 20 steps.
    regions = [r for a in shared.manifest["arrays"] for r in a["regions"] if r["kind"] == "weights"]
    assert regions and all(len(r["shared_by"]) == 20 and len(r["nodes"]) == 20 for r in regions)


def test_shared_weights_give_the_outputs_of_separate_copies(decoders: dict) -> None:
    h0 = decoders["h0"]
    expected = _reference(decoders["paths"][20], {"h0": h0})
    shared = decoders["shared"].run({"h0": h0})
    assert_matches(shared, expected)
    assert np.array_equal(shared["logits"], decoders["copies"].run({"h0": h0})["logits"])
    # Programmed levels and DAC/ADC quantization too: both must stay close to onnxruntime (the ideal bound is the
    # verifier's; here it is enough that neither breaks, as a shared copy read with another copy's operands would).
    for model in (decoders["shared"], decoders["copies"]):
        ideal = model.run({"h0": h0}, fidelity="ideal")["logits"]
        assert np.abs(ideal - expected["logits"]).max() < 0.1 * np.abs(expected["logits"]).max()


def test_shared_reads_are_serialized(tmp_path: Path) -> None:
    """Two MatMuls over one weight, independent of each other: one copy, two reads in different stages."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.uniform(-1, 1, (8, 6)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", [x, "W"], [y], name=f"mm_{x}") for x, y in (("a", "ya"), ("b", "yb"))]
    graph = helper.make_graph(nodes, "twice", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8]) for n in "ab"],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 6]) for n in ("ya", "yb")], [w])
    path = _save(tmp_path, "twice", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    module = compile_to_ir(path, load_hardware())
    tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
    assert len(tiles) == 2 and tiles[0].attributes["share"] == tiles[1].attributes["share"]
    assert tiles[0].attributes["array"] == tiles[1].attributes["array"] and arrays_used(module) == 1
    assert tiles[0].attributes["sched.stage"] != tiles[1].attributes["sched.stage"]
    assert "shared weights: 1 tile on 1 array, programmed once and read 2 times" in mapping_summary(module, load_hardware())
    image = build_image(module, load_hardware())
    assert image.manifest["arrays"][0]["regions"][0]["shared_by"] == [0, 1]
    feeds = {n: rng.uniform(-1, 1, (2, 8)).astype(np.float32) for n in "ab"}
    assert_matches(cimc.CompiledModel(image).run(feeds), _reference(path, feeds))


def test_loops_over_shared_weights_run_one_after_another(decoders: dict) -> None:
    program = decoders["shared"].image.program()
    stages = [int(op.attributes["sched.stage"]) for op in program.body.ops if op.name == "cim.loop"]  # type: ignore[arg-type]
    assert len(stages) == 20 and len(set(stages)) == 20


def test_identity_columns_leave_the_ramp_bit_lines_place_reserved() -> None:
    """An array with 60 of 64 bit lines taken by sigmoid and tanh columns has 2 left after their two ramps: no room for a
    1-column identity tile and its own ramp (it needs 3), though 4 bit lines look free."""
    from cimc.passes.fuse_activation import _ArrayState

    state = _ArrayState(128, 64, used=60, functions={"Sigmoid", "Tanh", "linear"})
    assert not state.fits_identity(1, "Relu")  # 60 + 2 + 3 ramps = 65
    assert state.fits_identity(1, "Tanh")  # 60 + 2 + 2 ramps = 64: the tanh ramp serves it too
    assert not state.fits_identity(2, "Tanh")


def test_level_conductance_is_the_closed_form_bit_for_bit() -> None:
    """Every level -1..levels-1 against G_min + level * (G_max - G_min) / (levels - 1), and 0 uS unformed."""
    from cimc.backends.chip import level_conductance
    from cimc.hardware import load_hardware

    hw = load_hardware(None)
    d = hw.device
    level = np.arange(-1, d.levels, dtype=np.int8).reshape(1, -1).repeat(3, axis=0)
    closed = np.where(level >= 0, d.g_min_us + level.astype(np.float64) * ((d.g_max_us - d.g_min_us) / (d.levels - 1)), 0.0)
    got = level_conductance(hw, level)
    assert got.dtype == np.float64 and got.shape == level.shape
    assert got[:, 0].tolist() == [0.0] * 3 and got[0, -1] == d.g_max_us
    assert np.array_equal(got.view(np.int64), closed.view(np.int64))
