"""Lowering to crossbars: every pass keeps the interpreter's answer equal to onnxruntime's.

The tolerance is the frontend's (rtol 1e-5, atol 1e-6, float32): lowering
reorders the float32 sums (one MVM over [x; h; 1] instead of W x + R h + b,
row-tiled partial sums) and stores weights as float64 conductance pairs whose
difference reproduces each float32 weight exactly, so only summation order
changes: a few ulp per step, as in the frontend tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.compiler import default_pipeline
from cimc.diagnostics import CimcError
from cimc.importer import import_model, import_onnx
from cimc.interpreter import evaluate
from cimc.ir import Module
from cimc.npz import npz_bytes
from cimc.pass_manager import PassManager, parse_pipeline
from onnx_corpus import CorpusCase, all_cases, reference_outputs
from passes_support import assert_matches, bidirectional_lstm_case

TORCH = Path(__file__).parent / "data" / "torch"
CASES = all_cases()
SMALL_ARRAYS = ("decompose-rnn,form-mvm,canonicalize,cse,map-conductance,tile{rows=16 cols=8 analog_sum=false adc_bits=8},"
                "canonicalize,cse,place{rows=16 cols=8 arrays=100000},schedule")


def check_every_pass(module: Module, pipeline: str, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Run ``pipeline``, comparing the interpreter with ``expected`` after each pass; return the op kinds left."""
    def check(pass_name: str, m: Module) -> None:
        try:
            assert_matches(evaluate(m, feeds), expected)
        except AssertionError as e:
            raise AssertionError(f"after pass '{pass_name}': {e}") from None

    PassManager(parse_pipeline(pipeline), dump=check).run(module)
    return sorted({op.name for op in module.walk()})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_default_hardware(case: CorpusCase, tmp_path: Path) -> None:
    """The full default pipeline, NL-ADC fusion included, calibrated on the case's own inputs."""
    calib = tmp_path / "calib.npz"
    calib.write_bytes(npz_bytes(case.feeds))
    module = import_model(case.model, f"{case.name}.onnx")
    left = check_every_pass(module, default_pipeline(str(calib)), case.feeds, reference_outputs(case.model, case.feeds))
    assert not {"onnx.LSTM", "onnx.GRU", "onnx.RNN", "cim.matvec", "cim.crossbar_mvm", "onnx.Gemm", "onnx.Conv"} & set(left)


@pytest.mark.parametrize("case", CASES[::3], ids=[c.name for c in CASES[::3]])
def test_small_arrays_digital_partial_sums(case: CorpusCase) -> None:
    module = import_model(case.model, f"{case.name}.onnx")
    check_every_pass(module, SMALL_ARRAYS, case.feeds, reference_outputs(case.model, case.feeds))


@pytest.mark.parametrize("analog", [True, False])
def test_row_and_column_splits(analog: bool) -> None:
    case = bidirectional_lstm_case()
    module = import_model(case.model, "big.onnx")
    pipeline = SMALL_ARRAYS.replace("analog_sum=false", f"analog_sum={'true' if analog else 'false'}")
    left = check_every_pass(module, pipeline, case.feeds, reference_outputs(case.model, case.feeds))
    assert ("cim.analog_sum" in left) == analog
    tiles = [op for op in module.walk() if op.name == "cim.tile_mvm"]
    assert {tuple(t.attributes["rows"]) for t in tiles} == {(0, 16), (16, 32), (32, 45)}  # 20 + 12 + 12 (peephole) + 1
    assert all(t.attributes["cols"][1] - t.attributes["cols"][0] <= 4 for t in tiles)


@pytest.mark.parametrize("path", sorted(TORCH.glob("*.torchscript*.onnx")), ids=lambda p: p.name)
def test_torch_exports_on_small_arrays(path: Path) -> None:
    import onnxruntime as ort

    module = import_onnx(path)
    stored = dict(np.load(path.with_suffix(".npz")))
    feeds = {k: stored[k] for k in module.attributes["input_names"]}  # type: ignore[union-attr]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    check_every_pass(module, SMALL_ARRAYS, feeds, expected)


def test_model_too_large_names_the_array_count() -> None:
    case = bidirectional_lstm_case()
    module = import_model(case.model, "big.onnx")
    pipeline = SMALL_ARRAYS.replace("arrays=100000", "arrays=3")
    with pytest.raises(CimcError, match=r"in pass 'place': the model needs \d+ arrays of 16 x 8, but the chip has 3"):
        PassManager(parse_pipeline(pipeline)).run(module)


