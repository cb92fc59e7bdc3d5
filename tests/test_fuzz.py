"""The fuzz suite: hostile files through every entry point of the command line.

Each case writes one hostile file (a mutated ONNX model, IR text, image,
hardware TOML, or --inputs/--calib archive) into a workspace and runs the CLI
on it in-process (``cimc.cli.main``: the same code as the console script,
without a Python start per case). Every case must end

- with exit status 0 or 2, never 1 (an internal error) and never a traceback;
- at status 2 with exactly one line that says ``error:`` (IR text errors add
  the source line and a caret under it);
- with no file created but the requested outputs, none of them at status 2
  (no partial output), nothing written beside the workspace, and every input
  byte-for-byte as it was.

Mutations are drawn by hypothesis (so a failure shrinks to a small case):
byte-level edits of real files (truncation, bit flips, overwritten, deleted
and repeated spans) and structured edits of what each format holds. The number
of cases is ``--fuzz-cases`` (default 1000) shared among the targets; the
terminal summary reports how many ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cimc.cli import main
from cimc.diagnostics import CimcError
from cimc.image import VERSION
from cimc.npz import npy_from_bytes

pytestmark = [
    pytest.mark.fuzz,
    # Hostile inputs are the point: NaN weights warn on their way to being refused, and the bomb case writes a
    # duplicate entry name on purpose.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),
]

DATA = Path(__file__).parent / "data"
I, H = 3, 4  # the tiny LSTM every target starts from: fast to compile, run and load

# Each target's share of --fuzz-cases (they sum to 1).
SHARES = {"onnx-bytes": 0.18, "onnx-structure": 0.12, "ir-text": 0.22, "image-bytes": 0.1, "image-entries": 0.12,
          "hardware-toml": 0.12, "inputs": 0.09, "calib": 0.05}


def _tiny_lstm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.1, (1, 8 * H)).astype(np.float32), "B")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, name="lstm")
    tanh = helper.make_node("Tanh", ["Y_h"], ["out"], name="head")
    graph = helper.make_graph([node, tanh], "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "N", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class Workspace:
    """A folder of pristine inputs (the tiny model, its IR, image, inputs) and a checker for one CLI run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases = root / "cases"
        self.cases.mkdir()
        model = _tiny_lstm()
        self.model_bytes = model.SerializeToString()
        self.model = root / "tiny.onnx"
        self.model.write_bytes(self.model_bytes)
        self.inputs = root / "in.npz"
        self.inputs.write_bytes(_npz({"X": np.random.default_rng(1).uniform(-1, 1, (5, 2, I)).astype(np.float32)}))
        for args in (["compile", str(self.model), "-o", str(root / "tiny.cimg")],
                     ["compile", str(self.model), "-o", str(root / "tiny_lowered.cir")],
                     ["import", str(self.model), "-o", str(root / "tiny.cir")]):
            rc, _, err = run_main(args)
            assert rc == 0, err
        self.image = root / "tiny.cimg"
        self.ir_files = {p.name: p.read_text() for p in (root / "tiny.cir", root / "tiny_lowered.cir", DATA / "lstm_like.cir")}
        for sidecar in (root / "tiny.npz", root / "tiny_lowered.npz", DATA / "lstm_like.npz"):
            if sidecar.exists() and sidecar.parent != root:
                (root / sidecar.name).write_bytes(sidecar.read_bytes())
        self.serial = 0
        self.opened: list[str] = []  # the paths the last case opened

    def fresh(self, suffix: str) -> Path:
        """A new path in the cases folder (every case writes to names no earlier case used)."""
        self.serial += 1
        return self.cases / f"c{self.serial}{suffix}"

    def check(self, argv: Sequence[str], outputs: Sequence[Path], env: dict[str, str] | None = None) -> int:
        """Run ``cimc argv`` in-process and assert the fuzz invariants; returns the exit status."""
        before, beside = _snapshot(self.root), _listing(self.root.parent)
        with _environment(env or {}), recording_opens() as opened:
            rc, out, err = run_main(list(argv))
        self.opened = list(opened)
        after = _snapshot(self.root)
        context = f"cimc {' '.join(map(str, argv))}\n--- stderr:\n{err}"
        assert "Traceback" not in err and "internal error" not in err, context
        assert rc in (0, 2), context
        if rc == 2:
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1 and errors[0] == _error_block(err)[0], context
        created = set(after) - set(before)
        allowed = {p for o in outputs for p in (o, o.with_suffix(".npz") if o.suffix == ".cir" else o)}
        assert created <= allowed, (sorted(map(str, created - allowed)), context)
        assert rc == 0 or not created, ("partial output", sorted(map(str, created)), context)
        assert all(after[p] == before[p] for p in before), ("an input changed", context)
        assert _listing(self.root.parent) == beside, ("wrote beside the workspace", context)
        for path in created:
            path.unlink()
        return rc


