"""Programming image and simulator: exact fidelity against onnxruntime, determinism, integrity, device effects."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.compiler import CompileOptions, compile_to_ir, default_pipeline
from cimc.diagnostics import CimcError
from cimc.error_bound import Sources, output_bounds
from cimc.hardware import load_hardware
from cimc.compiler import build_image
from cimc.image import load_image
from cimc.importer import import_model
from cimc.npz import npz_bytes
from cimc.pass_manager import PassContext, PassManager, parse_pipeline
from onnx_corpus import CorpusCase, all_cases, reference_outputs
from passes_support import assert_matches

EXAMPLES = Path(__file__).parents[1] / "examples"
KWS = EXAMPLES / "kws" / "kws_lstm.onnx"
CASES = all_cases()


def image_of(case: CorpusCase, tmp_path: Path):  # noqa: ANN201
    calib = tmp_path / "calib.npz"
    calib.write_bytes(npz_bytes(case.feeds))
    module = import_model(case.model, f"{case.name}.onnx")
    hw = load_hardware()
    PassManager(parse_pipeline(default_pipeline(str(calib))), context=PassContext(hw)).run(module)
    return build_image(module, hw)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact_fidelity_matches_onnxruntime(case: CorpusCase, tmp_path: Path) -> None:
    """Every element within its derived float32 bound (cimc/error_bound.py: gamma_n sum|w x| per dot product, u|y| per op,
    a few ulp per activation, for both implementations, propagated through the recurrence): the image's conductances
    reproduce every weight, only float32 summation order changes."""
    image = load_image_bytes(image_of(case, tmp_path).to_bytes(), tmp_path)
    outputs = Simulator(image, SimulatorOptions("exact")).run(case.feeds)
    reference = reference_outputs(case.model, case.feeds)
    assert_matches(outputs, reference, rtol=1e-4, atol=1e-5)  # names, dtypes, shapes
    _, bounds = output_bounds(image, case.feeds, Sources.for_fidelity("exact", image))
    for name, ref in reference.items():
        err = np.abs(outputs[name].astype(np.float64) - ref.astype(np.float64))
        assert (err <= bounds[name]).all(), f"{name}: worst |err| / bound {float((err / bounds[name]).max()):.3g}"


def load_image_bytes(data: bytes, tmp_path: Path):  # noqa: ANN201
    path = tmp_path / "m.cimg"
    path.write_bytes(data)
    return load_image(path)


@pytest.fixture(scope="module")
def kws() -> cimc.CompiledModel:
    return cimc.compile(KWS, calib=EXAMPLES / "kws" / "calib.npz")


@pytest.fixture(scope="module")
def kws_inputs() -> dict[str, np.ndarray]:
    return {"features": np.load(EXAMPLES / "kws" / "eval_set.npz")["features"][:, :96]}


def test_ideal_fidelity_within_the_derived_bound(kws: cimc.CompiledModel, kws_inputs: dict) -> None:
    report = cimc.verify(KWS, kws, inputs=kws_inputs, fidelity="ideal")
    assert report.passed, report.table()
    assert report.outputs[0].argmax_agreement is not None and report.outputs[0].argmax_agreement >= 0.95


def test_noisy_is_reproducible_per_seed(kws: cimc.CompiledModel, kws_inputs: dict) -> None:
    a = kws.run(kws_inputs, fidelity="noisy", seed=5)["logits"]
    b = kws.run(kws_inputs, fidelity="noisy", seed=5)["logits"]
    c = kws.run(kws_inputs, fidelity="noisy", seed=6)["logits"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_nl_adc_is_ratiometric_and_linear_adc_is_not(kws: cimc.CompiledModel, kws_inputs: dict) -> None:
    """Vread 25 % off: the NL-ADC outputs (gates) stay, the classifier's linear ADC codes move.

    Column currents and ramp currents are both computed at the drifted voltage
    (nothing cancels analytically), so a value within float rounding of a
    threshold can flip and then propagate through the recurrence: the NL-ADC
    outputs must agree at >= 99 %, while most linear ADC codes change.
    """
    def conversions(vread: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        nl, linear = [], []

        def observe(op, operands, results) -> None:  # noqa: ANN001
            (nl if op.name == "cim.nl_adc" else linear if op.name == "cim.adc" else []).append(results[0])

        Simulator(kws.image, SimulatorOptions("ideal", vread_scale=vread)).run(kws_inputs, observe)
        return nl, linear

    def flat(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([a.ravel() for a in arrays])

    nl_ref, lin_ref = conversions(1.0)
    for vread in (0.75, 1.25):
        nl, lin = conversions(vread)
        assert len(nl) == len(nl_ref) > 0
        assert (flat(nl) == flat(nl_ref)).mean() >= 0.99
        assert (flat(lin) == flat(lin_ref)).mean() <= 0.5


def test_same_model_gives_identical_bytes_and_round_trips(kws: cimc.CompiledModel, tmp_path: Path) -> None:
    again = cimc.compile(KWS, calib=EXAMPLES / "kws" / "calib.npz")
    data = kws.image.to_bytes()
    assert again.image.to_bytes() == data
    path = tmp_path / "a.cimg"
    kws.save(path)
    assert cimc.CompiledModel.load(path).image.to_bytes() == data
    with zipfile.ZipFile(path) as zf:  # readable with the standard library and numpy alone
        manifest = json.loads(zf.read("manifest.json"))
        first = manifest["arrays"][0]["index"]
        packed = manifest["tensors"][f"arrays/{first}.levels.npy"]
        blob = np.load(io.BytesIO(zf.read(packed["blob"])))
        level = blob[packed["offset"]:packed["offset"] + math.prod(packed["shape"])].reshape(packed["shape"])
    assert manifest["format"] == "cimc-image" and level.dtype == np.int8
    np.testing.assert_array_equal(level, kws.image.device_levels(first))


def _rewrite(path: Path, out: Path, change) -> None:  # noqa: ANN001
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, change(name, src.read(name)))


def test_truncated_tampered_and_wrong_version_images_are_refused(kws: cimc.CompiledModel, tmp_path: Path, cimc_cli) -> None:
    good = tmp_path / "good.cimg"
    kws.save(good)
    truncated = tmp_path / "truncated.cimg"
    truncated.write_bytes(good.read_bytes()[:5000])
    tampered = tmp_path / "tampered.cimg"
    _rewrite(good, tampered, lambda n, b: b[:-1] + bytes([b[-1] ^ 1]) if n == "data/int8.npy" else b)
    old = tmp_path / "old.cimg"

    def bump(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["version"] = 99
        return json.dumps(manifest).encode()

    _rewrite(good, old, bump)
    for path, message in ((truncated, "not a cimc image"), (tampered, "checksum mismatch"), (old, "version 99")):
        with pytest.raises(CimcError, match=message):
            load_image(path)
        result = cimc_cli("dump", str(path))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_compile_run_verify(cimc_cli, tmp_path: Path, kws_inputs: dict) -> None:
    (tmp_path / "in.npz").write_bytes(npz_bytes(kws_inputs))
    result = cimc_cli("compile", str(KWS), "--calib", str(EXAMPLES / "kws" / "calib.npz"), "-o", "kws.cimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = cimc_cli("run", "kws.cimg", "--inputs", "in.npz", "-o", "out.npz", "--fidelity", "ideal", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    assert list(out) == ["logits"] and out["logits"].shape == (96, 12) and out["logits"].dtype == np.float32
    result = cimc_cli("verify", str(KWS), "kws.cimg", "--samples", "8", "--json", "report.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logits" in result.stdout and "per layer" in result.stdout and "/lstm/LSTM_output_1" in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    dump = cimc_cli("dump", "kws.cimg", "--json", cwd=tmp_path)
    assert dump.returncode == 0 and json.loads(dump.stdout)["ramps"]


def test_verify_exits_1_outside_tolerance(cimc_cli, tmp_path: Path) -> None:
    """An image checked against a model whose input weights differ by 1 %: outside the derived exact bound."""
    case = next(c for c in CASES if c.name == "lstm-forward-layout0-out-y.yh.yc-opset7-ir3")
    (tmp_path / "m.onnx").write_bytes(case.model.SerializeToString())
    (tmp_path / "in.npz").write_bytes(npz_bytes(case.feeds))
    other = onnx.ModelProto.FromString(case.model.SerializeToString())
    weights = next(t for t in other.graph.initializer if len(t.dims) == 3)
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * np.float32(1.01), weights.name))
    (tmp_path / "other.onnx").write_bytes(other.SerializeToString())
    result = cimc_cli("compile", "m.onnx", "--calib", "in.npz", "-o", "m.cimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for model, fidelity, status in (("m.onnx", "exact", 0), ("m.onnx", "ideal", 0), ("other.onnx", "exact", 1)):
        result = cimc_cli("verify", model, "m.cimg", "--inputs", "in.npz", "--fidelity", fidelity, cwd=tmp_path)
        assert result.returncode == status, (model, fidelity, result.stdout + result.stderr)
        assert ("FAIL" in result.stdout) == (status == 1)


def test_compile_options_are_deterministic_across_runs(tmp_path: Path) -> None:
    hw = load_hardware()
    first = build_image(compile_to_ir(KWS, hw, CompileOptions(calib=str(EXAMPLES / "kws" / "calib.npz"))), hw).to_bytes()
    second = build_image(compile_to_ir(KWS, hw, CompileOptions(calib=str(EXAMPLES / "kws" / "calib.npz"))), hw).to_bytes()
    assert first == second


def test_release_gives_the_same_image_and_deletes_the_conductances() -> None:
    """build_image(release=True), as cimc compile calls it, writes the same bytes and leaves no tile its G+ / G-."""
    hw = load_hardware()
    options = CompileOptions(calib=str(EXAMPLES / "kws" / "calib.npz"))
    kept, released = compile_to_ir(KWS, hw, options), compile_to_ir(KWS, hw, options)
    image = build_image(released, hw, release=True)
    assert image.to_bytes() == build_image(kept, hw).to_bytes()
    for module, held in ((kept, True), (released, False)):
        tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
        assert tiles and all(("g_pos" in op.attributes, "g_neg" in op.attributes) == (held, held) for op in tiles)
