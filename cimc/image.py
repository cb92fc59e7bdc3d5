"""The programming image: what a chip's programming tool would consume, in one archive.

A ``.cimg`` file is a zip archive (stored, fixed timestamps, sorted entries,
so the same model, options and seed give the same bytes) readable with the
standard library and numpy alone:

- ``manifest.json``: format name and version, the hardware description (a
  chip sized to the model, ``count = "auto"``, records the count it uses),
  the ONNX input/output names, dtypes and shapes, every used array with the
  regions it holds (which logical weight block, rows and columns went where;
  a region whose weights several MVMs share is programmed once and lists
  them in ``shared_by`` and ``nodes``) and the SHA-256 of each data entry,
  and every NL-ADC ramp (function, bits, thresholds, output levels, devices);
- ``arrays/<k>.target_us.npy`` (float64) and ``arrays/<k>.level.npy`` (int16):
  the target conductance in uS and the programmed level index of every device
  of physical array k (level -1 and 0 uS for a device that is not used, or is
  a disabled calibration device);
- ``program.cir`` and ``program/<key>.npy``: the step program, i.e. the
  scheduled IR, without the conductances (they are the arrays above): array
  reads, conversions and digital ops with their stages, inside the loop
  structure, plus the input/output scales.

Weight tile layout: weight column j of a tile placed at bit line c uses bit
line c + 2j for G+ and c + 2j + 1 for G-, on word lines array_row onward.
A ramp column uses one bit line: one device per step (two for a step wider
than G_max) from word line 0, then its calibration devices.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, hardware_from_dict
from cimc.interpreter import input_names, output_names
from cimc.image_check import check_loaded_image, check_manifest
from cimc.ir import Module, Operation
from cimc.npz import npy_from_bytes, open_atomic, read_archive
from cimc.parser import parse_module
from cimc.printer import PrintedModule, print_module
from cimc.ramp import ramp_from_op

FORMAT = "cimc-image"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dims(shape: tuple) -> list[int | str | None]:
    return [d if isinstance(d, (int, str)) or d is None else str(d) for d in shape]


@dataclass
class Image:
    """A loaded (or freshly built) programming image."""

    manifest: dict[str, Any]
    arrays: dict[int, tuple[np.ndarray, np.ndarray]]  # array index -> (target_us, level)
    program_text: str
    program_resources: dict[str, np.ndarray]
    _program: Module | None = field(default=None, repr=False, compare=False)

    @property
    def hardware(self) -> Hardware:
        return hardware_from_dict(self.manifest["hardware"], "the image's hardware description")

    def device_levels(self, k: int) -> np.ndarray:
        """The programmed level of every device of physical array k (-1: unformed, 0 uS)."""
        return self.arrays[k][1]

    def program(self) -> Module:
        """The step program, parsed once (simulators only read it)."""
        if self._program is None:
            self._program = parse_module(self.program_text, "program.cir", resources=self.program_resources)
        return self._program

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self._write_zip(buffer)
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        with open_atomic(path) as f:
            self._write_zip(f)

    def _write_zip(self, out: BinaryIO) -> None:
        """Entries in name order; array entries are encoded one at a time, so the image is never in memory twice."""
        arrays = {f"arrays/{k}.{what}.npy": (k, i) for k in self.arrays for i, what in enumerate(("target_us", "level"))}
        small = {"program.cir": self.program_text.encode("utf-8")}
        small.update({f"program/{key}.npy": _npy(array) for key, array in self.program_resources.items()})
        checksums = {name: _sha(data) for name, data in small.items()}
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            def put(name: str, data: bytes) -> None:
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)

            for name in sorted(arrays):  # "arrays/..." sorts before "manifest.json" and "program..."
                k, i = arrays[name]
                data = _npy(self.arrays[k][i])
                checksums[name] = _sha(data)
                put(name, data)
            manifest = dict(self.manifest, checksums=checksums)
            put("manifest.json", json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8"))
            for name in sorted(small):
                put(name, small[name])


def build_image(module: Module, hw: Hardware) -> Image:
    """Lay every placed tile and ramp of a scheduled module out on its physical arrays."""
    a, d = hw.array, hw.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    regions: dict[int, list[dict[str, Any]]] = {}
    ramps: list[dict[str, Any]] = []

    def array(k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in arrays:
            arrays[k] = (np.zeros((a.rows, a.cols)), np.full((a.rows, a.cols), -1, np.int16))
        return arrays[k]

    def occupy(k: int, rows: slice, cols: slice | int, target: np.ndarray, levels: np.ndarray, what: str) -> None:
        g, lv = array(k)
        if (lv[rows, cols] != -1).any():
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        g[rows, cols] = target
        lv[rows, cols] = levels

    def same_devices(k: int, rows: slice, cols: slice, target: np.ndarray) -> bool:
        """Whether a tile placed where another already is holds the very same conductances (shared weights)."""
        return np.array_equal(array(k)[0][rows, cols], target)

    def level_of(g: np.ndarray) -> np.ndarray:
        """Programmed level of each device; -1 for a device left unformed (target 0 uS, below G_min)."""
        levels = np.clip(np.rint((g - d.g_min_us) / delta_g), 0, d.levels - 1).astype(np.int16)
        return np.where(g < d.g_min_us / 2, np.int16(-1), levels)

    program = module
    programmed: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}  # (array, row, bit line, rows, cols) -> region
    tile_id = 0
    for op in program.walk():
        if op.name == "cim.tile_mvm":
            if "array" not in op.attributes:
                raise CimcError("the module is not placed: an image needs the full pipeline (place, fuse-activation, schedule)")
            k, r, c = (int(op.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
            g_pos, g_neg = (op.attributes[n].array for n in ("g_pos", "g_neg"))  # type: ignore[union-attr]
            rows, width = g_pos.shape
            if r + rows > a.rows or c + 2 * width > a.cols:
                raise CimcError(f"a tile of block '{op.attributes.get('block')}' at array {k}, row {r}, bit line {c} does not fit "
                                f"a {a.rows} x {a.cols} array: the image's hardware differs from the one compiled for")
            interleaved = np.empty((rows, 2 * width))
            interleaved[:, 0::2], interleaved[:, 1::2] = g_pos, g_neg
            where = (k, r, c, rows, width)
            if where in programmed:
                # Shared weights: the devices are programmed once and read by every tile placed on them.
                if not same_devices(k, slice(r, r + rows), slice(c, c + 2 * width), interleaved):
                    raise CimcError(f"internal error: tiles sharing array {k}, bit line {c} hold different conductances")
                region = programmed[where]
                region.setdefault("shared_by", [region["tile"]]).append(tile_id)
                if op.location and op.location not in region.setdefault("nodes", []):
                    region["nodes"].append(op.location)
            else:
                occupy(k, slice(r, r + rows), slice(c, c + 2 * width), interleaved, level_of(interleaved), f"tile {tile_id}")
                r0, r1 = op.attributes["rows"]  # type: ignore[misc]
                c0, c1 = op.attributes["cols"]  # type: ignore[misc]
                region = {"kind": "weights", "tile": tile_id, "block": op.attributes.get("block"),
                          "block_rows": [r0, r1], "block_cols": [c0, c1],
                          "word_lines": [r, r + rows], "bit_lines": [c, c + 2 * width]}
                if "share" in op.attributes and op.location:
                    region["nodes"] = [op.location]
                programmed[where] = region
                regions.setdefault(k, []).append(region)
            op.attributes["image.tile"] = tile_id
            tile_id += 1
        elif op.name == "cim.ramp":
            ramp = _ramp_entry(op, hw, len(ramps))
            k, c, column_lv = ramp.pop("array_index"), ramp["bit_line"], ramp.pop("column_levels")
            column_g = np.where(column_lv >= 0, d.g_min_us + column_lv * delta_g, 0.0)
            if column_g.size > a.rows:
                raise CimcError(f"the ramp at array {k}, bit line {c} needs {column_g.size} rows; the array has {a.rows}")
            occupy(k, slice(0, column_g.size), c, column_g, column_lv, f"ramp {len(ramps)}")
            ramps.append({"array": k, **ramp})
            regions.setdefault(k, []).append({"kind": "ramp", "ramp": len(ramps) - 1, "word_lines": [0, int(column_g.size)],
                                             "bit_lines": [c, c + 1]})
            op.attributes["image.ramp"] = len(ramps) - 1
    printed = _print_without_conductances(program)
    hardware = hw.to_dict()
    if hw.array.limit is None:  # a chip sized to the model: record the count actually used
        hardware["array"]["count"] = 1 + max(arrays, default=-1)
    manifest = {
        "format": FORMAT, "version": VERSION, "hardware": hardware,
        "model": {
            "source": program.attributes.get("source"),
            "inputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                       for n, v in zip(input_names(program), program.inputs)],
            "outputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                        for n, v in zip(output_names(program), program.outputs)],
        },
        "arrays": [{"index": k, "rows": a.rows, "cols": a.cols, "regions": regions.get(k, []),
                    "devices_used": int((arrays[k][1] >= 0).sum())} for k in sorted(arrays)],
        "ramps": ramps,
    }
    return Image(manifest, arrays, printed.text, printed.resources)


def _ramp_entry(op: Operation, hw: Hardware, index: int) -> dict[str, Any]:
    """A ramp's manifest entry and the programmed level of every device of its column, from the ``cim.ramp`` op.

    The devices are the ones fuse-activation chose (its gain, range and levels);
    nothing is synthesized again here. Column layout: the step devices from word
    line 0, then every reserved calibration device (level -1 where unused).
    """
    ramp = ramp_from_op(op, hw)
    attrs = op.attributes
    if ramp.quantization == "none":
        raise CimcError("a ramp synthesized with quantization=none has ideal devices and cannot be programmed")
    step_lv = [lv for step in ramp.steps for lv in step.device_levels]
    cal = ramp.calibration_devices
    offset_lv = list(ramp.offset_levels) + [-1] * (cal - len(ramp.offset_levels))
    return {
        "id": index, "array_index": int(attrs["array"]), "bit_line": int(attrs["array_col"]),  # type: ignore[arg-type]
        "column_levels": np.array(step_lv + offset_lv, np.int16),
        **{key: attrs[key] for key in ("function", "alpha", "beta", "clip") if key in attrs},
        "bits": ramp.bits, "z_lo": ramp.transfer.z_lo, "z_hi": ramp.transfer.z_hi, "g_per_z": ramp.g_per_z,
        "gain": ramp.gain, "thresholds": ramp.thresholds.tolist(), "output_levels": ramp.levels_y.tolist(),
        "step_devices": [len(s.device_us) for s in ramp.steps],
        "offset_sign": 1 if ramp.offset_us >= 0 else -1, "calibration_rows": [len(step_lv), len(step_lv) + cal],
        "inl_lsb": float(attrs["inl_lsb"])}  # type: ignore[arg-type]


def _print_without_conductances(module: Module) -> PrintedModule:
    """Print the module as if every tile's g_pos/g_neg were gone: the image's arrays hold them."""
    saved = []
    for op in module.walk():
        if op.name == "cim.tile_mvm":
            saved.append((op, op.attributes.pop("g_pos", None), op.attributes.pop("g_neg", None)))
    sidecar = module.attributes.pop("sidecar", None)
    try:
        return print_module(module)
    finally:
        for op, g_pos, g_neg in saved:
            if g_pos is not None:
                op.attributes["g_pos"], op.attributes["g_neg"] = g_pos, g_neg  # type: ignore[assignment]
        if sidecar is not None:
            module.attributes["sidecar"] = sidecar


def load_image(path: str | Path) -> Image:
    """Read and check an image: format, version, every checksum; a bad file is a clear error."""
    path = Path(path)
    entries = read_archive(path, "image", "cimc image")
    try:
        manifest = json.loads(entries["manifest.json"])
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CimcError(f"{path} is not a cimc image: no readable manifest.json") from None
    if not isinstance(manifest, dict):
        raise CimcError(f"{path} is not a cimc image: manifest.json is not an object")
    if manifest.get("format") != FORMAT:
        raise CimcError(f"{path} is not a cimc image (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise CimcError(f"{path} is a version {manifest.get('version')} image; this cimc reads version {VERSION}")
    checksums = manifest.get("checksums", {})
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise CimcError(f"{path} is corrupt: its checksums are not a table of names and digests")
    for name, digest in checksums.items():
        if name not in entries:
            raise CimcError(f"{path} is corrupt: entry {name} is missing")
        if _sha(entries[name]) != digest:
            raise CimcError(f"{path} is corrupt: checksum mismatch in {name}")
    extra = set(entries) - set(checksums) - {"manifest.json"}
    if extra:
        raise CimcError(f"{path} is corrupt: unexpected entries {sorted(extra)}")

    check_manifest(manifest, path)

    def npy(name: str) -> np.ndarray:
        if name not in checksums:
            raise CimcError(f"{path} is corrupt: entry {name} is missing")
        return npy_from_bytes(entries[name], f"entry {name} of {path}")

    arrays = {int(info["index"]): (npy(f"arrays/{info['index']}.target_us.npy"), npy(f"arrays/{info['index']}.level.npy"))
              for info in manifest["arrays"]}
    resources = {name[len("program/"):-len(".npy")]: npy(name) for name in checksums if name.startswith("program/")}
    manifest = {k: v for k, v in manifest.items() if k != "checksums"}
    if "program.cir" not in checksums:
        raise CimcError(f"{path} is corrupt: entry program.cir is missing")
    try:
        program_text = entries["program.cir"].decode("utf-8")
    except UnicodeDecodeError:
        raise CimcError(f"{path} is corrupt: program.cir is not UTF-8 text") from None
    image = Image(manifest, arrays, program_text, resources)
    check_loaded_image(image, path)
    return image


def _tile_region(tile: Operation) -> tuple[int, slice, slice]:
    """(array, word lines, bit lines) a program tile occupies: G+ on even, G- on odd bit lines from array_col."""
    k, r, c = (int(tile.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
    r0, r1 = tile.attributes["rows"]  # type: ignore[misc]
    c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
    return k, slice(r, r + r1 - r0), slice(c, c + 2 * (c1 - c0))


def tile_levels(image: Image, tile: Operation) -> tuple[np.ndarray, np.ndarray]:
    """(level G+, level G-) of a program tile's devices, read from its array (-1: unformed)."""
    k, rows, cols = _tile_region(tile)
    level = image.device_levels(k)[rows, cols]
    return level[:, 0::2], level[:, 1::2]