_OPENED: list[str] = []  # every file path Python opened while a case ran (sys.addaudithook's "open" event)
_RECORDING = False


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while _RECORDING


@contextlib.contextmanager
def recording_opens():  # noqa: ANN201
    global _RECORDING
    _OPENED.clear()
    _RECORDING = True
    try:
        yield _OPENED
    finally:
        _RECORDING = False


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage errors and --help
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _error_block(err: str) -> list[str]:
    """The lines from the first that says ``error:`` on (an IR text error adds its source line and caret)."""
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if "error:" in line)
    return lines[first:]


def _snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@contextlib.contextmanager
def _environment(env: dict[str, str]):  # noqa: ANN202
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    # A folder of its own inside a fresh one, so that "nothing written beside the workspace" watches only this suite.
    root = tmp_path_factory.mktemp("fuzz") / "workspace"
    root.mkdir()
    return Workspace(root)


def _fuzz(budget, target: str, strategy: st.SearchStrategy, body: Callable[..., None]) -> None:  # noqa: ANN001
    """Run ``body`` on ``budget.cases(SHARES[target])`` examples of ``strategy``, counting each."""

    @settings(max_examples=budget.cases(SHARES[target]), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(strategy)
    def case(example) -> None:  # noqa: ANN001
        budget.count(target)
        body(example)

    case()


# --- byte-level mutation, shared by every binary target ---

@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after 1-3 edits: truncation, bit flips, overwritten, deleted or repeated spans, inserted garbage."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        n = len(out)
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "delete", "repeat", "insert"]))
        at = draw(st.integers(0, max(0, n - 1)))
        span = draw(st.integers(1, 64))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and n:
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, n - 1))
                out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            out[at:at + span] = draw(st.binary(min_size=span, max_size=span))
        elif kind == "delete":
            del out[at:at + span]
        elif kind == "repeat":
            out[at:at] = out[at:at + span]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=span))
    return bytes(out)


# --- ONNX models ---