def test_same_activation_columns_share_arrays() -> None:
    """The i/o/f (sigmoid) and g (tanh) gate tiles of an LSTM go to separate arrays when the chip has room."""
    case = bidirectional_lstm_case()
    module = import_model(case.model, "big.onnx")
    PassManager(parse_pipeline(SMALL_ARRAYS)).run(module)
    from cimc.passes.place import activation_keys

    functions: dict[int, set[tuple[str, ...]]] = {}
    for tile in (op for op in module.walk() if op.name == "cim.tile_mvm"):
        functions.setdefault(int(tile.attributes["array"]), set()).add(activation_keys(tile))  # type: ignore[arg-type]
    assert all(len(keys) == 1 for keys in functions.values())


def test_schedule_serializes_reads_of_one_array() -> None:
    case = bidirectional_lstm_case()
    module = import_model(case.model, "big.onnx")
    # Arrays twice as wide as the tiles, and too few of them: arrays must hold tiles with different inputs.
    PassManager(parse_pipeline(SMALL_ARRAYS.replace("place{rows=16 cols=8 arrays=100000}", "place{rows=16 cols=16 arrays=45}"))).run(module)
    from cimc.passes.schedule import read_key

    seen: dict[tuple[int, int], tuple] = {}
    keys_per_array: dict[int, set[tuple]] = {}
    for tile in (op for op in module.walk() if op.name == "cim.tile_mvm"):
        array = int(tile.attributes["array"])  # type: ignore[arg-type]
        keys_per_array.setdefault(array, set()).add(read_key(tile))
        slot = (array, int(tile.attributes["sched.stage"]))  # type: ignore[arg-type]
        assert seen.setdefault(slot, read_key(tile)) == read_key(tile), "two different reads in one array and stage"
    assert any(len(keys) > 1 for keys in keys_per_array.values())
    for block_owner in (op for op in module.walk() if op.name == "cim.loop"):
        body = block_owner.regions[0].block.ops
        stages = [op.attributes.get("sched.stage", 0) for op in body[:-1]]
        assert stages == sorted(stages)


def test_hand_written_conductance_pair_closed_form() -> None:
    from cimc.passes.map_conductance import conductance_pair

    w = np.array([[0.5, -2.0, 0.0], [-1.0, 1.0, 0.0]], np.float32)
    g_pos, g_neg, scale = conductance_pair(w, 2.0, 100.0, "column")
    np.testing.assert_allclose(scale, [98.0, 49.0, 98.0])
    np.testing.assert_allclose(g_pos, [[51.0, 2.0, 2.0], [2.0, 51.0, 2.0]])
    np.testing.assert_allclose(g_neg, [[2.0, 100.0, 2.0], [100.0, 2.0, 2.0]])
    assert ((g_pos - g_neg) / scale).astype(np.float32).tolist() == w.tolist()
    _, _, block_scale = conductance_pair(w, 2.0, 100.0, "block")
    np.testing.assert_allclose(block_scale, [49.0, 49.0, 49.0])


