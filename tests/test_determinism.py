"""Same inputs give byte-identical images on every CPU: compiled under several BLAS/SIMD kernels and thread counts.

Each model is compiled by the installed ``cimc`` script in separate processes
whose environment selects other kernels: OpenBLAS's AVX2 (Haswell) or SSE4
(Nehalem) kernels instead of the AVX-512 ones it picks on this machine,
numpy's dispatch with its AVX-512 (and AVX2) targets disabled, one or two
BLAS/OpenMP threads, and a second process of the default environment. Before
cimc.fixed_order and portable_math, the KWS and GRU images differed under
AVX2-only kernels in target_us, g_scale, column ranges and NL-ADC thresholds
(docs/determinism.md). On a CPU without AVX-512 the AVX2 variants select the
kernels the default does; the thread counts and the SSE4 variant still differ.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import CIMC_SCRIPT, TESTS_DIR
from onnx_corpus import recurrent_cases
from range_models import recurrent_model

EXAMPLES = TESTS_DIR.parent / "examples"
# numpy < 2.4 names its AVX-512 dispatch targets AVX512F..AVX512_SPR, numpy 2.4 X86_V4 (AVX512_ICL, AVX512_SPR on top);
# a name the running numpy does not know only draws an ImportWarning.
AVX512_FEATURES = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR X86_V4"

VARIANTS = {
    "default-1-thread": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    "default-1-thread-again": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    "default-2-threads": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
    "avx2-1-thread": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell",
                      "NPY_DISABLE_CPU_FEATURES": AVX512_FEATURES},
    "avx2-2-threads": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "OPENBLAS_CORETYPE": "Haswell",
                       "NPY_DISABLE_CPU_FEATURES": AVX512_FEATURES},
    "sse4-1-thread": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Nehalem",
                      "NPY_DISABLE_CPU_FEATURES": f"{AVX512_FEATURES} AVX2 FMA3 X86_V3"},
}
KERNEL_KEYS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES",
               "MKL_NUM_THREADS", "OPENBLAS_VERBOSE")


def _kws(tmp: Path) -> list[str]:
    return [str(EXAMPLES / "kws" / "kws_lstm.onnx"), "--calib", str(EXAMPLES / "kws" / "calib.npz")]


def _gru_analytic(tmp: Path) -> list[str]:
    path = tmp / "gru.onnx"
    onnx.save(recurrent_model("GRU", 8, 16, seed=1, scale=0.4), path)
    return [str(path)]


def _lstm_peephole_calibrated(tmp: Path) -> list[str]:
    case = next(c for c in recurrent_cases() if c.name == "lstm-forward-layout0-clip-peep-act-sig.tanh.tanh-out-x.yh.yc-opset22")
    model, calib = tmp / "lstm.onnx", tmp / "lstm_calib.npz"
    onnx.save(case.model, model)
    np.savez(calib, **case.feeds)
    return [str(model), "--calib", str(calib)]


MODELS = {"kws-calibrated": _kws, "gru-analytic": _gru_analytic, "lstm-peephole-calibrated": _lstm_peephole_calibrated}


def _entries(image: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(image) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_image_bytes_identical_across_kernels_threads_and_processes(model: str, tmp_path: Path) -> None:
    args = MODELS[model](tmp_path)
    base = {k: v for k, v in os.environ.items() if k not in KERNEL_KEYS}
    images = {name: tmp_path / f"{name}.cimg" for name in VARIANTS}
    runs = {name: subprocess.Popen([str(CIMC_SCRIPT), "compile", *args, "-o", str(images[name])], env={**base, **env},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, env in VARIANTS.items()}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}: {err}"
    reference = _entries(images["default-1-thread"])
    for name in VARIANTS:
        entries = _entries(images[name])
        assert sorted(entries) == sorted(reference), name
        differing = [n for n in reference if entries[n] != reference[n]]
        assert not differing, f"{model} under {name}: entries differ from default-1-thread: {differing}"
        assert images[name].read_bytes() == images["default-1-thread"].read_bytes(), f"{model} under {name}: zip bytes differ"