def test_fuzz_onnx_bytes(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Garbled and truncated protobuf: import refuses it or imports what is still a model."""
    def body(data: bytes) -> None:
        model = workspace.fresh(".onnx")
        model.write_bytes(data)
        out = workspace.fresh(".cir")
        workspace.check(["import", str(model), "-o", str(out)], [out])
        model.unlink()

    _fuzz(fuzz_budget, "onnx-bytes", mutated_bytes(workspace.model_bytes), body)


def _set_dims(value_info: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _onnx_edit(model: onnx.ModelProto, kind: str, draw: st.DrawFn, folder: Path) -> None:
    """Apply one hostile edit to ``model`` (files it refers to are written into ``folder``)."""
    g = model.graph
    inits = list(g.initializer)
    target = draw(st.sampled_from(inits)) if inits else None
    if kind == "drop-initializer" and target is not None:
        g.initializer.remove(target)
    elif kind == "initializer-dims" and target is not None:
        target.dims[draw(st.integers(0, len(target.dims) - 1))] = draw(st.sampled_from([0, 1, 2, 5, 2**31, 2**62]))
    elif kind == "initializer-dtype" and target is not None:
        target.data_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT16,
                                                 TensorProto.STRING, TensorProto.BOOL, TensorProto.COMPLEX64, 0, 99]))
    elif kind == "non-finite" and target is not None and target.data_location != TensorProto.EXTERNAL:
        try:
            array = numpy_helper.to_array(target).copy()
        except (ValueError, TypeError, KeyError):  # an earlier edit changed its dims or type
            return
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38]))
        target.CopyFrom(numpy_helper.from_array(array, target.name))
    elif kind == "input-dims":
        _set_dims(g.input[0], draw(st.lists(st.sampled_from([0, 1, 3, 7, 2**40, 2**62, "T", "N", "x"]), min_size=0, max_size=5)))
    elif kind == "input-dtype":
        g.input[0].type.tensor_type.elem_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64, TensorProto.STRING,
                                                                      TensorProto.BOOL, TensorProto.UINT8, 0]))
    elif kind == "hidden-size":
        attr = next(a for a in g.node[0].attribute if a.name == "hidden_size")
        attr.i = draw(st.sampled_from([0, -1, 1, 5, 2**31, 2**62]))
    elif kind == "cycle":
        g.node[0].input[0] = draw(st.sampled_from(["out", "Y", "Y_h"]))
    elif kind == "duplicate-name":
        choice = draw(st.sampled_from(["initializer", "output", "node-output"]))
        if choice == "initializer" and target is not None:
            g.initializer.append(target)
        elif choice == "output":
            g.output.append(g.output[0])
        else:
            g.node[1].output[0] = "Y_h"
    elif kind == "external-data" and target is not None:
        location = draw(st.sampled_from(["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "missing.bin",
                                         "inside.bin", "."]))
        (folder.parent / "outside.bin").write_bytes(b"\0" * 4096)  # a file the model must never be allowed to read
        (folder / "inside.bin").write_bytes(b"\1" * draw(st.sampled_from([0, 7, 4096])))
        target.ClearField("raw_data")
        target.ClearField("float_data")
        target.data_location = TensorProto.EXTERNAL
        entry = target.external_data.add()
        entry.key, entry.value = "location", location
        if draw(st.booleans()):
            for key in ("offset", "length"):
                e = target.external_data.add()
                e.key, e.value = key, str(draw(st.sampled_from([0, 1, 16, 2**40, -1])))
    elif kind == "op-type":
        g.node[draw(st.integers(0, len(g.node) - 1))].op_type = draw(st.sampled_from(["Frobnicate", "Loop", "If", "LSTM", "Gemm"]))
    elif kind == "attribute":
        node = g.node[0]
        node.attribute.append(draw(st.sampled_from([
            helper.make_attribute("direction", "sideways"), helper.make_attribute("activations", ["Nope", "Tanh", "Tanh"]),
            helper.make_attribute("clip", -1.0), helper.make_attribute("layout", 3), helper.make_attribute("hidden_size", 2.5)])))
    elif kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([1, 6, 7, 22, 99, 10**6]))


ONNX_EDITS = ["drop-initializer", "initializer-dims", "initializer-dtype", "non-finite", "input-dims", "input-dtype",
              "hidden-size", "cycle", "duplicate-name", "external-data", "op-type", "attribute", "opset"]


def test_fuzz_onnx_structure(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Structurally hostile models (missing or contradictory initializers, NaN, zero and enormous dims, cycles,
    duplicate names, external data leaving the folder) through the whole compile."""
    folder = workspace.cases / "models"
    folder.mkdir()

    def body(data: st.DataObject) -> None:
        model = _tiny_lstm()
        for kind in data.draw(st.lists(st.sampled_from(ONNX_EDITS), min_size=1, max_size=3)):
            _onnx_edit(model, kind, data.draw, folder)
        path = folder / f"m{workspace.serial}.onnx"
        path.write_bytes(model.SerializeToString())
        out = workspace.fresh(".cimg")
        rc = workspace.check(["compile", str(path), "-o", str(out)], [out])
        if any(e.key == "location" and (".." in e.value or e.value.startswith("/")) for init in model.graph.initializer
               for e in init.external_data):
            assert rc == 2, "external data outside the model's folder was accepted"
        outside = {str((folder.parent / "outside.bin").resolve()), "/etc/hostname"}
        read = outside & {os.path.realpath(os.path.join(folder, p)) for p in workspace.opened}
        assert not read, f"read {sorted(read)}, outside the model's folder"
        path.unlink()

    _fuzz(fuzz_budget, "onnx-structure", st.data(), body)


# --- IR text ---

_IR_ALPHABET = "%@^(){}[]<>:,=\"'0123456789.-+eE_abcfinx? \n/"


@st.composite
def edited_ir(draw: st.DrawFn, files: dict[str, str]) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(files)))
    lines = files[name].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["delete-line", "repeat-line", "swap-lines", "delete-char", "insert-char",
                                     "rename-value", "number"]))
        line = lines[i]
        if kind == "delete-line":
            del lines[i]
        elif kind == "repeat-line":
            lines.insert(i, line)
        elif kind == "swap-lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind in ("delete-char", "insert-char") and line:
            k = draw(st.integers(0, len(line) - 1))
            extra = draw(st.sampled_from(_IR_ALPHABET)) if kind == "insert-char" else ""
            lines[i] = line[:k] + extra + line[k + (kind == "delete-char"):]
        elif kind == "rename-value":
            names = sorted({w for w in " ".join(lines).replace("(", " ").replace(",", " ").split() if w.startswith("%")})
            if names:
                lines[i] = line.replace(draw(st.sampled_from(names)), draw(st.sampled_from(names)), 1)
        elif kind == "number":
            digits = [k for k, ch in enumerate(line) if ch.isdigit()]
            if digits:
                k = draw(st.sampled_from(digits))
                lines[i] = line[:k] + draw(st.sampled_from(["0", "9", "-1", "99999999999", "1e400", "nan"])) + line[k + 1:]
        if not lines:
            lines = [""]
    return name, "\n".join(lines) + "\n"


