"""Every command imports what it needs, not what other commands need (bench/startup.py measures what that saves).

Each command runs in a fresh interpreter, through ``cimc.cli.main`` as the
console script does, and the test reads that process's ``sys.modules``
afterwards: an import that a later edit moves back to the top of a module
(networkx at the top of a pass, onnx at the top of ``cimc.limits``, numpy behind
the parser) fails here, whatever the machine's speed. What each command may not
import, and why:

* ``--help``: no numpy, onnx, networkx, onnxruntime, scipy or lark; the parser
  alone needs none of them.
* ``dump`` and ``run`` read an image and (run) its inputs: no onnx, networkx,
  onnxruntime, scipy or lark, and no pass registry.
* ``verify`` runs onnxruntime and the simulator: no networkx and no pass but the
  importer's dce (placement is the compiler's), no scipy (only the stuck-device
  count of a noisy bound needs scipy.stats), no lark.
* ``compile`` writes an image: no onnxruntime, scipy (map-defects only) or lark
  (the textual IR's parser).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KWS = Path(__file__).resolve().parent.parent / "examples" / "kws"

_RECORD = """
import json, sys
from cimc.cli import main
try:
    status = main(sys.argv[2:])
except SystemExit as e:  # --help exits from argparse
    status = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "modules": sorted(sys.modules)}, f)
"""

HEAVY = ("numpy", "onnx", "networkx", "onnxruntime", "scipy", "lark", "cimc.passes", "cimc.passes.place")


def imported(tmp: Path, *args: str) -> set[str]:
    """The heavy modules a fresh ``cimc ARGS`` process imported (the command must succeed)."""
    record = tmp / "modules.json"
    result = subprocess.run([sys.executable, "-c", _RECORD, str(record), *args], capture_output=True, text=True,
                            cwd=tmp, timeout=300)
    data = json.loads(record.read_text())
    assert data["status"] in (0, None), result.stderr
    return {m for m in HEAVY if m in data["modules"]}


@pytest.fixture(scope="module")
def kws_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The KWS image, and what its compile imported."""
    tmp = tmp_path_factory.mktemp("startup")
    return tmp / "kws.cimg", imported(tmp, "compile", str(KWS / "kws_lstm.onnx"), "-o", str(tmp / "kws.cimg"))


def test_help_imports_no_numpy_onnx_networkx_onnxruntime_scipy_or_lark(tmp_path: Path) -> None:
    assert imported(tmp_path, "--help") == set()


def test_compile_imports_no_onnxruntime_scipy_or_lark(kws_image: tuple[Path, set[str]]) -> None:
    image, modules = kws_image
    assert image.is_file()
    assert modules == {"numpy", "onnx", "networkx", "cimc.passes", "cimc.passes.place"}


def test_dump_and_run_import_no_onnx_networkx_or_passes(kws_image: tuple[Path, set[str]], tmp_path: Path) -> None:
    image, _ = kws_image
    assert imported(tmp_path, "dump", str(image)) == {"numpy"}
    out = tmp_path / "out.npz"
    assert imported(tmp_path, "run", str(image), "--inputs", str(KWS / "verify_inputs.npz"), "-o", str(out)) == {"numpy"}
    assert out.is_file()


def test_verify_imports_no_networkx_scipy_or_lark(kws_image: tuple[Path, set[str]], tmp_path: Path) -> None:
    image, _ = kws_image
    modules = imported(tmp_path, "verify", str(KWS / "kws_lstm.onnx"), str(image), "--inputs",
                       str(KWS / "verify_inputs.npz"))
    assert modules.isdisjoint({"networkx", "scipy", "lark", "cimc.passes.place"}) and {"onnx", "onnxruntime"} <= modules


def test_every_pass_module_is_in_the_registry_and_named_like_its_passes() -> None:
    """registered_passes() imports the modules of PASS_MODULES, and a pipeline imports a pass's module from its name
    (``decompose-rnn`` -> ``cimc.passes.decompose_rnn``): a pass module left out, or a pass named unlike its
    module, would be unknown to one of them."""
    import cimc.passes
    from cimc.pass_manager import pass_class, registered_passes

    folder = Path(cimc.passes.__file__).parent
    registering = {p.stem for p in folder.glob("*.py") if "@register_pass" in p.read_text()}
    assert registering == set(cimc.passes.PASS_MODULES)
    passes = {name: cls for name, cls in registered_passes().items()  # other tests register passes of their own
              if cls.__module__.startswith("cimc.passes.")}
    assert {cls.__module__ for cls in passes.values()} == {f"cimc.passes.{m}" for m in registering}
    for name, cls in passes.items():
        assert cls.__module__ == f"cimc.passes.{name.replace('-', '_')}" and pass_class(name) is cls
    assert pass_class("no-such-pass") is None


def test_a_pipeline_imports_only_the_passes_it_runs(tmp_path: Path) -> None:
    code = ("import sys; from cimc.pass_manager import parse_pipeline; parse_pipeline('cse,dce'); "
            "print(sorted(m for m in sys.modules if m.startswith('cimc.passes.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "['cimc.passes.cse', 'cimc.passes.dce']"
