"""Consistency of a loaded programming image, before anything reads it.

The checksums prove that the array and program entries are the ones the
manifest lists, but not that the manifest itself is sound: it is JSON anyone
can edit (and has no checksum of its own). A reader that trusted it would fail
deep in the simulator (an array index that does not exist, a level beyond the
device's, a ramp with too few output levels). :func:`check_manifest` checks
every field a reader uses, so that a bad image is one clear error at load
time; the loader then checks the arrays against the hardware they claim and
the step program against its op set and the arrays (``cimc.step_program``).
"""

from __future__ import annotations

import math
from collections.abc import Container
from pathlib import Path
from typing import Any

from cimc.diagnostics import CimcError
from cimc.types import DTYPES


def _fail(path: Path, what: str) -> CimcError:
    return CimcError(f"{path} is corrupt: {what}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _one_of(v: object, known: Container[object]) -> bool:
    """``v in known`` for a JSON value of any type (a list or an object is never a key, and is unhashable)."""
    return isinstance(v, (str, int)) and not isinstance(v, bool) and v in known


def _is_number(v: object) -> bool:
    return (isinstance(v, float) and math.isfinite(v)) or _is_int(v)


_KINDS = {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer", "number": "a finite number",
          "numbers": "a list of finite numbers", "ints": "a list of integers"}


_CHECKS = {"dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list), "str": lambda v: isinstance(v, str),
           "int": _is_int, "number": _is_number,
           "numbers": lambda v: isinstance(v, list) and all(map(_is_number, v)),
           "ints": lambda v: isinstance(v, list) and all(map(_is_int, v))}


def _require(path: Path, value: object, kind: str, what: str) -> Any:  # noqa: ANN401
    if not _CHECKS[kind](value):
        raise _fail(path, f"{what} must be {_KINDS[kind]}, got {value!r:.80}")
    return value


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """The manifest fields readers use have their types: the model's tensors, arrays, ramps, hardware."""
    from cimc.hardware import hardware_from_dict

    hw = hardware_from_dict(_require(path, manifest.get("hardware"), "dict", "hardware"), f"{path}: the image's hardware")
    model = _require(path, manifest.get("model"), "dict", "model")
    if model.get("source") is not None:
        _require(path, model["source"], "str", "model.source")
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(_require(path, model.get(kind), "list", f"model.{kind}")):
            where = f"model.{kind}[{i}]"
            _require(path, t, "dict", where)
            _require(path, t.get("name"), "str", f"{where}.name")
            if not _one_of(t.get("dtype"), DTYPES):
                raise _fail(path, f"{where}.dtype {t.get('dtype')!r} is not a tensor type")
            shape = _require(path, t.get("shape"), "list", f"{where}.shape")
            if not all(d is None or isinstance(d, str) or (_is_int(d) and d >= 0) for d in shape):
                raise _fail(path, f"{where}.shape {shape!r:.80} is not a list of sizes and symbols")
    indices = set()
    for i, info in enumerate(_require(path, manifest.get("arrays"), "list", "arrays")):
        where = f"arrays[{i}]"
        _require(path, info, "dict", where)
        index = _require(path, info.get("index"), "int", f"{where}.index")
        if index < 0 or index in indices or (hw.array.limit is not None and index >= hw.array.limit):
            raise _fail(path, f"{where}.index {index} is negative, repeated or beyond the chip's {hw.array.count} arrays")
        indices.add(index)
        a = hw.array
        if (info.get("rows"), info.get("cols")) not in ((a.rows, a.cols), (a.physical_rows, a.physical_cols)):
            raise _fail(path, f"{where} is {info.get('rows')!r} x {info.get('cols')!r}, the hardware's arrays are "
                              f"{a.rows} x {a.cols} ({a.physical_rows} x {a.physical_cols} with their spare lines)")
        for j, region in enumerate(_require(path, info.get("regions"), "list", f"{where}.regions")):
            _check_region(path, region, f"{where}.regions[{j}]")
        _require(path, info.get("devices_used"), "int", f"{where}.devices_used")
    for i, ramp in enumerate(_require(path, manifest.get("ramps"), "list", "ramps")):
        where = f"ramps[{i}]"
        _require(path, ramp, "dict", where)
        if ramp.get("id") != i:
            raise _fail(path, f"{where}.id is {ramp.get('id')!r}")
        if not _one_of(ramp.get("array"), indices):
            raise _fail(path, f"{where} is on array {ramp.get('array')!r}, which the image does not hold")
        bit_line = _require(path, ramp.get("bit_line"), "int", f"{where}.bit_line")
        bits = _require(path, ramp.get("bits"), "int", f"{where}.bits")
        if not 0 <= bit_line < hw.array.physical_cols or not 1 <= bits <= 16:
            raise _fail(path, f"{where} has bit line {bit_line} and {bits} bits")
        for key in ("z_lo", "z_hi", "g_per_z", "gain", "inl_lsb"):
            _require(path, ramp.get(key), "number", f"{where}.{key}")
        _require(path, ramp.get("function"), "str", f"{where}.function")
        steps = _require(path, ramp.get("step_devices"), "ints", f"{where}.step_devices")
        cal = _require(path, ramp.get("calibration_rows"), "ints", f"{where}.calibration_rows")
        if len(cal) != 2 or not 0 <= cal[0] <= cal[1] <= hw.array.physical_rows or any(n < 0 for n in steps) \
                or sum(steps) > hw.array.physical_rows:
            raise _fail(path, f"{where} has calibration rows {cal!r:.40} and step devices {steps!r:.40}, which do not "
                              f"fit a column of {hw.array.physical_rows} rows")
        if ramp.get("offset_sign") not in (1, -1) or isinstance(ramp.get("offset_sign"), bool):
            raise _fail(path, f"{where}.offset_sign must be 1 or -1, got {ramp.get('offset_sign')!r:.40}")
        for key in ("alpha", "beta", "clip"):
            if key in ramp and ramp[key] is not None:
                _require(path, ramp[key], "number", f"{where}.{key}")
        _require(path, ramp.get("thresholds"), "numbers", f"{where}.thresholds")
        if len(_require(path, ramp.get("output_levels"), "numbers", f"{where}.output_levels")) != 1 << bits:
            raise _fail(path, f"{where} has {len(ramp['output_levels'])} output levels for {bits} bits")


def _check_region(path: Path, region: object, where: str) -> None:
    """A region as ``cimc dump`` prints it: weights (block, rows and columns, lines) or a ramp column."""
    _require(path, region, "dict", where)
    assert isinstance(region, dict)
    kind = region.get("kind")
    spans = {"weights": ("block_rows", "block_cols", "word_lines", "bit_lines"), "ramp": ("word_lines", "bit_lines")}
    if not _one_of(kind, spans):
        raise _fail(path, f"{where}.kind must be 'weights' or 'ramp', got {kind!r:.40}")
    for key in spans[kind]:
        if len(_require(path, region.get(key), "ints", f"{where}.{key}")) != 2:
            raise _fail(path, f"{where}.{key} must be [start, end]")
    if kind == "ramp":
        _require(path, region.get("ramp"), "int", f"{where}.ramp")
    else:
        if region.get("block") is not None:
            _require(path, region["block"], "str", f"{where}.block")
        if "shared_by" in region:
            _require(path, region["shared_by"], "ints", f"{where}.shared_by")


def check_tensor_table(table: object, blobs: dict[str, int], path: Path) -> None:
    """``manifest.tensors`` against the blobs it points into (``blobs``: entry name -> elements).

    Each tensor is ``{"blob", "offset", "shape"}``, offset in elements of its
    blob's type (so no tensor can be misaligned); it must lie inside its blob,
    no two may overlap, and together they must cover every blob exactly (a
    writer leaves no gap, so a gap is unchecked data the checksums would vouch
    for). Each reader then checks the type and shape it expects (levels, float
    reference weights, the program's declared tensors).
    """
    _require(path, table, "dict", "the manifest's tensor table")
    assert isinstance(table, dict)
    spans: dict[str, list[tuple[int, int, str]]] = {name: [] for name in blobs}
    for name, entry in table.items():  # ~10,000 tensors for a 2-layer LSTM-1024: the checks are inline
        if type(entry) is not dict:
            raise _fail(path, f"tensor {name[:80]} must be an object, got {entry!r:.80}")
        blob, offset, shape = entry.get("blob"), entry.get("offset"), entry.get("shape")
        if not _one_of(blob, blobs):
            raise _fail(path, f"tensor {name[:80]} is in blob {blob!r:.80}, which the image does not hold")
        if type(offset) is not int:
            raise _fail(path, f"tensor {name[:80]}.offset must be an integer, got {offset!r:.80}")
        if type(shape) is not list or not all(type(d) is int for d in shape):
            raise _fail(path, f"tensor {name[:80]}.shape must be a list of integers, got {shape!r:.80}")
        if offset < 0 or any(d < 0 for d in shape):
            raise _fail(path, f"tensor {name[:80]} has offset {offset} and shape {shape!r:.80}; neither may be negative")
        end = offset + math.prod(shape)
        if end > blobs[blob]:
            raise _fail(path, f"tensor {name[:80]} (elements {offset}:{end}) runs past the end of {blob} "
                              f"({blobs[blob]} elements)")
        spans[blob].append((offset, end, name))
    for blob, members in spans.items():
        covered, before = 0, None
        for start, end, name in sorted(members):
            if start < covered:
                raise _fail(path, f"tensor {name[:80]} (elements {start}:{end} of {blob}) overlaps tensor {before}")
            if start > covered:
                raise _fail(path, f"{blob} elements {covered}:{start} belong to no tensor")
            covered, before = end, name[:80]
        if covered != blobs[blob]:
            raise _fail(path, f"{blob} elements {covered}:{blobs[blob]} belong to no tensor")