def test_fuzz_ir_text(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Random edits of valid .cir files (imported, lowered, hand-written) through the parser, verifier and passes."""
    def body(example: tuple[str, str]) -> None:
        name, text = example
        path = workspace.root / f"edited-{name}"  # beside the sidecar it names
        path.write_text(text)
        out = workspace.fresh(".cir")
        workspace.check(["opt", str(path), "-p", "canonicalize,cse,dce", "-o", str(out)], [out])
        path.unlink()

    _fuzz(fuzz_budget, "ir-text", edited_ir(workspace.ir_files), body)


# --- programming images ---

def _image_args(image: Path, workspace: Workspace, which: int) -> tuple[list[str], list[Path]]:
    if which == 0:
        return ["dump", str(image)], []
    out = workspace.fresh(".npz")
    return ["run", str(image), "--inputs", str(workspace.inputs), "-o", str(out), "--fidelity",
            ("exact", "ideal", "noisy")[which - 1]], [out]


def test_fuzz_image_bytes(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Truncated and bit-flipped images through dump and run."""
    def body(example: tuple[bytes, int]) -> None:
        data, which = example
        image = workspace.fresh(".cimg")
        image.write_bytes(data)
        workspace.check(*_image_args(image, workspace, which))
        image.unlink()

    _fuzz(fuzz_budget, "image-bytes", st.tuples(mutated_bytes(workspace.image.read_bytes()), st.integers(0, 3)), body)


def _rezip(entries: dict[str, bytes], extra: Sequence[tuple[zipfile.ZipInfo, bytes]] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return buffer.getvalue()


_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3), st.just({}), st.just(2**31))


def _json_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in _json_paths(v, prefix + (k,))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value[:4]) for p in _json_paths(v, prefix + (i,))]
    return [prefix]