def tile_weights(image: Image, tile: Operation) -> np.ndarray:
    """The weights a program tile encodes before quantization, (G+ - G-) / g_scale in float64: what ``exact`` runs."""
    k, rows, cols = _tile_region(tile)
    target = image.arrays[k][0][rows, cols]
    return (target[:, 0::2] - target[:, 1::2]) / tile.attributes["g_scale"].array  # type: ignore[union-attr]


def image_summary(image: Image) -> dict[str, Any]:
    """What ``cimc dump --json`` prints: arrays and utilization, ramps, and the program's structure."""
    program = image.program()
    counts: dict[str, int] = {}
    for op in program.walk():
        counts[op.name] = counts.get(op.name, 0) + 1
    loops = [{"location": op.location, "stages_per_step": op.attributes.get("sched.stages")}
             for op in program.walk() if op.name == "cim.loop"]
    arrays = []
    for info in image.manifest["arrays"]:
        total = info["rows"] * info["cols"]
        arrays.append({"index": info["index"], "devices_used": info["devices_used"],
                       "utilization": round(info["devices_used"] / total, 4), "regions": info["regions"]})
    return {"model": image.manifest["model"], "hardware": image.manifest["hardware"], "arrays": arrays,
            "ramps": [{k: v for k, v in r.items() if k not in ("thresholds", "output_levels")} for r in image.manifest["ramps"]],
            "program": {"ops": dict(sorted(counts.items())), "loops": loops, "graph_stages": program.attributes.get("graph_stages")}}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"model: {summary['model']['source']}"]
    for kind in ("inputs", "outputs"):
        lines.append(f"  {kind}: " + ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in summary["model"][kind]))
    a = summary["hardware"]["array"]
    lines.append(f"arrays used: {len(summary['arrays'])} of {a['count']} ({a['rows']} x {a['cols']})")
    for info in summary["arrays"]:
        lines.append(f"  array {info['index']}: {info['devices_used']} devices ({100 * info['utilization']:.0f}%)")
        for region in info["regions"]:
            if region["kind"] == "weights":
                lines.append(f"    {region['block']}[rows {region['block_rows'][0]}:{region['block_rows'][1]}, cols "
                             f"{region['block_cols'][0]}:{region['block_cols'][1]}] -> word lines {region['word_lines'][0]}:"
                             f"{region['word_lines'][1]}, bit lines {region['bit_lines'][0]}:{region['bit_lines'][1]}"
                             + (f" (shared by {len(region['shared_by'])} MVMs)" if "shared_by" in region else ""))
            else:
                lines.append(f"    ramp {region['ramp']} -> bit line {region['bit_lines'][0]}, word lines 0:{region['word_lines'][1]}")
    lines.append(f"ramps: {len(summary['ramps'])}")
    for r in summary["ramps"]:
        lines.append(f"  ramp {r['id']}: {r['function']} {r['bits']}-bit in array {r['array']}, z in [{r['z_lo']:.3g}, "
                     f"{r['z_hi']:.3g}], gain {r.get('gain', 1.0):g}, worst |INL| {r['inl_lsb']:.3f} LSB")
    p = summary["program"]
    lines.append("program: " + ", ".join(f"{n} x{c}" for n, c in p["ops"].items()))
    for loop in p["loops"]:
        lines.append(f"  loop at {loop['location']}: {loop['stages_per_step']} stages per time step")
    return "\n".join(lines) + "\n"
