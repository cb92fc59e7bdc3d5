"""emit-image: the final lowering, from a scheduled module to the content of a programming image.

It reads the module and writes nothing into it: each tile's conductances
become device levels on its array (G+ on bit line c + 2j, G- on c + 2j + 1),
each ``cim.ramp`` its column of step and calibration devices and one manifest
entry, each programmed tile its reference weights, and the ops become the step
program (cimc/step_program.py), with the tile and ramp numbers the image
assigns given to the program, not to the module. It is not a registered pass,
because it produces an image rather than a module; the driver
(``cimc.compiler.build_image``) calls it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cimc.attributes import AttrValue
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.dialects.cim import check_tile_lines
from cimc.image import FORMAT, REFERENCE_NOTE, VERSION, Image, level_dtype, reference_entry, tile_devices
from cimc.interpreter import input_names, output_names
from cimc.ir import Module, Operation
from cimc.ramp import ramp_from_op
from cimc.step_program import OP_SET, module_to_program


def _dims(shape: tuple) -> list[int | str | None]:
    return [d if isinstance(d, (int, str)) or d is None else str(d) for d in shape]


class _Layout:
    """The devices of every used array, filled tile by tile and ramp by ramp."""

    def __init__(self, hw: Hardware) -> None:
        self.hw = hw
        d = hw.device
        self.delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        self.dtype = level_dtype(d.levels)
        self.levels: dict[int, np.ndarray] = {}
        self.regions: dict[int, list[dict[str, Any]]] = {}

    def array(self, k: int) -> np.ndarray:
        if k not in self.levels:
            self.levels[k] = np.full((self.hw.array.physical_rows, self.hw.array.physical_cols), -1, self.dtype)
        return self.levels[k]

    def crop_unused_spares(self) -> None:
        """An array whose spare lines hold nothing is stored as its rows x cols (a plain compile's image is what it
        was before spares existed); one that uses a spare line keeps its physical size (docs/image-format.md)."""
        a = self.hw.array
        for k, lv in self.levels.items():
            if (lv[a.rows:] == -1).all() and (lv[:, a.cols:] == -1).all():
                self.levels[k] = np.ascontiguousarray(lv[:a.rows, :a.cols])

    def level_of(self, g: np.ndarray) -> np.ndarray:
        """Programmed level of each device; -1 for a device left unformed (target 0 uS, below G_min)."""
        d = self.hw.device
        levels = np.clip(np.rint((g - d.g_min_us) / self.delta_g), 0, d.levels - 1).astype(self.dtype)
        return np.where(g < d.g_min_us / 2, self.dtype.type(-1), levels)

    def occupy(self, k: int, rows: slice | np.ndarray, cols: slice | int | np.ndarray, levels: np.ndarray,
               what: str) -> None:
        lv = self.array(k)
        index = np.ix_(rows, cols) if isinstance(rows, np.ndarray) else (rows, cols)
        if (lv[index] != -1).any():
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        lv[index] = levels


def emit_image(module: Module, hw: Hardware, provenance: dict[str, Any], reference: bool = True) -> Image:
    """Lay every placed tile and ramp of a scheduled module out on its physical arrays, and write its step program.

    ``reference=False`` leaves out the unquantized weights (a smaller image that
    runs at ideal and noisy fidelity only).
    """
    a = hw.array
    layout = _Layout(hw)
    extra: dict[int, dict[str, AttrValue]] = {}
    ramps: list[dict[str, Any]] = []
    weights: dict[int, np.ndarray] = {}
    programmed: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}  # (array, row, bit line, rows, cols) -> region
    tile_id = 0
    for op in module.walk():
        if op.name == "cim.tile_mvm":
            if "array" not in op.attributes or "g_pos" not in op.attributes:
                raise CimcError("the module is not placed: an image needs the full pipeline (place, fuse-activation, schedule)")
            k, r, c = (int(op.attributes[n]) for n in ("array", "array_row", "array_col"))  # type: ignore[arg-type]
            # float64, as cim_kernels.encoded_weights forms them (G is float32 for float32 weights).
            g_pos, g_neg = (op.attributes[n].array.astype(np.float64) for n in ("g_pos", "g_neg"))  # type: ignore[union-attr]
            rows, width = g_pos.shape
            pairs, moved_rows = op.attributes.get("column_pairs"), op.attributes.get("word_lines")
            spares = pairs is not None or moved_rows is not None  # map-defects may use the spare lines
            if (r + rows > a.rows or c + 2 * width > a.cols) and not spares or \
                    check_tile_lines(op.attributes, rows, width, (a.physical_rows, a.physical_cols)):
                raise CimcError(f"a tile of block '{op.attributes.get('block')}' at array {k}, row {r}, bit line {c} does not fit "
                                f"a {a.rows} x {a.cols} array: the image's hardware differs from the one compiled for")
            # Row i on word line word_lines[i], weight column j on bit-line pair q_j (map-defects; in order when absent).
            _, lines, pos, neg = tile_devices(op)
            bit_lines = np.empty(2 * width, np.int64)
            bit_lines[0::2], bit_lines[1::2] = pos, neg
            interleaved = np.empty((rows, 2 * width), layout.dtype)
            interleaved[:, 0::2], interleaved[:, 1::2] = layout.level_of(g_pos), layout.level_of(g_neg)
            # What exact runs: the weights the conductances encode, once in the model's float type (cim_kernels does the same).
            exact = ((g_pos - g_neg) / op.attributes["g_scale"].array).astype(op.results[0].type.np_dtype) \
                if reference else None  # type: ignore[union-attr]
            where = (k, r, c, rows, width)
            region = programmed.get(where)
            if region is not None:
                # Shared weights: the devices are programmed once and read by every tile placed on them.
                if not np.array_equal(layout.array(k)[np.ix_(lines, bit_lines)], interleaved):
                    raise CimcError(f"internal error: tiles sharing array {k}, bit line {c} hold different conductances")
                region.setdefault("shared_by", [region["tile"]]).append(tile_id)
                if op.location and op.location not in region.setdefault("nodes", []):
                    region["nodes"].append(op.location)
                # One reference per region, unless this tile's column scales make other weights of the same devices.
                key = region["tile"] if not reference or np.array_equal(weights[region["tile"]], exact) else tile_id
            else:
                layout.occupy(k, lines, bit_lines, interleaved, f"tile {tile_id}")
                r0, r1 = op.attributes["rows"]  # type: ignore[misc]
                c0, c1 = op.attributes["cols"]  # type: ignore[misc]
                region = {"kind": "weights", "tile": tile_id, "block": op.attributes.get("block"),
                          "block_rows": [r0, r1], "block_cols": [c0, c1],
                          "word_lines": [r, r + rows], "bit_lines": [c, c + 2 * width]}
                if pairs is not None:
                    region["column_pairs"] = [int(v) for v in pairs]  # type: ignore[union-attr]
                if moved_rows is not None:
                    region["row_lines"] = [int(v) for v in moved_rows]  # type: ignore[union-attr]
                if "share" in op.attributes and op.location:
                    region["nodes"] = [op.location]
                if reference:
                    region["reference"] = reference_entry(tile_id)
                programmed[where] = region
                layout.regions.setdefault(k, []).append(region)
                key = tile_id
            if reference:
                weights.setdefault(key, exact)
            extra[id(op)] = {"image.tile": tile_id, **({"image.weights": key} if reference else {})}
            tile_id += 1
        elif op.name == "cim.ramp":
            ramp = _ramp_entry(op, hw, len(ramps))
            k, c, column_lv = ramp.pop("array_index"), ramp["bit_line"], ramp.pop("column_levels")
            if column_lv.size > a.physical_rows or not 0 <= c < a.physical_cols:
                raise CimcError(f"the ramp at array {k}, bit line {c} needs {column_lv.size} rows; the array has {a.rows}")
            layout.occupy(k, slice(0, column_lv.size), c, column_lv.astype(layout.dtype), f"ramp {len(ramps)}")
            ramps.append({"array": k, **ramp})
            layout.regions.setdefault(k, []).append({"kind": "ramp", "ramp": len(ramps) - 1,
                                                     "word_lines": [0, int(column_lv.size)], "bit_lines": [c, c + 1]})
            extra[id(op)] = {"image.ramp": len(ramps) - 1}
    layout.crop_unused_spares()
    program = module_to_program(module, extra)
    hardware = hw.to_dict()
    if hw.array.limit is None:  # a chip sized to the model: record the count actually used
        hardware["array"]["count"] = max(1, 1 + max(layout.levels, default=-1))  # a chip has at least one array
    manifest = {
        "format": FORMAT, "version": VERSION, "op_set": OP_SET, "provenance": provenance, "hardware": hardware,
        "model": {
            "source": module.attributes.get("source"),
            "inputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                       for n, v in zip(input_names(module), module.inputs)],
            "outputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                        for n, v in zip(output_names(module), module.outputs)],
        },
        "arrays": [{"index": k, "rows": layout.levels[k].shape[0], "cols": layout.levels[k].shape[1], "level_dtype": layout.dtype.name,
                    "regions": layout.regions.get(k, []), "devices_used": int((layout.levels[k] >= 0).sum())}
                   for k in sorted(layout.levels)],
        "ramps": ramps,
    }
    if reference:
        manifest["reference"] = {"tiles": sorted(weights), "note": REFERENCE_NOTE}
    return Image(manifest, dict(sorted(layout.levels.items())), program, dict(sorted(weights.items())))


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