def _image_edit(entries: dict[str, bytes], kind: str, draw: st.DrawFn) -> tuple[dict[str, bytes], list]:
    """One hostile edit of an image's entries; returns the entries and extra raw (ZipInfo, bytes) entries."""
    manifest = json.loads(entries["manifest.json"])
    extra: list[tuple[zipfile.ZipInfo, bytes]] = []
    if kind == "version":
        manifest["version"] = draw(st.sampled_from([0, 1, 99, "2", None, 2.5]))
    elif kind == "format":
        manifest["format"] = draw(st.sampled_from(["cimc-imag", "", None, 7]))
    elif kind == "manifest-value":
        path = draw(st.sampled_from([p for p in _json_paths(manifest) if p and p[0] != "checksums"]))
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(_JSON_VALUES)
    elif kind == "escaping-entry":
        name = draw(st.sampled_from(["../evil.npy", "/abs/evil.npy", "arrays/../../evil.npy", "C:/evil.npy", "..\\evil"]))
        entries[name] = b"owned"
        if draw(st.booleans()):
            manifest.setdefault("checksums", {})[name] = hashlib.sha256(b"owned").hexdigest()
    elif kind == "bomb":
        # 64 MiB of zeros deflate to 64 KiB; the case runs with a 16 MiB memory limit, so the declared size alone refuses it
        info = zipfile.ZipInfo(draw(st.sampled_from(["bomb.npy", "program.cir", "arrays/0.level.npy"])))
        info.compress_type = zipfile.ZIP_DEFLATED
        entries.pop(info.filename, None)
        extra.append((info, bytes(64 << 20)))
    elif kind == "array-entry":
        # an array entry rewritten with its checksum updated, so the loader and the simulator meet what it holds
        names = [n for n in entries if n.endswith(".npy")]
        name = draw(st.sampled_from(names))
        try:
            array = npy_from_bytes(entries[name], name)
        except CimcError:  # an earlier edit already broke its header
            return entries, extra
        edit = draw(st.sampled_from(["value", "dtype", "shape", "header"]))
        if edit == "value" and array.size:
            array = array.copy()
            if array.dtype.kind in "iub":  # values the (possibly edited) dtype can hold, its extremes included
                info = np.iinfo(array.dtype) if array.dtype.kind != "b" else np.iinfo(np.uint8)
                values = sorted({int(info.min), int(info.max), 0, min(100, int(info.max))} | ({-2} if info.min < 0 else set()))
                values = values if array.dtype.kind != "b" else [0, 1]
            else:
                values = [-32768, -2, 32767, 10**4, 0]
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from(values))
        elif edit == "dtype":
            array = array.astype(draw(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_, np.complex64])))
        elif edit == "shape":
            array = array.reshape(-1)[: draw(st.integers(0, max(0, array.size - 1)))]
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
        if edit == "header":
            data = data.replace(b"'shape': (", b"'shape': (1000000000, ", 1)
        entries[name] = data
        manifest.setdefault("checksums", {})[name] = hashlib.sha256(data).hexdigest()
    elif kind == "tensor-table":
        # a tensor moved, resized or sent to another blob: never a sound table (the tensors tile their blobs exactly)
        tensors = manifest.get("tensors")
        if isinstance(tensors, dict) and tensors:
            name = draw(st.sampled_from(sorted(tensors)))
            entry = tensors[name] if isinstance(tensors[name], dict) else {}
            key = draw(st.sampled_from(["offset", "shape", "blob"]))
            value = draw({"offset": st.sampled_from([-1, 10**9, 2**63, 0.5, "0", None]),
                          "shape": st.sampled_from([[], [0], [10**6, 10**6], [-1, 2], [1.5], "3"]),
                          "blob": st.sampled_from(["data/int9.npy", "data/int16.npy", "manifest.json", "", 3])}[key])
            entry[key] = value
            tensors[name] = entry
    elif kind == "drop-entry":
        del entries[draw(st.sampled_from(sorted(n for n in entries if n != "manifest.json")))]
    entries["manifest.json"] = json.dumps(manifest).encode()
    return entries, extra


IMAGE_EDITS = ["version", "format", "manifest-value", "escaping-entry", "bomb", "array-entry", "tensor-table", "drop-entry"]


