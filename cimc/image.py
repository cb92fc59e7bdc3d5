"""The programming image: what a chip's programming tool would consume, in one archive (format version 3).

A ``.cimg`` file is a zip archive (stored, fixed timestamps, sorted entries,
so the same model, options and seed give the same bytes) that the standard
library and numpy read without cimc. docs/image-format.md is its reference;
in brief:

- ``manifest.json``: format and version, provenance (the model's name and
  SHA-256, the cimc version, the pipeline, the hardware's SHA-256), the
  hardware description, the ONNX inputs and outputs, every used array with
  the regions it holds, every NL-ADC ramp (recorded here only), the reference
  weights' index, the table of packed tensors and the SHA-256 of every other
  entry;
- ``data/<dtype>.npy``: one 1-D array per element type (a *blob*) holding every
  tensor of that type back to back; ``manifest.tensors`` maps each tensor's
  name to its blob, element offset and shape. The tensors are
  ``arrays/<k>.levels.npy``, the programmed level of every device of array k
  (int8, int16 only for hardware with more than 128 levels; -1 = unformed),
  ``reference/<tile>.npy``, the unquantized weights of a programmed tile in the
  model's float type (not programmed: only the ``exact`` fidelity and the error
  bounds read them; ``cimc compile --no-reference`` leaves them out), and the
  step program's ``program/<key>.npy``;
- ``program.json``: the step program in the op set ``cimc-step/1``
  (cimc/step_program.py).

Version 2 stored each tensor as its own zip entry (some 10,000 for a 2-layer
LSTM-1024), and the per-entry header, CRC, .npy header and Python round trip
were most of the time of writing and loading an image. A blob is written by
streaming its tensors into the output file, and loaded as zero-copy views of
a memory map.

This module only reads and writes images; ``cimc.passes.emit_image`` lowers a
scheduled module to one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import mmap
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cimc.collector import collector_paused
from cimc.dialects.cim import check_tile_lines
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, hardware_from_dict
from cimc.image_check import check_manifest, check_tensor_table
from cimc.ir import Module, Operation
from cimc.npz import ZIP_OPEN_ERRORS, escapes_archive, open_atomic
from cimc.step_program import OP_SET, ProgramError, StepProgram, format_program, op_counts, program_to_module, \
    validate_program

FORMAT = "cimc-image"
VERSION = 3
_EPOCH = (1980, 1, 1, 0, 0, 0)
REFERENCE_NOTE = "not programmed: the unquantized weights, for the exact fidelity and the error bounds"


def level_dtype(levels: int) -> np.dtype:
    """The integer type of device levels: int8 holds -1 (unformed) .. 127, so up to 128 levels."""
    return np.dtype(np.int8) if levels <= 128 else np.dtype(np.int16)


BLOB_PREFIX = "data/"
_ALIGN = 64  # a blob's data starts at a multiple of 64 bytes of the file: aligned views for any element type
_BLOB_TYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
               "float64")


@functools.cache
def blob_entry(dtype: np.dtype) -> str:
    """The entry holding every packed tensor of one element type: ``data/<numpy type name>.npy``."""
    return f"{BLOB_PREFIX}{np.dtype(dtype).name}.npy"


def _blob_dtype(name: str) -> np.dtype | None:
    """The little-endian element type a blob entry's name promises; None for a name that is no blob of a known type."""
    match = re.fullmatch(re.escape(BLOB_PREFIX) + r"([a-z0-9]+)\.npy", name)
    if match is None or match.group(1) not in _BLOB_TYPES:
        return None
    return np.dtype(match.group(1)).newbyteorder("<")


