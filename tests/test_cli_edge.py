"""Careless commands (issue 13's table and its neighbours): each answered with exit status 2 and one clear line,
before any work, with every input untouched; plus the output habits (what compile wrote, closed pipes)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.cli_io import PipeTolerant
from conftest import CIMC_SCRIPT

I, H = 3, 4


def _lstm(initial_batch: int | None = None) -> onnx.ModelProto:
    """A small LSTM over X: [T, N, I]; with ``initial_batch``, its initial states are initializers of that batch."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 4 * H, H)).astype(np.float32), "R")]
    inputs = ["X", "W", "R"]
    if initial_batch is not None:
        inits += [numpy_helper.from_array(rng.normal(0, 0.1, (1, initial_batch, H)).astype(np.float32), n) for n in ("h0", "c0")]
        inputs += ["", "", "h0", "c0"]
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h"], hidden_size=H, name="lstm")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "N", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A folder with m.onnx, its image m.cimg and inputs in.npz."""
    root = tmp_path_factory.mktemp("edge")
    onnx.save(_lstm(), root / "m.onnx")
    np.savez(root / "in.npz", X=np.random.default_rng(1).uniform(-1, 1, (5, 2, I)).astype(np.float32))
    result = subprocess.run([str(CIMC_SCRIPT), "compile", "m.onnx", "-o", "m.cimg"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


def _refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, exactly one stderr line, which names every needle; no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize(("args", "needles"), [
    (["verify", "m.onnx", "m.cimg", "--samples", "0"], ["--samples", "at least 1", "got 0"]),
    (["verify", "m.onnx", "m.cimg", "--samples", "-3"], ["--samples", "got -3"]),
    (["run", "m.cimg", "--inputs", "in.npz", "-o", "o.npz", "--seed", "-1"], ["--seed", "got -1"]),
    (["run", "m.cimg", "--inputs", "in.npz", "-o", "o.npz", "--drift-time", "-5"], ["--drift-time", ">= 0", "-5"]),
    (["run", "m.cimg", "--inputs", "in.npz", "-o", "o.npz", "--drift-time", "nan"], ["--drift-time", "nan"]),
    (["compile", "m.onnx", "--nl-adc-bits", "0"], ["--nl-adc-bits", "1..16"]),
    (["compile", "m.onnx", "--input-shape", "X=0,2,3"], ["dim '0'", "at least 1"]),
])
def test_numeric_options_have_ranges(chip: Path, cimc_cli, args: list[str], needles: list[str]) -> None:
    before = _files(chip)
    _refused(cimc_cli(*args, cwd=chip), *needles)
    assert _files(chip) == before


def test_inputs_that_are_a_npy_file_or_missing(chip: Path, cimc_cli) -> None:
    np.save(chip / "x.npy", np.zeros((5, 2, I), np.float32))
    _refused(cimc_cli("run", "m.cimg", "--inputs", "x.npy", "-o", "o.npz", cwd=chip), "x.npy", "numpy.savez")
    _refused(cimc_cli("run", "m.cimg", "--inputs", "nope.npz", "-o", "o.npz", cwd=chip), "cannot read nope.npz", "no such file")
    assert not (chip / "o.npz").exists()


def test_archives_needing_a_newer_zip_version_are_refused(chip: Path, cimc_cli) -> None:
    """zipfile raises NotImplementedError while listing an entry whose central record needs zip > 6.3 (found by fuzzing)."""
    np.savez(chip / "x.npz", x=np.zeros(3, np.float32))
    data = bytearray((chip / "x.npz").read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = (109).to_bytes(2, "little")  # "version needed to extract" = 10.9
    (chip / "x.npz").write_bytes(bytes(data))
    _refused(cimc_cli("run", "m.cimg", "--inputs", "x.npz", "-o", "o.npz", cwd=chip), "cannot read inputs x.npz", "10.9")
    image = bytearray((chip / "m.cimg").read_bytes())
    central = image.index(b"PK\x01\x02")
    image[central + 6:central + 8] = (109).to_bytes(2, "little")
    (chip / "newer.cimg").write_bytes(bytes(image))
    _refused(cimc_cli("dump", "newer.cimg", cwd=chip), "newer.cimg is not a cimc image", "10.9")


def test_unwritable_plot_folder_is_refused_before_compiling(chip: Path, cimc_cli) -> None:
    result = cimc_cli("compile", "m.onnx", "--plots", "/proc/sub", cwd=chip)
    _refused(result, "--plots", "/proc/sub")
    assert result.stdout == ""  # refused before the compile printed its mapping
    _refused(cimc_cli("compile", "m.onnx", "--plots", "m.onnx/sub", cwd=chip), "m.onnx", "not a directory")


@pytest.mark.parametrize("args", [
    ["compile", "m.onnx", "-o", "m.onnx"],
    ["compile", "m.onnx", "-o", "./sub/../m.onnx"],
    ["compile", "m.onnx", "--calib", "in.npz", "-o", "in.cir"],  # the IR's sidecar in.npz would replace the calib data
    ["run", "m.cimg", "--inputs", "in.npz", "-o", "in.npz"],
    ["run", "m.cimg", "--inputs", "in.npz", "-o", "m.cimg"],
    ["verify", "m.onnx", "m.cimg", "--json", "m.onnx"],
    ["import", "m.onnx", "-o", "m.onnx"],
])
def test_an_output_that_names_an_input_is_refused(chip: Path, cimc_cli, args: list[str]) -> None:
    (chip / "sub").mkdir(exist_ok=True)
    before = _files(chip)
    _refused(cimc_cli(*args, cwd=chip), "cimc never writes over an input")
    assert _files(chip) == before


def test_a_hard_link_to_the_input_is_the_input(chip: Path, cimc_cli) -> None:
    link = chip / "alias.onnx"
    link.hardlink_to(chip / "m.onnx")
    try:
        before = (chip / "m.onnx").read_bytes()
        _refused(cimc_cli("compile", "m.onnx", "-o", "alias.onnx", cwd=chip), "never writes over an input")
        assert (chip / "m.onnx").read_bytes() == before
    finally:
        link.unlink()


def test_an_image_that_maps_nothing_is_not_written(chip: Path, cimc_cli) -> None:
    """`-p canonicalize` leaves the LSTM in float: compile refuses to write an image for it (nothing to program)."""
    _refused(cimc_cli("compile", "m.onnx", "-p", "canonicalize", "-o", "float.cimg", cwd=chip),
             "mapped nothing onto crossbar arrays", "float.cimg not written")
    assert not (chip / "float.cimg").exists()


def test_run_and_verify_refuse_an_unmapped_image_at_analog_fidelities(tmp_path: Path, cimc_cli) -> None:
    """An image with nothing on arrays (built by the API; compile refuses to write one) is refused at ideal/noisy.

    The op set cannot hold an unlowered recurrence, so the unmapped model here is a purely digital one (X + 1).
    """
    from cimc.compiler import build_image, compile_to_ir
    from cimc.hardware import load_hardware

    one = numpy_helper.from_array(np.ones((I,), np.float32), "one")
    graph = helper.make_graph([helper.make_node("Add", ["X", "one"], ["Y"])], "digital",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, I])], [one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "add.onnx")
    _refused(cimc_cli("compile", "add.onnx", "-o", "add.cimg", cwd=tmp_path), "mapped nothing onto crossbar arrays")
    hw = load_hardware()
    image = build_image(compile_to_ir(tmp_path / "add.onnx", hw), hw)
    assert image.manifest["arrays"] == []
    image.save(tmp_path / "float.cimg")
    np.savez(tmp_path / "in.npz", X=np.zeros((2, I), np.float32))
    for fidelity in ("ideal", "noisy"):
        _refused(cimc_cli("run", "float.cimg", "--inputs", "in.npz", "-o", "o.npz", "--fidelity", fidelity,
                          cwd=tmp_path), "maps nothing onto crossbar arrays", fidelity)
        _refused(cimc_cli("verify", "add.onnx", "float.cimg", "--fidelity", fidelity, cwd=tmp_path),
                 "maps nothing onto crossbar arrays")
    assert not (tmp_path / "o.npz").exists()
    exact = cimc_cli("run", "float.cimg", "--inputs", "in.npz", "-o", "o.npz", cwd=tmp_path)
    assert exact.returncode == 0, exact.stderr


@pytest.mark.parametrize(("args", "needles"), [
    (["compile", "m.onnx", "--print-ir-after", "nosuchpass"], ["nosuchpass", "unknown pass", "decompose-rnn"]),
    (["compile", "m.onnx", "-p", "dce", "--print-ir-after", "cse"], ["--print-ir-after cse", "runs dce"]),
])
def test_print_ir_after_names_a_pass_of_the_pipeline(chip: Path, cimc_cli, args: list[str], needles: list[str]) -> None:
    result = cimc_cli(*args, cwd=chip)
    _refused(result, *needles)
    assert result.stdout == ""


def test_json_path_is_checked_before_the_run(chip: Path, cimc_cli) -> None:
    result = cimc_cli("verify", "m.onnx", "m.cimg", "--json", "nodir/r.json", cwd=chip)
    _refused(result, "cannot write nodir/r.json", "no such directory")
    assert result.stdout == ""  # nothing was verified


def test_compile_says_where_it_wrote_or_that_it_wrote_nothing(chip: Path, cimc_cli) -> None:
    nothing = cimc_cli("compile", "m.onnx", cwd=chip)
    assert nothing.returncode == 0 and "note: nothing written" in nothing.stderr
    wrote = cimc_cli("compile", "m.onnx", "-o", "again.cimg", cwd=chip)
    assert wrote.returncode == 0 and wrote.stdout.splitlines()[-1].startswith("wrote again.cimg (")
    assert (chip / "again.cimg").read_bytes() == (chip / "m.cimg").read_bytes()


def test_closed_stderr_pipe_is_not_an_error(chip: Path) -> None:
    """`cimc compile ... --print-ir-after-all 2>&1 | head -1`: the image is still written, exit status 0."""
    (chip / "piped.cimg").unlink(missing_ok=True)
    proc = subprocess.Popen([str(CIMC_SCRIPT), "compile", "m.onnx", "--print-ir-after-all", "-o", "piped.cimg"], cwd=chip,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader is gone, as after `head -1`
    assert proc.wait(timeout=300) == 0 and first.startswith(b"// -----// IR Dump After")
    assert (chip / "piped.cimg").read_bytes() == (chip / "m.cimg").read_bytes()


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_pipe_tolerant_stream_discards_after_the_reader_left() -> None:
    stream = PipeTolerant(_ClosedPipe())
    assert stream.write("abc") == 3 and stream.write("more") == 4  # neither raises
    stream.flush()
    assert not stream.isatty()


def test_verify_draws_the_batch_the_initial_states_fix(tmp_path: Path, cimc_cli) -> None:
    """Issue 13: X is [T, N, I] but h0/c0 are initializers of batch 3; random inputs must have N = 3, and the
    verification (against onnxruntime) passes."""
    onnx.save(_lstm(initial_batch=3), tmp_path / "fixed.onnx")
    imported = cimc_cli("import", "fixed.onnx", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    header = imported.stdout.splitlines()[0]
    assert "%X: f32[T, 3, 3]" in header and "bound_dims = [\"N=3 by initializer 'h0' of LSTM 'lstm'\"]" in header
    assert cimc_cli("compile", "fixed.onnx", "-o", "fixed.cimg", cwd=tmp_path).returncode == 0
    verified = cimc_cli("verify", "fixed.onnx", "fixed.cimg", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "X[20, 3, 3]" in verified.stderr  # the batch the model fixes; --samples does not apply
    np.savez(tmp_path / "batch8.npz", X=np.zeros((5, 8, I), np.float32))
    _refused(cimc_cli("verify", "fixed.onnx", "fixed.cimg", "--inputs", "batch8.npz", cwd=tmp_path),
             "input 'X' has shape [5, 8, 3]", "f32[T, 3, 3]")


def test_initializers_that_fix_one_dim_twice_are_refused(tmp_path: Path, cimc_cli) -> None:
    model = _lstm(initial_batch=3)
    c0 = next(i for i in model.graph.initializer if i.name == "c0")
    c0.CopyFrom(numpy_helper.from_array(np.zeros((1, 4, H), np.float32), "c0"))
    onnx.save(model, tmp_path / "both.onnx")
    _refused(cimc_cli("import", "both.onnx", cwd=tmp_path), "'N' is fixed at 3", "at 4")


@pytest.mark.parametrize(("make", "needles"), [
    (lambda x: {"X": x[:, :0]}, ["zero-sized"]),
    (lambda x: {"X": np.where(x > 0.5, np.nan, x)}, ["NaN or infinite"]),
    (lambda x: {"X": x.astype(np.float64)}, ["float64", "f32"]),
    (lambda x: {"X": x, "Z": x}, ["unknown ['Z']"]),
    (lambda x: {"x": x}, ["missing ['X']"]),
])
def test_inputs_are_checked_against_the_image(chip: Path, cimc_cli, make, needles: list[str]) -> None:  # noqa: ANN001
    """Including the zero-sized batch on which onnxruntime aborts the process (verify --samples 0 once did)."""
    x = np.random.default_rng(2).uniform(-1, 1, (5, 2, I)).astype(np.float32)
    np.savez(chip / "bad.npz", **make(x))
    _refused(cimc_cli("verify", "m.onnx", "m.cimg", "--inputs", "bad.npz", cwd=chip), "bad.npz", *needles)
    _refused(cimc_cli("run", "m.cimg", "--inputs", "bad.npz", "-o", "o.npz", cwd=chip), *needles)
    assert not (chip / "o.npz").exists()


def test_memory_limits_refuse_early_with_numbers(chip: Path, cimc_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    size = (chip / "m.onnx").stat().st_size
    monkeypatch.setenv("CIMC_MEMORY_LIMIT", str(4 * size))  # less than the 5x weight bytes a compile is estimated to peak at
    result = cimc_cli("compile", "m.onnx", "-o", "big.cimg", cwd=chip)
    _refused(result, f"holds {size / 1e6:.1f} MB of weights", f"about {5 * size / 1e6:.1f} MB",
             f"only {4 * size / 1e6:.1f} MB of memory")
    assert result.stdout == "" and not (chip / "big.cimg").exists()
    monkeypatch.setenv("CIMC_MEMORY_LIMIT", str(10**9))
    # 20 steps x 1e8 x 3 inputs x 8 bytes = 48 GB of random inputs
    _refused(cimc_cli("verify", "m.onnx", "m.cimg", "--samples", "100000000", cwd=chip), "random inputs",
             "--samples 100000000", "take 48.00 GB", "only 1.00 GB")


def test_decompression_bomb_is_refused_before_inflating(chip: Path, cimc_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 MiB of zeros deflate to 64 KiB; with 32 MiB available the declared size alone refuses the archive."""
    import zipfile

    with zipfile.ZipFile(chip / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.npy", bytes(64 << 20))
    monkeypatch.setenv("CIMC_MEMORY_LIMIT", str(32 << 20))
    _refused(cimc_cli("run", "m.cimg", "--inputs", "bomb.npz", "-o", "o.npz", cwd=chip),
             "the entries of inputs bomb.npz take 67.1 MB (about 134.2 MB while in use), but only 33.6 MB")
    assert not (chip / "o.npz").exists()
