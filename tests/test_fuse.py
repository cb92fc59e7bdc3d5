"""fuse-activation: NL-ADCs replace ADC + digital activation exactly where the hardware allows.

Numerics: the interpreter treats an NL-ADC as the exact activation (its
quantization is the simulator's), so every compiled model must still match
onnxruntime at the frontend's tolerance; the ramp's own accuracy is tested
in test_ramp.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cimc.attributes import Tensor
from cimc.compiler import default_pipeline
from cimc.hardware import load_hardware
from cimc.importer import import_model
from cimc.interpreter import evaluate
from cimc.ir import Module, Operation
from cimc.npz import npz_bytes
from cimc.pass_manager import PassContext, PassManager, parse_pipeline
from cimc.passes.fuse_activation import _rescale, _rescale_tiles
from cimc.types import TensorType
from onnx_corpus import reference_outputs
from passes_support import assert_matches, bidirectional_lstm_case

TORCH = Path(__file__).parent / "data" / "torch"


def compile_case(tmp_path: Path, hw_text: str = "", identity: str = "auto", I: int = 20, H: int = 12) -> tuple[Module, dict]:
    case = bidirectional_lstm_case(I, H)
    hw_path = tmp_path / "hw.toml"
    hw_path.write_text(hw_text)
    calib = tmp_path / "calib.npz"
    calib.write_bytes(npz_bytes(case.feeds))
    module = import_model(case.model, "big.onnx")
    PassManager(parse_pipeline(default_pipeline(str(calib), identity)), context=PassContext(load_hardware(hw_path))).run(module)
    assert_matches(evaluate(module, case.feeds), reference_outputs(case.model, case.feeds))
    return module, case.feeds


def ops(module: Module, name: str) -> list:
    return [op for op in module.walk() if op.name == name]


def test_gates_fuse_and_share_one_ramp_per_function_and_array(tmp_path: Path) -> None:
    module, _ = compile_case(tmp_path, identity="digital")
    nl = ops(module, "cim.nl_adc")
    ramps = ops(module, "cim.ramp")
    # Per direction: i, f, g fuse; o reads the new cell state through its peephole and stays digital.
    assert Counter(op.attributes["function"] for op in nl) == {"Sigmoid": 4, "Tanh": 2}
    assert Counter((r.attributes["array"], r.attributes["function"]) for r in ramps).most_common(1)[0][1] == 1
    by_ramp: dict[int, list] = {}
    for op in nl:
        by_ramp.setdefault(id(op.operands[1]), []).append(op)
    for users in by_ramp.values():  # columns under one ramp were brought to one conductance-per-z scale
        scales = set()
        for op in users:
            c0, c1 = op.attributes["cols"]
            tile = op.operands[0].op if op.operands[0].op.name == "cim.tile_mvm" else op.operands[0].op.operands[0].op
            scales.update(np.round(tile.attributes["g_scale"].array[c0:c1] / tile.attributes["input_scale"], 9).tolist())
        assert len(scales) == 1
    reasons = Counter(op.attributes.get("fuse.reason") for op in ops(module, "cim.activation"))
    assert reasons == {"the input is a digital value, not a crossbar column": 4}  # o gate and tanh(c_t), per direction


def test_ramp_columns_are_real_bit_lines(tmp_path: Path) -> None:
    """Hidden 32: one gate fills a 64-bit-line array, so tiles are split to leave the ramp its bit line."""
    module, _ = compile_case(tmp_path, I=8, H=32)
    hw = load_hardware()
    taken: dict[int, set[int]] = {}
    for tile in ops(module, "cim.tile_mvm"):
        c0, c1 = tile.attributes["cols"]
        lines = set(range(tile.attributes["array_col"], tile.attributes["array_col"] + 2 * (c1 - c0)))
        assert not lines & taken.setdefault(tile.attributes["array"], set())
        taken[tile.attributes["array"]] |= lines
    for ramp in ops(module, "cim.ramp"):
        assert ramp.attributes["array_col"] not in taken.setdefault(ramp.attributes["array"], set())
        taken[ramp.attributes["array"]].add(ramp.attributes["array_col"])
        assert ramp.attributes["rows"] == hw.ramp_rows() <= hw.array.rows
    assert all(max(lines) < hw.array.cols for lines in taken.values())
    from cimc.passes.place import activation_keys

    fused_widths = [t.attributes["cols"][1] - t.attributes["cols"][0] for t in ops(module, "cim.tile_mvm")
                    if set(activation_keys(t)) - {"linear"}]
    assert max(fused_widths) == 31  # 2 * 31 + 1 ramp bit line <= 64 < 2 * 32 + 1
    joined = [op for op in ops(module, "onnx.Concat") if all(v.op.name == "cim.nl_adc" for v in op.operands)]
    assert joined, "a 32-wide gate split over two tiles is converted in pieces, each against its own array's ramp"


def test_identity_columns_fuse_tanh_of_the_cell_state(tmp_path: Path) -> None:
    module, _ = compile_case(tmp_path, identity="column")
    identity = [t for t in ops(module, "cim.tile_mvm") if t.attributes["block"].endswith(".identity")]
    assert len(identity) == 4  # tanh(c_t) and the peephole o gate, per direction
    assert not ops(module, "cim.activation")


def test_digital_partial_sums_fall_back_and_say_why(tmp_path: Path) -> None:
    module, _ = compile_case(tmp_path, "[array]\nrows = 40\n[converters]\nanalog_partial_sums = false\nnl_adc_bits = 4\n",
                             identity="digital")
    reasons = Counter(op.attributes.get("fuse.reason") for op in ops(module, "cim.activation"))
    assert reasons["row-tiled partial sums are added digitally (the hardware has no analog partial sums)"] == 6
    assert not ops(module, "cim.nl_adc")


def test_ramp_inl_within_half_a_level_where_every_step_is_feasible(tmp_path: Path) -> None:
    """Cumulative tracking keeps each level within dG/2 (<= 0.5 LSB here) unless a step is narrower than G_min;
    such ramps are used only up to the pass's max_inl (1 LSB by default)."""
    from cimc.ramp import ramp_from_op

    module, _ = compile_case(tmp_path)
    hw = load_hardware()
    for op in ops(module, "cim.ramp"):
        ramp = ramp_from_op(op, hw)
        assert float(op.attributes["inl_lsb"]) == pytest.approx(float(np.abs(ramp.inl_lsb).max()))
        assert float(op.attributes["inl_lsb"]) <= (0.5 if ramp.infeasible_steps == 0 else 1.0)