def test_fuzz_image_entries(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Images whose entries lie: wrong version, edited manifests, entries escaping the archive, a decompression bomb,
    blobs that do not fit their hardware (with matching checksums), tensor tables that misplace a tensor."""
    with zipfile.ZipFile(workspace.image) as zf:
        pristine = {name: zf.read(name) for name in zf.namelist()}

    def body(data: st.DataObject) -> None:
        entries, extra = dict(pristine), []
        kinds = data.draw(st.lists(st.sampled_from(IMAGE_EDITS), min_size=1, max_size=2))
        for kind in kinds:
            entries, more = _image_edit(entries, kind, data.draw)
            extra += more
        image = workspace.fresh(".cimg")
        image.write_bytes(_rezip(entries, extra))
        env = {"CIMC_MEMORY_LIMIT": str(16 << 20)} if "bomb" in kinds else None
        rc = workspace.check(*_image_args(image, workspace, data.draw(st.integers(0, 3))), env=env)
        manifest = json.loads(entries["manifest.json"])
        escaping = any(".." in n.replace("\\", "/").split("/") or n.startswith("/") or ":" in n for n in entries)
        if escaping or extra or "tensor-table" in kinds or \
                (manifest.get("version"), manifest.get("format")) != (VERSION, "cimc-image"):
            assert rc == 2, kinds
        image.unlink()

    _fuzz(fuzz_budget, "image-entries", st.data(), body)


# --- hardware descriptions ---

_HW_KEYS = {
    "array": ["rows", "cols", "count"], "device": ["g_min_us", "g_max_us", "levels", "read_voltage_v"],
    "converters": ["dac_bits", "adc_bits", "nl_adc_bits", "ramp_calibration_devices", "analog_partial_sums", "ramp_gains"],
    "nonideality": ["program_noise_us", "read_noise_rel", "stuck_on_rate", "stuck_off_rate", "drift_nu", "drift_t0_s",
                    "vread_rel_std"],
    "cost": ["clock_ghz", "array_read_pj", "adc_conversion_pj", "nl_adc_conversion_pj", "digital_op_pj",
             "digital_activation_ops", "digital_lanes"],
}
_TOML_VALUES = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 3, 5, 8, 16, 17, 64, 128, 4096, 10**6, 2**31, 2**63 - 1, -2**63]),
    st.sampled_from([0.0, -0.5, 1e-9, 0.5, 1.0, 25.0, 1e300, float("nan"), float("inf"), -float("inf")]),
    st.booleans(), st.sampled_from(['"auto"', '"x"', '""']), st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.0, 1e9]), max_size=3))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


@st.composite
def hardware_toml(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # not TOML at all
        return draw(st.binary(max_size=64))
    lines = []
    for section in draw(st.lists(st.sampled_from([*_HW_KEYS, "bogus"]), min_size=1, max_size=3, unique=True)):
        lines.append(f"[{section}]")
        keys = _HW_KEYS.get(section, ["nothing"]) + ["typo_key"]
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(_TOML_VALUES))}")
    return ("\n".join(lines) + "\n").encode()


def test_fuzz_hardware_toml(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """Wrong types and impossible values in --hw through a whole compile."""
    def body(data: bytes) -> None:
        hw = workspace.fresh(".toml")
        hw.write_bytes(data)
        out = workspace.fresh(".cimg")
        workspace.check(["compile", str(workspace.model), "--hw", str(hw), "-o", str(out)], [out])
        hw.unlink()

    _fuzz(fuzz_budget, "hardware-toml", hardware_toml(), body)


# --- --inputs and --calib files ---

@st.composite
def input_archive(draw: st.DrawFn) -> bytes:
    """An .npz of inputs that may be wrong in every way an input file can be, or not an .npz at all."""
    kind = draw(st.sampled_from(["arrays", "arrays", "arrays", "npy", "garbage", "mutated", "pickle", "header"]))
    x = np.random.default_rng(draw(st.integers(0, 3))).uniform(-1, 1, (5, 2, I)).astype(np.float32)
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, x)
        return buffer.getvalue()
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "mutated":
        return draw(mutated_bytes(_npz({"X": x})))
    if kind == "pickle":
        buffer = io.BytesIO()
        np.savez(buffer, X=np.array([{"a": 1}], dtype=object))
        return buffer.getvalue()
    if kind == "header":  # a header declaring far more elements than the entry holds
        buffer = io.BytesIO()
        np.save(buffer, x)
        data = buffer.getvalue().replace(b"'shape': (5,", b"'shape': (500000000000,", 1)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("X.npy", data)
        return out.getvalue()
    names = draw(st.lists(st.sampled_from(["X", "X", "Y", "x", ""]), min_size=0, max_size=2, unique=True))
    arrays = {}
    for name in names:
        shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
        dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int64, np.bool_, np.complex64]))
        values = np.random.default_rng(0).uniform(-2, 2, shape).astype(dtype)
        if values.size and dtype in (np.float32, np.float64) and draw(st.booleans()):
            values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e30, -1e30]))
        arrays[name] = values
    return _npz(arrays)


def test_fuzz_inputs_files(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """--inputs archives with wrong names, dtypes, ranks, zero or mismatched dims, NaN, pickles, lying headers."""
    def body(example: tuple[bytes, str]) -> None:
        data, fidelity = example
        inputs = workspace.fresh(".npz")
        inputs.write_bytes(data)
        out = workspace.fresh(".npz")
        workspace.check(["run", str(workspace.image), "--inputs", str(inputs), "-o", str(out), "--fidelity", fidelity], [out])
        inputs.unlink()

    _fuzz(fuzz_budget, "inputs", st.tuples(input_archive(), st.sampled_from(["exact", "ideal", "noisy"])), body)


def test_fuzz_calib_files(workspace: Workspace, fuzz_budget) -> None:  # noqa: ANN001
    """The same hostile archives as --calib data of a compile."""
    def body(data: bytes) -> None:
        calib = workspace.fresh(".npz")
        calib.write_bytes(data)
        out = workspace.fresh(".cir")
        workspace.check(["compile", str(workspace.model), "--calib", str(calib), "-o", str(out)], [out])
        calib.unlink()

    _fuzz(fuzz_budget, "calib", input_archive(), body)
