"""cimc sweep: rows against an independent run of the simulator and onnxruntime, worker-count independence,
a cluster given by --scheduler, the image cache, and careless commands.

The model is the shipped KWS LSTM on 12 of its eval clips (a real compile takes ~1 s), 2 bit widths x 2 chips.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import cimc
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.backends.tester import measure
from cimc.cli import main
from cimc.hardware import load_hardware
from cimc.sweep import cluster as sweep_cluster
from cimc.sweep.grid import HardwarePoint, grid
from cimc.sweep.results import summarize

distributed = pytest.importorskip("distributed")

KWS = Path(__file__).resolve().parents[1] / "examples" / "kws"
MODEL, CALIB = KWS / "kws_lstm.onnx", KWS / "calib.npz"
CLIPS = 12


@pytest.fixture(scope="module")
def eval_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = np.load(KWS / "eval_set.npz")
    path = tmp_path_factory.mktemp("sweep") / "eval.npz"
    np.savez(path, features=data["features"][:, :CLIPS], y=data["y"][:CLIPS])
    return path


def sweep(tmp: Path, eval_npz: Path, *extra: str, name: str = "out", cache: str = "cache") -> tuple[int, dict]:
    code = main(["sweep", str(MODEL), "--inputs", str(eval_npz), "--labels", "y", "--calib", str(CALIB),
                 "--bits", "4,5", "--seeds", "0:2", "--cache", str(tmp / cache), "--json", str(tmp / f"{name}.json"),
                 "--csv", str(tmp / f"{name}.csv"), *extra])
    return code, json.loads((tmp / f"{name}.json").read_text()) if code == 0 else {}


def test_one_and_two_workers_give_identical_files_and_rows_that_an_independent_run_reproduces(tmp_path, eval_npz,
                                                                                              capsys):
    code, one = sweep(tmp_path, eval_npz, "--workers", "1", "--plots", str(tmp_path / "plots1"), name="one", cache="c1")
    assert code == 0
    err = capsys.readouterr().err
    assert "2 hardware points x 2 chips = 4 chip runs on a LocalCluster of 1 worker process; dashboard http://" in err
    assert "sweep: 2/2 points, 4/4 chip runs, " in err and "ETA 0.0 s" in err
    code, two = sweep(tmp_path, eval_npz, "--workers", "2", "--plots", str(tmp_path / "plots2"), name="two", cache="c2")
    assert code == 0
    # Each run compiled its own images (separate caches), so equal bytes also say the compile is deterministic.
    for suffix in ("json", "csv"):
        assert (tmp_path / f"one.{suffix}").read_bytes() == (tmp_path / f"two.{suffix}").read_bytes()
    for png in ("accuracy_vs_bits.png", "accuracy_vs_stuck_rate.png"):
        assert (tmp_path / "plots1" / png).read_bytes() == (tmp_path / "plots2" / png).read_bytes()
    rows = one["rows"]
    assert [(r["nl_adc_bits"], r["seed"]) for r in rows] == [(4, 0), (4, 1), (5, 0), (5, 1)]
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 1 + len(rows)

    # Row (5 bits, chip 1) against the simulator and onnxruntime run here, outside the sweep's code.
    data = np.load(eval_npz)
    x, y = data["features"], data["y"]
    model = cimc.compile(MODEL, hw=load_hardware(), calib=CALIB, nl_adc_bits=5)
    logits = Simulator(model.image, SimulatorOptions("noisy", 1)).run({"features": x})["logits"]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    float_logits = session.run(None, {"features": x})[0]
    row = rows[3]
    assert row["image_sha256"] == one["points"][1]["plain_image_sha256"]
    assert row["accuracy"] == float((logits.argmax(1) == y).mean())
    assert row["outputs"]["logits"]["argmax_agreement"] == float((logits.argmax(1) == float_logits.argmax(1)).mean())
    err = logits.astype(np.float64) - float_logits
    rel = np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(float_logits.astype(np.float64) ** 2))
    assert row["outputs"]["logits"]["relative_error"] == pytest.approx(rel, rel=1e-12)  # the same float64 formula
    # The summary is of these rows.
    accuracy = one["points"][1]["summary"]["accuracy"]
    assert accuracy["mean"] == pytest.approx(np.mean([rows[2]["accuracy"], rows[3]["accuracy"]]))
    assert accuracy["worst"] == min(rows[2]["accuracy"], rows[3]["accuracy"])


def test_sweep_on_a_cluster_given_by_scheduler_reuses_cached_images(tmp_path, eval_npz, monkeypatch, capsys):
    compiled: list[object] = []
    real_compile = cimc.compile

    def counting_compile(*args, **kwargs):  # noqa: ANN202
        compiled.append(kwargs.get("defects"))
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(cimc, "compile", counting_compile)  # the workers are threads of this process
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        code, first = sweep(tmp_path, eval_npz, "--scheduler", address, "--defect-aware", "both", name="first")
        assert code == 0
        assert f"the cluster at {address}" in capsys.readouterr().err
        # 2 plain images, and per 2 bit widths x 2 chips a defect-aware image from that chip's measurement.
        assert len(compiled) == 2 + 4 and sum(d is not None for d in compiled) == 4
        code, second = sweep(tmp_path, eval_npz, "--scheduler", address, "--defect-aware", "both", name="second")
        assert code == 0
        assert len(compiled) == 6, "a cached image was compiled again"
        assert "images: 0 compiled, 6 from the cache" in capsys.readouterr().out
        # Without labels the rows hold verify's metrics only, and the table leads with argmax agreement.
        assert main(["sweep", str(MODEL), "--inputs", str(KWS / "verify_inputs.npz"), "--calib", str(CALIB),
                     "--bits", "5", "--seeds", "3", "--scheduler", address, "--cache", str(tmp_path / "cache"),
                     "--csv", str(tmp_path / "unlabelled.csv")]) == 0
        assert "| logits argmax agreement (%): mean ± std |" in capsys.readouterr().out
        header = (tmp_path / "unlabelled.csv").read_text().splitlines()[0]
        assert "accuracy" not in header and "logits.argmax_agreement" in header
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()
    assert len(first["rows"]) == 8 and all("accuracy" in r for r in first["rows"])

    # A defect-aware row ran the image compiled around that chip's measurement with the plain image.
    aware = next(r for r in first["rows"] if r["defect_aware"] and r["nl_adc_bits"] == 4 and r["seed"] == 1)
    plain = real_compile(MODEL, hw=load_hardware(), calib=CALIB, nl_adc_bits=4)
    plain_sha = first["points"][0]["plain_image_sha256"]
    expected = real_compile(MODEL, hw=load_hardware(), calib=CALIB, nl_adc_bits=4,
                            defects=measure(plain.image, plain_sha, 1))
    import hashlib

    assert aware["image_sha256"] == hashlib.sha256(expected.image.to_bytes()).hexdigest() != plain_sha


def test_summary_statistics_count_the_percentile_from_the_bad_end():
    values = [i / 100 for i in range(101)]  # 0, 0.01, ..., 1: the k-th percentile is k/100 exactly
    assert summarize(values, higher_is_better=True) == pytest.approx(
        {"mean": 0.5, "std": float(np.std(values, ddof=1)), "p5": 0.05, "worst": 0.0})
    assert summarize(values, higher_is_better=False) == pytest.approx(
        {"mean": 0.5, "std": float(np.std(values, ddof=1)), "p5": 0.95, "worst": 1.0})
    assert summarize([0.7], True) == {"mean": 0.7, "std": 0.0, "p5": 0.7, "worst": 0.7}


def test_grid_is_the_sorted_product_and_keeps_the_base_values_of_axes_left_out():
    base = load_hardware()
    points = grid(base, [5, 3], [(0.01, 0.01)], None, "both")
    assert points == [HardwarePoint(b, 0.01, 0.01, base.nonideality.program_noise_us, aware)
                      for b in (3, 5) for aware in (False, True)]
    hw = points[0].hardware(base)
    assert (hw.converters.nl_adc_bits, hw.nonideality.stuck_on_rate, hw.array) == (3, 0.01, base.array)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0:"], "argument --seeds"),
    (["--seeds", "4:4"], "holds no seed"),
    (["--bits", "0"], "number of bits in 1..16"),
    (["--stuck-rate", "0.6/0.6"], "ON + OFF <= 1"),
    (["--program-noise-us", "-1"], ">= 0 uS"),
    (["--labels", "nolabels"], "no array 'nolabels'"),
    ([], "unknown ['y'] (labels are named with --labels KEY)"),  # the labels left among the model's inputs
    (["--bits", "9"], "cannot hold one 9-bit ramp column"),  # a 9-bit ramp (516 rows) does not fit the default 128-row arrays
    (["--labels", "y", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
])
def test_careless_commands_exit_2_with_one_line(tmp_path, eval_npz, capsys, monkeypatch, args, message):
    monkeypatch.setattr(sweep_cluster, "CONNECT_TIMEOUT_S", 1)
    base = ["sweep", str(MODEL), "--inputs", str(eval_npz), "--seeds", "0:2", "--cache", str(tmp_path / "c"),
            "--json", str(tmp_path / "out.json")]
    assert status(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out.json").exists()


def status(argv: list[str]) -> int:
    """The exit status of ``cimc ARGV``: argparse's usage errors exit, the others return."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)  # type: ignore[arg-type]