def test_compile_prints_fusion_summary_and_plots(cimc_cli, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    model = TORCH / "lstm2.torchscript.onnx"
    result = cimc_cli("compile", str(model), "--calib", str(model.with_suffix(".npz")), "--plots", "plots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Hidden 16 >= the cost table's break-even width, so tanh(c_t) goes through identity columns too. Per layer the
    # sigmoid gates i, o, f run on over two arrays (31 + 17 columns), so the o gate is converted in two pieces.
    assert "activations fused into NL-ADCs: 10 (converted in 12 column pieces); kept digital: 0" in out
    assert "identity columns: 2" in out
    assert "ranges: calibration data lstm2.torchscript.npz" in out
    assert "ramp columns: " in out and "worst |INL|" in out
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any("Sigmoid" in p and p.endswith("transfer.png") for p in pngs)
    assert any("Tanh" in p and p.endswith("transfer.png") for p in pngs)
    assert all((tmp_path / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


@pytest.mark.parametrize("spans", [[((0, 4), 30.0)], [((0, 2), 30.0), ((2, 4), 12.5)], [((1, 3), 30.0)]],
                         ids=["one-span-whole-tile", "two-spans", "part-of-the-tile"])
@pytest.mark.parametrize("unformed", [False, True], ids=["all-formed", "with-unformed"])
def test_rescale_matches_the_per_device_rule(spans, unformed: bool) -> None:
    """_rescale against the rule written per device: a device at 0 uS stays unformed, one whose partner is unformed
    scales whole, every other keeps G_min and scales its deviation; g_scale / input_scale becomes each span's target.
    Float32 conductances rounded once from the float64 result, as map-conductance stores them."""
    rng = np.random.default_rng(3)
    g_min = 1.0
    pos = rng.uniform(1.0, 100.0, (5, 4)).astype(np.float32)
    neg = rng.uniform(1.0, 100.0, (5, 4)).astype(np.float32)
    if unformed:
        pos[0, :], neg[1, 1], neg[0, 2] = 0.0, 0.0, 0.0
    scale = np.array([40.0, 50.0, 60.0, 70.0])
    attrs = {"g_pos": Tensor(pos), "g_neg": Tensor(neg), "g_scale": Tensor(scale), "input_scale": 2.0,
             "rows": (0, 5), "cols": (0, 4)}
    tile = Operation("cim.tile_mvm", [], [TensorType("f32", (1, 4))], attrs)
    _rescale(tile, spans, g_min)
    want_pos, want_neg, want_scale = pos.astype(np.float64), neg.astype(np.float64), scale.copy()
    for (c0, c1), target in spans:
        factor = target * 2.0 / scale[c0:c1]
        for want, own, partner in ((want_pos, pos, neg), (want_neg, neg, pos)):
            o, p = own[:, c0:c1].astype(np.float64), partner[:, c0:c1].astype(np.float64)
            want[:, c0:c1] = np.where(o == 0, 0.0, np.where(p == 0, o * factor, (o - g_min) * factor + g_min))
        want_scale[c0:c1] = scale[c0:c1] * factor
    np.testing.assert_array_equal(tile.attributes["g_pos"].array, want_pos.astype(np.float32))
    np.testing.assert_array_equal(tile.attributes["g_neg"].array, want_neg.astype(np.float32))
    np.testing.assert_array_equal(tile.attributes["g_scale"].array, want_scale)
    np.testing.assert_array_equal(pos, attrs["g_pos"].array)  # the tile's former tensors are not written to


def test_rescale_of_a_column_chunk_at_once_gives_each_tile_its_own_rescale() -> None:
    """_rescale_tiles takes the row tiles of one column chunk (windows of one MVM's conductances, as tile cuts them)
    in one pass: bit for bit what _rescale gives each tile alone. Tiles that are not one run of rows, or have two
    spans, or are not windows, take _rescale itself."""
    rng = np.random.default_rng(5)
    g_min = 2.0
    g_pos, g_neg = (Tensor(rng.uniform(g_min, 100.0, (11, 6)).astype(np.float32)) for _ in range(2))
    g_pos.minimum(), g_neg.minimum()  # checked by the verifier before tile: the windows are known to be formed

    def tile(r0: int, r1: int, c0: int, c1: int, windows: bool = True) -> Operation:
        index = (slice(r0, r1), slice(c0, c1))
        pos, neg = (g.window(index) if windows else Tensor(g.array[index]) for g in (g_pos, g_neg))
        return Operation("cim.tile_mvm", [], [TensorType("f32", (1, c1 - c0))], {
            "g_pos": pos, "g_neg": neg, "g_scale": Tensor(rng.uniform(30.0, 90.0, c1 - c0)),
            "input_scale": float(rng.uniform(0.5, 2.0)), "rows": (r0, r1), "cols": (c0, c1)})

    chunk = [tile(0, 4, 0, 3), tile(4, 8, 0, 3), tile(8, 11, 0, 3)]  # one run of rows: at once
    gap = [tile(0, 4, 3, 6), tile(8, 11, 3, 6)]  # rows 4..8 not rescaled: each alone
    two_spans = [tile(4, 8, 3, 6)]
    copies = [tile(0, 4, 3, 6, windows=False)]
    rescales = [(t, [((0, 3), float(rng.uniform(10.0, 40.0)))]) for t in chunk + gap + copies]
    rescales.append((two_spans[0], [((0, 1), 25.0), ((1, 3), 15.0)]))
    expected = []
    for t, spans in rescales:
        alone = Operation(t.name, [], [t.results[0].type],
                          {k: Tensor(v.array) if isinstance(v, Tensor) else v for k, v in t.attributes.items()})
        _rescale(alone, spans, g_min)
        expected.append(alone)
    _rescale_tiles(rescales, g_min)
    for (t, _), want in zip(rescales, expected):
        for name in ("g_pos", "g_neg", "g_scale"):
            got, ref = t.attributes[name].array, want.attributes[name].array
            assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes(), name
    laid_out = chunk[0].attributes["g_pos"].array.base
    assert laid_out is not None and all(t.attributes["g_pos"].array.base is laid_out for t in chunk)  # one array
    assert all(t.attributes["g_pos"].array.flags.c_contiguous for t in chunk)  # row bands of one chunk array
    assert gap[0].attributes["g_pos"].array.base is not laid_out  # rescaled alone