def _npy_header(dtype: np.dtype, count: int, start: int) -> bytes:
    """A .npy 1.0 header of a 1-D array of ``count`` elements, in the layout numpy writes, padded with spaces so that
    the data begins at a multiple of 64 bytes of the file when the header begins at byte ``start``."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (dtype.str, count)
    pad = -(start + 10 + len(text) + 1) % _ALIGN
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text.encode("latin1") + b" " * pad + b"\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def levels_entry(k: int) -> str:
    return f"arrays/{k}.levels.npy"


def reference_entry(tile: int) -> str:
    return f"reference/{tile}.npy"


@dataclass
class Image:
    """A loaded (or freshly emitted) programming image.

    ``arrays`` maps each used array's index to its device levels; ``program_data``
    is the step program (program.json and its tensors); ``reference`` maps a tile
    id to its unquantized weights (empty without them). A loaded image's arrays
    are read-only views of the file's bytes.
    """

    manifest: dict[str, Any]
    arrays: dict[int, np.ndarray]
    program_data: StepProgram
    reference: dict[int, np.ndarray] = field(default_factory=dict)
    _program: Module | None = field(default=None, repr=False, compare=False)

    @property
    def hardware(self) -> Hardware:
        return hardware_from_dict(self.manifest["hardware"], "the image's hardware description")

    def device_levels(self, k: int) -> np.ndarray:
        """The programmed level of every device of physical array k (-1: unformed, 0 uS)."""
        return self.arrays[k]

    def array_indices(self) -> list[int]:
        return sorted(self.arrays)

    def program(self) -> Module:
        """The step program as a Module (built once, directly from program.json; simulators only read it)."""
        if self._program is None:
            with collector_paused():
                self._program = program_to_module(self.program_data, self.manifest)
        return self._program

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with collector_paused():
            self._write_zip(buffer)
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        """Write the image atomically, streaming every tensor into the temporary file (no copy of the image in memory)."""
        with open_atomic(path) as f, collector_paused():
            self._write_zip(f)

    def tensors(self) -> dict[str, np.ndarray]:
        """Every packed tensor by name, in the order the blobs hold them: arrays, reference weights, program tensors."""
        out = {levels_entry(k): self.arrays[k] for k in sorted(self.arrays)}
        out.update({reference_entry(t): self.reference[t] for t in sorted(self.reference)})
        out.update({name: self.program_data.tensors[name] for name in sorted(self.program_data.tensors)})
        return out

    def _write_zip(self, out: BinaryIO) -> None:
        """Entries in name order: the blobs (each streamed in chunks, hashed as it goes), then manifest.json (which
        holds the blobs' digests and the tensor table), then program.json."""
        blobs: dict[str, list[np.ndarray]] = {}
        ends: dict[str, int] = {}
        table: dict[str, dict[str, Any]] = {}
        for name, array in self.tensors().items():
            blob = blob_entry(array.dtype)
            blobs.setdefault(blob, []).append(array)
            table[name] = {"blob": blob, "offset": ends.get(blob, 0), "shape": list(array.shape)}
            ends[blob] = ends.get(blob, 0) + array.size
        program = _json_bytes(self.program_data.document)
        checksums = {"program.json": _sha(program)}
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            for blob in sorted(blobs):
                checksums[blob] = _write_blob(zf, out, blob, blobs[blob])
            manifest = _json_bytes(dict(self.manifest, tensors=table, checksums=dict(sorted(checksums.items()))))
            for name, data in (("manifest.json", manifest), ("program.json", program)):
                zf.writestr(_entry_info(name), data)


_encode_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False,
                                # a manifest and a program are trees of dicts and lists (a tenth of the encoding time)
                                check_circular=False).encode


