"""Multi-sample calibration, declared input ranges, and the compile warning when ranges rest on assumptions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from cimc.diagnostics import CimcError
from cimc.importer import import_model
from cimc.ir import Module
from cimc.npz import npz_bytes
from cimc.pass_manager import PassContext, PassManager, parse_pipeline
from cimc.passes.ranges import Ranges
from range_models import recurrent_model

LOWER = "decompose-rnn,form-mvm,canonicalize,cse"
WARNING = "warning: converter ranges rest on assumptions"


def ranged(model: onnx.ModelProto, **options: object) -> Module:
    module = import_model(model, "cell.onnx")
    PassManager(parse_pipeline(LOWER)).run(module)
    Ranges(**options).bind(PassContext.default()).apply(module)  # type: ignore[arg-type]
    return module


def blocks(module: Module) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    return {str(op.attributes["block"]): (float(op.attributes["input_scale"]), op.attributes["z_lo"].array,  # type: ignore[union-attr, arg-type]
                                          op.attributes["z_hi"].array)  # type: ignore[union-attr]
            for op in module.walk() if op.name == "cim.matvec"}


def write(path: Path, **arrays: np.ndarray) -> Path:
    path.write_bytes(npz_bytes(arrays))
    return path


@pytest.fixture
def batch_one_gru() -> onnx.ModelProto:
    """A streaming-style GRU whose batch is fixed at 1: it can only be calibrated one sequence at a time."""
    return recurrent_model("GRU", 4, 8, 0, 0.5, batch=1)


def sequences(seed: int, lengths: list[int], scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=(t, 1, 4))).astype(np.float32) for t in lengths]


def test_ranges_are_the_union_over_samples(batch_one_gru: onnx.ModelProto, tmp_path: Path) -> None:
    """Calibrating on samples a, b, c gives, per block, the union of calibrating on each alone.

    The same samples as a directory, as repeated paths, and (for two of the same
    length) stacked on a leading axis, give the same ranges.
    """
    xs = sequences(1, [5, 12, 3], 1.0) + sequences(2, [12], 3.0)
    files = [write(tmp_path / f"s{i}.npz", X=x) for i, x in enumerate(xs)]
    alone = [blocks(ranged(batch_one_gru, calib=str(f))) for f in files]
    (tmp_path / "dir").mkdir()
    for i, x in enumerate(xs):
        write(tmp_path / "dir" / f"{i}.npz", X=x)
    stacked = write(tmp_path / "stacked.npz", X=np.stack([xs[1], xs[3]]))
    forms = {"dir": str(tmp_path / "dir"),
             "paths": os.pathsep.join(str(f) for f in files),
             "stacked": os.pathsep.join([str(files[0]), str(stacked), str(files[2])])}
    for form, spec in forms.items():
        module = ranged(batch_one_gru, calib=spec)
        for block, (scale, lo, hi) in blocks(module).items():
            assert scale == max(a[block][0] for a in alone), form
            np.testing.assert_array_equal(lo, np.min([a[block][1] for a in alone], axis=0), err_msg=form)
            np.testing.assert_array_equal(hi, np.max([a[block][2] for a in alone], axis=0), err_msg=form)
        lo, hi = module.attributes["input_ranges"][0]  # type: ignore[index]
        assert (lo, hi) == (float(min(x.min() for x in xs)), float(max(x.max() for x in xs)))
        assert "4 samples" in str(module.attributes["ranges"])
        assert "range_assumptions" not in module.attributes
    # The wider sample widens the ranges: the union is not just the first or the last file.
    assert blocks(ranged(batch_one_gru, calib=forms["dir"]))["cell.d0.zr"][0] > alone[0]["cell.d0.zr"][0]


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((3, 4), np.float32)}, "wants X rank 3 for one sample"),
    ({"X": np.zeros((2, 3, 1, 4, 1), np.float32)}, "wants X rank 3"),
    ({"Y": np.zeros((3, 1, 4), np.float32)}, "lacks inputs ['X']"),
])
def test_bad_calibration_files(batch_one_gru: onnx.ModelProto, tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(CimcError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ranged(batch_one_gru, calib=str(write(tmp_path / "bad.npz", **arrays)))


def test_stacked_inputs_must_agree_on_the_sample_count(tmp_path: Path) -> None:
    model = recurrent_model("GRU", 4, 8, 0, 0.5, lens=True)
    bad = write(tmp_path / "bad.npz", X=np.zeros((2, 3, 1, 4), np.float32), lens=np.ones((3, 1), np.int32))
    with pytest.raises(CimcError, match="one more leading axis of the same length"):
        ranged(model, calib=str(bad))
    good = write(tmp_path / "good.npz", X=np.zeros((2, 3, 1, 4), np.float32), lens=np.ones((2, 1), np.int32))
    assert "2 samples" in str(ranged(model, calib=str(good)).attributes["ranges"])


def test_empty_calibration_directory(batch_one_gru: onnx.ModelProto, tmp_path: Path) -> None:
    with pytest.raises(CimcError, match="holds no .npz files"):
        ranged(batch_one_gru, calib=str(tmp_path))


def test_declared_input_range_replaces_the_assumption() -> None:
    """X=-2,2 gives the bounds of the +-2 assumption, is what verify draws from, and is no longer an assumption."""
    model = recurrent_model("GRU", 4, 8, 0, 0.5)
    declared = ranged(model, input_ranges="X=-2.0,2.0")
    assumed = ranged(model, input_bound=2.0)
    for (b1, v1), (b2, v2) in zip(sorted(blocks(declared).items()), sorted(blocks(assumed).items())):
        assert b1 == b2 and v1[0] == v2[0]
        np.testing.assert_array_equal(v1[1], v2[1])
        np.testing.assert_array_equal(v1[2], v2[2])
    assert declared.attributes["input_ranges"] == ((-2.0, 2.0),)
    assert "range_assumptions" not in declared.attributes
    assert "X declared within [-2, 2]" in str(declared.attributes["ranges"])
    assert "float input 'X' assumed within [-2, 2]" in assumed.attributes["range_assumptions"][0]  # type: ignore[index]


def test_input_range_unknown_name() -> None:
    with pytest.raises(CimcError, match="no input 'Z'"):
        ranged(recurrent_model("GRU", 4, 8, 0, 0.5), input_ranges="Z=0.0,1.0")


@pytest.fixture
def gru_file(tmp_path: Path) -> Path:
    """A GRU of realistic size and weight scale (PyTorch's default init, U(+-1/sqrt(H)))."""
    path = tmp_path / "gru.onnx"
    onnx.save(recurrent_model("GRU", 16, 32, 4, 1 / np.sqrt(32)), path)
    return path


@pytest.mark.parametrize("flag", ["X=2,1", "X=1,1", "X=a,1", "X=1", "X=0,inf", "Z=0,1"])
def test_bad_input_range_is_one_line_exit_2(cimc_cli, gru_file: Path, flag: str) -> None:  # noqa: ANN001
    result = cimc_cli("compile", str(gru_file), "--input-range", flag, "-o", "x.cimg", cwd=gru_file.parent)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "input-range" in result.stderr
    assert not (gru_file.parent / "x.cimg").exists()


def test_warning_present_without_calibration(cimc_cli, gru_file: Path) -> None:  # noqa: ANN001
    result = cimc_cli("compile", str(gru_file), "-o", "g.cimg", cwd=gru_file.parent)
    assert result.returncode == 0
    assert WARNING in result.stderr
    assert "float input 'X' assumed within [-1, 1]" in result.stderr and "--input-range X=LO,HI" in result.stderr
    assert "steps" not in result.stderr  # the GRU's state is bounded for any length


def test_warning_absent_with_declared_range_or_calibration(cimc_cli, gru_file: Path) -> None:  # noqa: ANN001
    declared = cimc_cli("compile", str(gru_file), "--input-range", "X=-1,1", "-o", "g.cimg", cwd=gru_file.parent)
    assert declared.returncode == 0 and WARNING not in declared.stderr
    write(gru_file.parent / "a.npz", X=np.zeros((4, 1, 16), np.float32))
    write(gru_file.parent / "b.npz", X=np.ones((9, 2, 16), np.float32))
    calibrated = cimc_cli("compile", str(gru_file), "--calib", "a.npz", "--calib", "b.npz", "-o", "g.cimg", cwd=gru_file.parent)
    assert calibrated.returncode == 0 and WARNING not in calibrated.stderr
    assert "calibration data a.npz, b.npz (2 samples, input shapes [4, 1, 16], [9, 2, 16])" in calibrated.stdout


def test_warning_names_the_step_cap(cimc_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """An LSTM whose forget gate can reach 1 has no bound for every length: the warning says so, even with a declared range."""
    path = tmp_path / "lstm.onnx"
    onnx.save(recurrent_model("LSTM", 6, 16, 3, 3.0), path)
    result = cimc_cli("compile", str(path), "--input-range", "X=-1,1", "-o", "l.cir", cwd=tmp_path)
    assert result.returncode == 0
    assert WARNING in result.stderr and "sequences of at most 100 steps" in result.stderr
    assert "assumed within" not in result.stderr


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_without_calibration_passes_ideal_verification(cimc_cli, tmp_path: Path, lbr: int) -> None:  # noqa: ANN001
    """The issue's acceptance case: no --calib, inputs inside the declared range, `cimc verify --fidelity ideal` exits 0."""
    path = tmp_path / "gru.onnx"
    onnx.save(recurrent_model("GRU", 16, 32, 4, 1 / np.sqrt(32), linear_before_reset=lbr), path)
    assert cimc_cli("compile", str(path), "--input-range", "X=-1,1", "-o", "g.cimg", cwd=tmp_path).returncode == 0
    result = cimc_cli("verify", str(path), "g.cimg", "--samples", "8", "--fidelity", "ideal", "--json", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["saturation"]["total"]["dac_clipped"] == 0


def test_api_warns_like_the_cli(gru_file: Path) -> None:
    import warnings

    import cimc
    from cimc.api import RangeAssumptionWarning

    with pytest.warns(RangeAssumptionWarning, match="float input 'X' assumed within"):
        cimc.compile(gru_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RangeAssumptionWarning)
        cimc.compile(gru_file, input_ranges={"X": (-1.0, 1.0)})