def test_missing_dask_is_one_line(tmp_path, eval_npz, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    assert main(["sweep", str(MODEL), "--inputs", str(eval_npz), "--seeds", "0:2", "--cache", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: cimc sweep needs Dask: pip install 'cimc[sweep]' (dask[distributed])"


def test_the_image_key_follows_content_not_folders(tmp_path):
    from cimc.sweep.cache import CompileSpec, image_key

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / MODEL.name).write_bytes(MODEL.read_bytes())
    (moved / CALIB.name).write_bytes(CALIB.read_bytes())
    base = load_hardware()
    point = grid(base, [5])[0]
    key = image_key(CompileSpec(str(MODEL), (str(CALIB),)).digest(), point.hardware(base).to_toml())
    assert key == image_key(CompileSpec(str(moved / MODEL.name), (str(moved / CALIB.name),)).digest(),
                            point.hardware(base).to_toml())
    other_rate = grid(base, [5], [(0.01, 0.01)])[0].hardware(base).to_toml()
    renamed = moved / "other.onnx"
    renamed.write_bytes(MODEL.read_bytes())  # an image records its model's file name: another name, another image
    assert len({key, image_key(CompileSpec(str(MODEL), (str(CALIB),)).digest(), other_rate),
                image_key(CompileSpec(str(renamed), (str(CALIB),)).digest(), point.hardware(base).to_toml()),
                image_key(CompileSpec(str(MODEL), (str(CALIB),), identity="digital").digest(),
                          point.hardware(base).to_toml()),
                image_key(CompileSpec(str(MODEL), (str(CALIB),)).digest(), point.hardware(base).to_toml(),
                          (key, 3))}) == 5


def test_local_cluster_workers_run_single_threaded_without_dask_malloc_trim():
    """Dask's MALLOC_TRIM_THRESHOLD_ made chip runs 2.7x slower (cimc/sweep/cluster.py); BLAS stays at 1 thread."""
    import os

    with sweep_cluster.open_client(1) as client:
        env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OPENBLAS_NUM_THREADS")))
    assert list(env.values()) == [(None, "1")]