def _json_bytes(document: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, no NaN."""
    return _encode_json(document).encode("utf-8")


def _entry_info(name: str, size: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.file_size = size
    return info


def _write_blob(zf: zipfile.ZipFile, out: BinaryIO, name: str, members: list[np.ndarray]) -> str:
    """Stream one blob (a .npy header, then each tensor's bytes in order) into the archive; its SHA-256."""
    dtype = _blob_dtype(name)
    assert dtype is not None, name
    count = sum(a.size for a in members)
    size_guess = count * dtype.itemsize + 2 * _ALIGN
    zip64 = size_guess * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule; its local header then has a 20-byte extra
    header = _npy_header(dtype, count, out.tell() + 30 + len(name.encode()) + (20 if zip64 else 0))
    digest = hashlib.sha256(header)
    with zf.open(_entry_info(name, len(header) + count * dtype.itemsize), "w", force_zip64=zip64) as f:
        f.write(header)
        for chunk in _chunks(members, dtype):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


_CHUNK_BYTES = 4 << 20  # a few calls per megabyte, and a buffer that stays small beside the image


def _chunks(members: list[np.ndarray], dtype: np.dtype) -> Iterator[memoryview]:
    """The members' elements back to back as ``dtype``, in chunks of at most _CHUNK_BYTES bytes, each a view of one
    reused buffer (valid until the next chunk is asked for).

    A tensor is copied once, into its place in a chunk (the levels of an array with spare lines are a strided view;
    a big-endian tensor is converted on the way), and one larger than the room left is split across chunks: the
    thousands of small tensors of a large model cost a few calls per chunk, not per tensor.
    """
    per = max(1, _CHUNK_BYTES // dtype.itemsize)
    buffer, fill = np.empty(min(per, sum(a.size for a in members)), dtype), 0
    for array in members:
        n, start, flat = array.size, 0, None
        while start < n:
            take = min(n - start, per - fill)
            if take == n:  # the whole tensor, copied in its shape
                buffer[fill:fill + n].reshape(array.shape)[...] = array
            else:  # split across chunks (reshape copies only a strided tensor)
                flat = array.reshape(-1) if flat is None else flat
                buffer[fill:fill + take] = flat[start:start + take]
            fill, start = fill + take, start + take
            if fill == per:
                yield memoryview(buffer).cast("B")
                fill = 0
    if fill:
        yield memoryview(buffer[:fill]).cast("B")


def load_image(path: str | Path) -> Image:
    """Read and check an image: format, version, every checksum, the program against its op set; a bad file is a
    clear error."""
    with collector_paused():
        return _load(Path(path))


def _load(path: Path) -> Image:
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CimcError(f"cannot read {path}: no such file") from None
    except ZIP_OPEN_ERRORS as e:
        raise CimcError(f"{path} is not a cimc image (truncated or not a zip archive: {e})") from None
    with zf:
        try:
            entries = _entries(zf, path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CimcError(f"{path} is corrupt: {e}") from None
    try:
        manifest = json.loads(bytes(entries["manifest.json"]))
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CimcError(f"{path} is not a cimc image: no readable manifest.json") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CimcError(f"{path} is not a cimc image (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("version")
    if version != VERSION:
        hint = "; recompile the model with this cimc" if isinstance(version, int) and version < VERSION else ""
        raise CimcError(f"{path} is a version {version} image; this cimc reads version {VERSION}{hint}")
    checksums = manifest.pop("checksums", None)
    if not isinstance(checksums, dict):
        raise CimcError(f"{path} is corrupt: the manifest has no checksums")
    for name, digest in checksums.items():
        if name not in entries:
            raise CimcError(f"{path} is corrupt: entry {name} is missing")
        if _sha(entries[name]) != digest:
            raise CimcError(f"{path} is corrupt: checksum mismatch in {name}")
    extra = set(entries) - set(checksums) - {"manifest.json"}
    if extra:
        raise CimcError(f"{path} is corrupt: unexpected entries {sorted(extra)}")
    check_manifest(manifest, path)
    tensors = _unpack(manifest.pop("tensors", None), entries, path)
    if "program.json" not in entries:
        raise CimcError(f"{path} is corrupt: entry program.json is missing")
    try:
        return _from_entries(manifest, tensors, entries["program.json"])
    except ProgramError as e:
        raise CimcError(f"{path} is not a valid image: {e.message}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, struct.error, RecursionError) as e:
        raise CimcError(f"{path} is not a valid image: {type(e).__name__}: {e}") from None


def _mapped(path: Path) -> memoryview:
    """The file's bytes as a read-only memory map (pages are read on first use and shared with the page cache, so a
    loaded image costs no copy); an empty file, which cannot be mapped, as no bytes."""
    with open(path, "rb") as f:
        try:
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except ValueError:
            return memoryview(b"")


def _entries(zf: zipfile.ZipFile, path: Path) -> dict[str, memoryview]:
    """Every entry's bytes, as views into a memory map of the file.

    Every entry of an image is stored (uncompressed), so each is sliced out of
    the file directly; a compressed or encrypted entry is refused (no
    decompression bomb can be read). Only manifest.json's CRC is checked here:
    the manifest's SHA-256 covers every other entry.
    """
    data = _mapped(path)
    out: dict[str, memoryview] = {}
    for info in zf.infolist():
        if info.filename in out:
            raise zipfile.BadZipFile(f"entry {info.filename} appears twice")
        if escapes_archive(info.filename):
            raise zipfile.BadZipFile(f"entry '{info.filename}' escapes the archive")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise zipfile.BadZipFile(f"entry {info.filename} is compressed or encrypted; an image stores every entry")
        offset = info.header_offset
        header = bytes(data[offset:offset + 30])
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header of {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = offset + 30 + name_len + extra_len
        if start + info.file_size > len(data):
            raise zipfile.BadZipFile(f"entry {info.filename} runs past the end of the file")
        out[info.filename] = data[start:start + info.file_size]
    manifest = out.get("manifest.json")
    if manifest is not None and zlib.crc32(manifest) != zf.getinfo("manifest.json").CRC:
        raise zipfile.BadZipFile("bad CRC-32 for manifest.json")
    return out


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}\s*")


def read_npy(data: memoryview | bytes) -> np.ndarray:
    """An .npy array over ``data`` without a copy (read-only); the headers numpy writes for plain arrays are parsed
    directly, anything else by numpy's reader (which refuses pickled objects)."""
    view = memoryview(data)
    if view.nbytes < 12 or view[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy array")
    wide = view[6] >= 2
    start = 12 if wide else 10
    (length,) = struct.unpack("<I" if wide else "<H", view[8:start])
    match = _NPY_HEADER.fullmatch(bytes(view[start:start + length]))
    if match is None:
        return np.lib.format.read_array(io.BytesIO(bytes(view)), allow_pickle=False)
    dtype = np.dtype(match.group(1).decode())
    shape = tuple(int(d) for d in match.group(2).split(b",") if d.strip())
    body = view[start + length:]
    if body.nbytes != dtype.itemsize * math.prod(shape):
        raise ValueError(f"an .npy array of {shape} {dtype} holds {body.nbytes} bytes")
    return np.frombuffer(body, dtype).reshape(shape)


def _unpack(table: object, entries: dict[str, memoryview], path: Path) -> dict[str, np.ndarray]:
    """Every packed tensor, as a read-only view of its blob, once the table is proven sound against the blobs."""
    blobs: dict[str, np.ndarray] = {}
    for name, data in entries.items():
        if name in ("manifest.json", "program.json"):
            continue
        dtype = _blob_dtype(name)
        if dtype is None:
            raise CimcError(f"{path} is corrupt: entry {name} is neither a manifest, a program nor a data/<type>.npy blob")
        try:
            blob = read_npy(data)
        except ValueError as e:
            raise CimcError(f"{path} is corrupt: {name} is not a readable .npy array ({e})") from None
        if blob.dtype != dtype or blob.ndim != 1:
            raise CimcError(f"{path} is corrupt: {name} holds {blob.dtype}{list(blob.shape)}; a blob is a 1-D array of "
                            f"the type its name says ({dtype})")
        blobs[name] = blob
    check_tensor_table(table, {name: blob.size for name, blob in blobs.items()}, path)
    assert isinstance(table, dict)
    return {name: blobs[t["blob"]][t["offset"]:t["offset"] + math.prod(t["shape"])].reshape(t["shape"])
            for name, t in table.items()}


def _from_entries(manifest: dict[str, Any], tensors: dict[str, np.ndarray], program_json: memoryview) -> Image:
    def npy(name: str) -> np.ndarray:
        if name not in tensors:
            raise ProgramError(f"tensor {name} is missing")
        return tensors.pop(name)

    if manifest.get("op_set") != OP_SET:
        raise ProgramError(f"the program's op set is {manifest.get('op_set')!r}; this cimc reads {OP_SET}")
    missing = [k for k in ("provenance", "hardware", "model", "arrays", "ramps") if k not in manifest]
    provenance = manifest.get("provenance", {})
    if missing or not isinstance(provenance, dict) or not isinstance(provenance.get("model"), dict) or \
            not {"name", "sha256"} <= set(provenance["model"]):
        raise ProgramError(f"the manifest lacks {', '.join(missing) or 'the model in its provenance'}")
    hw = hardware_from_dict(manifest["hardware"], "the image's hardware description")
    dtype = level_dtype(hw.device.levels)
    arrays: dict[int, np.ndarray] = {}
    for info in manifest["arrays"]:
        k = int(info["index"])
        levels = npy(levels_entry(k))
        if levels.dtype != dtype or levels.shape != (info["rows"], info["cols"]) or \
                levels.min(initial=-1) < -1 or levels.max(initial=-1) >= hw.device.levels:
            raise ProgramError(f"{levels_entry(k)} must hold {dtype} levels -1..{hw.device.levels - 1} of a "
                               f"{info['rows']} x {info['cols']} array, got {levels.dtype}{list(levels.shape)}")
        arrays[k] = levels
    reference = {int(t): npy(reference_entry(int(t))) for t in manifest.get("reference", {}).get("tiles", [])}
    program_tensors = {name: npy(name) for name in sorted(tensors) if name.startswith("program/")}
    if tensors:
        raise ProgramError(f"tensors that are no array's, tile's or program's: {sorted(tensors)[:5]}")
    try:
        document = json.loads(bytes(program_json))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProgramError(f"program.json is not JSON: {e}") from None
    program = StepProgram(document, program_tensors)
    validate_program(program, manifest)
    _check_reference_shapes(program, reference, arrays)
    return Image(manifest, arrays, program, reference)


def _check_reference_shapes(program: StepProgram, reference: dict[int, np.ndarray], arrays: dict[int, np.ndarray]) -> None:
    """Reference weights of a tile's shape; a tile's word lines and bit-line pairs distinct and inside its array."""
    for op in program.ops():
        attrs = op.get("attrs", {})
        if op["op"] == "read" and ("column_pairs" in attrs or "word_lines" in attrs):
            lines = dict(attrs, array_row=attrs.get("word_line", 0), array_col=attrs.get("bit_line", 0))
            shape = arrays[attrs["array"]].shape if attrs.get("array") in arrays else None
            problem = check_tile_lines(lines, attrs["rows"][1] - attrs["rows"][0], attrs["cols"][1] - attrs["cols"][0], shape)
            if problem:
                raise ProgramError(f"tile {attrs['tile']}: {problem}")
        if op["op"] == "read" and "reference" in attrs:
            (r0, r1), (c0, c1) = attrs["rows"], attrs["cols"]
            weights = reference[attrs["reference"]]
            if weights.shape != (r1 - r0, c1 - c0) or weights.dtype.kind != "f":
                raise ProgramError(f"{reference_entry(attrs['reference'])} is {weights.dtype}{list(weights.shape)}; "
                                   f"tile {attrs['tile']} reads {r1 - r0} x {c1 - c0} float weights")


def tile_devices(tile: Operation) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(array, word lines, G+ bit lines, G- bit lines) of a tile's rows and weight columns, in their logical order.

    Row i of the tile is driven on word line ``word_lines[i]`` (array_row + i
    when absent) and weight column j sits on the bit-line pair q_j of the tile
    (G+ on bit line array_col + 2 q_j, G- on the next), q_j = ``column_pairs[j]``
    (j when absent). map-defects sets both, to move rows and columns onto
    healthy lines, spare ones included (docs/faults.md). The one accessor for
    every reader of a tile's devices (image, simulator, error bound): a reader
    that gathers G[word_lines][:, bit lines] feeds input i to the word line
    that holds row i.
    """
    k, r, c = (int(tile.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
    r0, r1 = tile.attributes["rows"]  # type: ignore[misc]
    c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
    pairs, lines = tile.attributes.get("column_pairs"), tile.attributes.get("word_lines")
    q = np.arange(int(c1) - int(c0)) if pairs is None else np.asarray(pairs, np.int64)  # type: ignore[arg-type]
    rows = r + np.arange(int(r1) - int(r0)) if lines is None else np.asarray(lines, np.int64)  # type: ignore[arg-type]
    return k, rows, c + 2 * q, c + 2 * q + 1


def tile_levels(image: Image, tile: Operation) -> tuple[np.ndarray, np.ndarray]:
    """(level G+, level G-) of a program tile's devices, read from its array (-1: unformed)."""
    k, rows, pos, neg = tile_devices(tile)
    level = image.device_levels(k)[rows]
    return level[:, pos], level[:, neg]



def tile_weights(image: Image, tile: Operation) -> np.ndarray:
    """The weights a program tile encodes before quantization, in float64: what ``exact`` runs.

    They are the image's reference weights ((G+ - G-) / g_scale of the compiled
    targets, rounded once to the model's float type, which changes no weight the
    model has: the targets encode its weights times a power of two).
    """
    key = tile.attributes.get("image.weights")
    if key is None or int(key) not in image.reference:  # type: ignore[arg-type]
        raise CimcError("this image has no reference weights (compiled with --no-reference): the exact fidelity and the "
                        "error bounds need them; run at ideal or noisy fidelity, or compile without --no-reference")
    return image.reference[int(key)].astype(np.float64)  # type: ignore[arg-type]


def image_sizes(image: Image) -> dict[str, int]:
    """Bytes of the device levels and of the reference weights (their share of the blobs), and the number of weights
    programmed."""
    weights = sum((r["block_rows"][1] - r["block_rows"][0]) * (r["block_cols"][1] - r["block_cols"][0])
                  for a in image.manifest["arrays"] for r in a["regions"] if r["kind"] == "weights")
    return {"weights": int(weights), "device_bytes": sum(a.nbytes for a in image.arrays.values()),
            "reference_bytes": sum(w.nbytes for w in image.reference.values())}


def _loops(ops: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for op in ops:
        if op["op"] == "loop":
            yield {"location": op.get("loc"), "stages_per_step": op.get("attrs", {}).get("stages")}
            yield from _loops(op["body"]["ops"])


def image_summary(image: Image) -> dict[str, Any]:
    """What ``cimc dump --json`` prints: provenance, arrays and utilization, ramps, sizes, and the step program."""
    arrays = []
    for info in image.manifest["arrays"]:
        total = info["rows"] * info["cols"]
        arrays.append({"index": info["index"], "devices_used": info["devices_used"],
                       "utilization": round(info["devices_used"] / total, 4), "regions": info["regions"]})
    program = image.program_data
    return {"model": image.manifest["model"], "provenance": image.manifest["provenance"],
            "hardware": image.manifest["hardware"], "arrays": arrays, "sizes": image_sizes(image),
            "ramps": [{k: v for k, v in r.items() if k not in ("thresholds", "output_levels")} for r in image.manifest["ramps"]],
            "program": {"op_set": program.document["format"], "ops": op_counts(program),
                        "loops": list(_loops(program.document["ops"])),
                        "graph_stages": program.document.get("metadata", {}).get("graph_stages"),
                        "listing": format_program(program).splitlines()}}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"model: {summary['model']['source']}"]
    for kind in ("inputs", "outputs"):
        lines.append(f"  {kind}: " + ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in summary["model"][kind]))
    p = summary["provenance"]
    lines.append(f"compiled from {p['model']['name']} (sha256 {str(p['model']['sha256'])[:16]}...) by cimc "
                 f"{p['cimc_version']}")
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
    s = summary["sizes"]
    per = max(s["weights"], 1)
    lines.append(f"size: {s['weights']} weights; devices {s['device_bytes']} B ({s['device_bytes'] / per:.2f} B/weight), "
                 f"reference weights {s['reference_bytes']} B ({s['reference_bytes'] / per:.2f} B/weight)")
    lines.append(f"ramps: {len(summary['ramps'])}")
    for r in summary["ramps"]:
        lines.append(f"  ramp {r['id']}: {r['function']} {r['bits']}-bit in array {r['array']}, z in [{r['z_lo']:.3g}, "
                     f"{r['z_hi']:.3g}], gain {r.get('gain', 1.0):g}, worst |INL| {r['inl_lsb']:.3f} LSB")
    prog = summary["program"]
    lines.append(f"program ({prog['op_set']}): " + ", ".join(f"{n} x{c}" for n, c in prog["ops"].items()))
    for loop in prog["loops"]:
        lines.append(f"  loop at {loop['location']}: {loop['stages_per_step']} stages per time step")
    lines.extend(prog["listing"])
    return "\n".join(lines) + "\n"