def test_conductance_pair_blocks_give_the_whole_array_formula_bit_for_bit() -> None:
    """conductance_pair works a cache-sized block of rows at a time with scratch buffers; the bits must be those of
    the module docstring's formula evaluated on the whole array in float64 and rounded once (signed zeros, NaN's
    sign and float64 weights included), for rows that are not a multiple of the block."""
    from cimc.passes import map_conductance
    from cimc.passes.map_conductance import conductance_pair

    rng = np.random.default_rng(3)
    rows = 3 * (map_conductance._BLOCK_ELEMENTS // 40) + 7
    w32 = rng.uniform(-0.3, 0.3, (rows, 40)).astype(np.float32)
    w32[0, :3] = [0.0, -0.0, np.nan]
    w32[5, 4] = -np.nan
    r = 2.0 ** -rng.integers(0, 4, rows)
    for w in (w32, w32.astype(np.float64)):
        for granularity in ("column", "block"):
            for row_scale in (None, r):
                t = w.astype(np.float64) * (1.0 if row_scale is None else row_scale[:, None])
                peak = np.maximum(t.max(axis=0, initial=0.0), -t.min(axis=0, initial=0.0))  # NaN in a NaN column
                peak = np.full(40, peak.max()) if granularity == "block" else peak
                scale = np.where(peak > 0, 97.5 / peak, 97.5)
                g_pos = np.minimum(2.5 + np.maximum(t * scale, 0.0), 100.0).astype(w.dtype)
                g_neg = np.minimum(2.5 + np.maximum(-(t * scale), 0.0), 100.0).astype(w.dtype)
                got = conductance_pair(w, 2.5, 100.0, granularity, row_scale)
                for expected, actual in zip((g_pos, g_neg, scale), got):
                    assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes()


def _map_conductance(held: bool) -> tuple[bool, bool, bytes]:
    """map-conductance of a small LSTM's MVM, the test holding its weights or not: (G+ took the weights' buffer,
    the held weights are unchanged, G+ and G- bytes)."""
    from range_models import recurrent_model

    module = import_model(recurrent_model("LSTM", 6, 16, 2, 0.3), "cell.onnx")
    PassManager(parse_pipeline("decompose-rnn,form-mvm,canonicalize,cse,ranges")).run(module)
    [mvm] = [op for op in module.walk() if op.name == "cim.matvec"]
    kept = [mvm.attributes["weights"].array] if held else []
    before = mvm.attributes["weights"].array.tobytes()
    address = mvm.attributes["weights"].array.__array_interface__["data"][0]
    del mvm
    PassManager(parse_pipeline("map-conductance")).run(module)
    [mapped] = [op for op in module.walk() if op.name == "cim.crossbar_mvm"]
    g_pos, g_neg = mapped.attributes["g_pos"].array, mapped.attributes["g_neg"].array
    return (g_pos.__array_interface__["data"][0] == address, all(k.tobytes() == before for k in kept),
            g_pos.tobytes() + g_neg.tobytes())


def test_map_conductance_writes_g_pos_over_private_weights_only() -> None:
    """G+ reuses the weights' buffer when nothing but the MVM holds them (the pass's memory peak falls by one MVM's
    weight bytes); weights anyone else still holds are left as they are. Both give the same conductances."""
    from cimc.attributes import EXACT_REFCOUNTS

    private_reused, _, private = _map_conductance(held=False)
    held_reused, held_unchanged, held = _map_conductance(held=True)
    assert private_reused == EXACT_REFCOUNTS and not held_reused and held_unchanged
    assert private == held


def test_column_chunks_prefer_consumer_boundaries() -> None:
    from cimc.passes.tile import column_chunks

    gates = [(0, 4, "Sigmoid"), (4, 8, "Sigmoid"), (8, 12, "Sigmoid"), (12, 16, "Tanh")]
    assert column_chunks(gates, 16, ramp_cols=False) == [(0, 8), (8, 16)]
    # Gate-aligned, 6-column chunks would take 4 (one gate each); the sigmoid gates running on take 3.
    assert column_chunks(gates, 12, ramp_cols=False) == [(0, 6), (6, 12), (12, 16)]
    assert column_chunks(gates[:1] + [(4, 8, "Tanh"), (8, 12, "Sigmoid"), (12, 16, "Tanh")], 12, ramp_cols=False) == \
        [(0, 4), (4, 8), (8, 12), (12, 16)]  # no two neighbours share a function: cut at every gate
    assert column_chunks([(0, 10, "linear")], 8, ramp_cols=False) == [(0, 4), (4, 8), (8, 10)]
    assert column_chunks([(0, 3, "linear"), (3, 12, "linear")], 8, ramp_cols=False) == [(0, 4), (4, 8), (8, 12)]


def test_column_chunks_leave_a_bit_line_per_ramp() -> None:
    """A gate that would fill an array is split so that its ramp column still fits."""
    from cimc.passes.tile import column_chunks

    assert column_chunks([(0, 32, "Sigmoid")], 64, ramp_cols=False) == [(0, 32)]
    assert column_chunks([(0, 32, "Sigmoid")], 64, ramp_cols=True) == [(0, 31), (31, 32)]
    # Two functions in one chunk need two ramp columns: 2 * 15 + 2 <= 32, 2 * 16 + 2 > 32.
    assert column_chunks([(0, 8, "Sigmoid"), (8, 16, "Tanh")], 32, ramp_cols=True) == [(0, 8), (8, 16)]
    assert column_chunks([(0, 8, "Sigmoid"), (8, 15, "Tanh")], 32, ramp_cols=True) == [(0, 15)]


def test_decompose_requires_constant_weights() -> None:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 1, 2])
    w = helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4, 2])
    r = numpy_helper.from_array(np.zeros((1, 4, 1), np.float32), "R")
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=1, name="l")
    model = helper.make_model(helper.make_graph([node], "g", [x, w], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [r]),
                              opset_imports=[helper.make_opsetid("", 14)])
    module = import_model(model, "m.onnx")
    with pytest.raises(CimcError, match="m.onnx:l: decompose-rnn needs W to be a constant"):
        PassManager(parse_pipeline("decompose-rnn")).run(module)
