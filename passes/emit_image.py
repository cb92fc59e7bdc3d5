"""emit-image: the final lowering, from a scheduled module to the content of a programming image.

It reads the module and writes nothing into it (unless asked to release each
tile's conductances once laid out, see :func:`emit_image`): each tile's conductances
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


_BATCH = 16  # tiles whose levels are computed together (a 128 x 32 batch: a 1 MB float64 buffer, in the L2 cache)


class _Layout:
    """The devices of every used array, each array's (physical rows, physical cols) levels filled tile by tile and
    ramp by ramp.

    The levels are written where the image keeps them, and saving streams them
    to the file without gathering them again. Each array is allocated when the
    first tile or ramp lands on it, not all in one buffer up front: with
    ``release``, the conductances of the tiles already laid out have then been
    freed, and the small allocations reuse their memory (one buffer would be new
    memory on top of the whole module: 36 MB for a 2-layer LSTM-1024). The
    physical size includes the spare lines (only map-defects puts anything on them).
    """

    def __init__(self, hw: Hardware, used: list[int]) -> None:
        self.hw = hw
        d = hw.device
        self.delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        self.dtype = level_dtype(d.levels)
        self.used = used
        self.arrays: dict[int, np.ndarray] = {}
        self.regions: dict[int, list[dict[str, Any]]] = {}
        self._spares_touched: set[int] = set()  # arrays where something may have been laid out on a spare line
        self._scratch: dict[tuple[int, int], np.ndarray] = {}  # (rows, width) -> a float64 buffer of _BATCH tiles
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (G+, G-, devices) of queued tiles

    def array(self, k: int) -> np.ndarray:
        lv = self.arrays.get(k)
        if lv is None:
            a = self.hw.array
            lv = self.arrays[k] = np.full((a.physical_rows, a.physical_cols), -1, self.dtype)
        return lv

    def may_touch_spares(self, k: int) -> None:
        """Array k gets devices laid out off its rows x cols (moved lines, a ramp column off the grid): its spare
        lines are then checked before the image keeps only its rows x cols."""
        self._spares_touched.add(k)

    def levels(self) -> dict[int, np.ndarray]:
        """Each used array's levels, in index order: its rows x cols when its spare lines hold nothing (a plain
        compile's image is what it was before spares existed), its physical size when a spare line is used
        (docs/image-format.md). Only the arrays where something may have reached a spare line are scanned: an
        in-order tile and a ramp inside the grid are checked to fit before they are laid out."""
        self.flush()
        a = self.hw.array
        out = {}
        for k in self.used:
            lv = self.array(k)
            spares_idle = k not in self._spares_touched or \
                ((lv[a.rows:] == -1).all() and (lv[:a.rows, a.cols:] == -1).all())
            out[k] = lv[:a.rows, :a.cols] if spares_idle else lv
        return out

    def pair_levels(self, g_pos: np.ndarray, g_neg: np.ndarray, out: np.ndarray) -> None:
        """The programmed levels of a tile's device pairs into ``out`` (rows, 2 x width): G+ of weight column j on
        column 2j, G- on 2j + 1; -1 for a device left unformed (target 0 uS, below G_min)."""
        self._compute([(g_pos, g_neg, out)])

    def program(self, k: int, rows: slice, cols: slice, g_pos: np.ndarray, g_neg: np.ndarray, what: str) -> None:
        """Program a tile's device pairs on a free region of array k (checked unused, then claimed at once, so that
        a clash with it is found); the levels are computed with the next tiles of its shape (:meth:`flush`)."""
        out = self.free(k, rows, cols, what)
        out[...] = 0  # claimed: not -1 any more
        if self._pending and (len(self._pending) == _BATCH or self._pending[0][0].shape != g_pos.shape):
            self.flush()
        self._pending.append((g_pos, g_neg, out))

    def flush(self) -> None:
        """Write the levels of every tile still queued by :meth:`program`."""
        if self._pending:
            self._compute(self._pending)
            self._pending = []

    def _compute(self, tiles: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Levels of tiles of one shape, together: clip(rint((G - G_min) / delta_g), 0, levels - 1), -1 below
        G_min / 2, in float64 whatever the type of the targets (cim_kernels forms them in float64).

        Each step runs once over a batch of tiles, in place in one float64 buffer that interleaves G+ and G- as the
        array does: numpy's per-call overhead is most of the cost of one 128 x 32 tile.
        """
        rows, width = tiles[0][0].shape
        x = self._scratch.get((rows, width))
        if x is None:
            x = self._scratch[(rows, width)] = np.empty((_BATCH, rows, width, 2))
        x = x[:len(tiles)]
        for i, (g_pos, g_neg, _) in enumerate(tiles):
            x[i, :, :, 0], x[i, :, :, 1] = g_pos, g_neg  # exact: a float32 target is a float64 value
        d = self.hw.device
        unformed = np.less(x, d.g_min_us / 2)
        np.subtract(x, d.g_min_us, out=x)
        np.divide(x, self.delta_g, out=x)
        np.rint(x, out=x)
        np.maximum(x, 0, out=x)
        np.minimum(x, d.levels - 1, out=x)
        np.copyto(x, -1, where=unformed)
        for i, (_, _, out) in enumerate(tiles):
            out[...] = x[i].reshape(rows, 2 * width)

    def devices_used(self) -> list[int]:
        """Formed devices of each used array, in index order."""
        self.flush()
        return [int(np.count_nonzero(self.array(k) >= 0)) for k in self.used]

    def free(self, k: int, rows: slice, cols: slice | int, what: str) -> np.ndarray:
        """The devices of a new region (a view), checked unused."""
        lv = self.array(k)[rows, cols]
        if np.bitwise_and.reduce(lv, axis=None) != -1:  # -1 has every bit set, any other level a bit clear
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        return lv

    def occupy(self, k: int, lines: np.ndarray, bit_lines: np.ndarray, levels: np.ndarray, what: str) -> None:
        """Program ``levels`` on the devices at word lines ``lines`` x ``bit_lines``, checked unused."""
        lv, index = self.array(k), np.ix_(lines, bit_lines)
        if (lv[index] != -1).any():
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        lv[index] = levels

    def natural_levels(self, g_pos: np.ndarray, g_neg: np.ndarray) -> np.ndarray:
        """A tile's levels in its own order (rows, 2 x width): G+ of weight column j on column 2j, G- on 2j + 1."""
        out = np.empty((g_pos.shape[0], 2 * g_pos.shape[1]), self.dtype)
        self.pair_levels(g_pos, g_neg, out)
        return out


def _arrays_used(module: Module) -> list[int]:
    return sorted({int(op.attributes["array"]) for op in module.walk()  # type: ignore[arg-type]
                   if op.name in ("cim.tile_mvm", "cim.ramp") and "array" in op.attributes})


def emit_image(module: Module, hw: Hardware, provenance: dict[str, Any], reference: bool = True,
               release: bool = False) -> Image:
    """Lay every placed tile and ramp of a scheduled module out on its physical arrays, and write its step program.

    ``reference=False`` leaves out the unquantized weights (a smaller image that
    runs at ideal and noisy fidelity only). ``release=True`` deletes each tile's
    ``g_pos`` and ``g_neg`` from the module once its levels and reference weights
    are made, for a caller that is done with the module's conductances: the module
    (twice the weight bytes in float32) and the image (levels and reference, 1.6
    times) are then never held whole at once. The module is left unverifiable.
    """
    a = hw.array
    layout = _Layout(hw, _arrays_used(module))
    extra: dict[int, dict[str, AttrValue]] = {}
    ramps: list[dict[str, Any]] = []
    weights: dict[int, np.ndarray] = {}
    programmed: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}  # (array, row, bit line, rows, cols) -> region
    tile_id = 0
    for op in module.walk():
        if op.name == "cim.tile_mvm":
            at = op.attributes
            if "array" not in at or "g_pos" not in at:
                raise CimcError("the module is not placed: an image needs the full pipeline (place, fuse-activation, schedule)")
            k, r, c = int(at["array"]), int(at["array_row"]), int(at["array_col"])  # type: ignore[arg-type]
            g_pos, g_neg = at["g_pos"].array, at["g_neg"].array  # type: ignore[union-attr]
            rows, width = g_pos.shape
            pairs, moved_rows = at.get("column_pairs"), at.get("word_lines")
            in_order = pairs is None and moved_rows is None  # else map-defects moved lines, maybe onto spares
            # An in-order tile fits its array's grid (then its lines are inside the physical array too); moved lines
            # must be distinct lines of the physical array.
            if (r + rows > a.rows or c + 2 * width > a.cols) if in_order else \
                    check_tile_lines(op.attributes, rows, width, (a.physical_rows, a.physical_cols)):
                raise CimcError(f"a tile of block '{op.attributes.get('block')}' at array {k}, row {r}, bit line {c} does not fit "
                                f"a {a.rows} x {a.cols} array: the image's hardware differs from the one compiled for")
            if not in_order:  # row i on word line word_lines[i], weight column j on bit-line pair column_pairs[j]
                layout.may_touch_spares(k)
                _, lines, pos, neg = tile_devices(op)
                bit_lines = np.empty(2 * width, np.int64)
                bit_lines[0::2], bit_lines[1::2] = pos, neg
            # What exact runs: the weights the conductances encode, in float64 as cim_kernels.encoded_weights forms
            # them, rounded once to the model's float type (cim_kernels does the same).
            exact = (np.subtract(g_pos, g_neg, dtype=np.float64) / op.attributes["g_scale"].array).astype(  # type: ignore[union-attr]
                op.results[0].type.np_dtype) if reference else None
            where = (k, r, c, rows, width)
            region = programmed.get(where)
            if region is not None:
                # Shared weights: the devices are programmed once and read by every tile placed on them.
                layout.flush()
                held = layout.array(k)[r:r + rows, c:c + 2 * width] if in_order else layout.array(k)[np.ix_(lines, bit_lines)]
                if not np.array_equal(held, layout.natural_levels(g_pos, g_neg)):
                    raise CimcError(f"internal error: tiles sharing array {k}, bit line {c} hold different conductances")
                region.setdefault("shared_by", [region["tile"]]).append(tile_id)
                if op.location and op.location not in region.setdefault("nodes", []):
                    region["nodes"].append(op.location)
                # One reference per region, unless this tile's column scales make other weights of the same devices.
                key = region["tile"] if not reference or np.array_equal(weights[region["tile"]], exact) else tile_id
            else:
                if in_order:  # written in place: G+ on the even bit lines of the tile, G- on the odd
                    layout.program(k, slice(r, r + rows), slice(c, c + 2 * width), g_pos, g_neg, f"tile {tile_id}")
                else:
                    layout.occupy(k, lines, bit_lines, layout.natural_levels(g_pos, g_neg), f"tile {tile_id}")
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
            if release:
                del op.attributes["g_pos"], op.attributes["g_neg"]
        elif op.name == "cim.ramp":
            ramp = _ramp_entry(op, hw, len(ramps))
            k, c, column_lv = ramp.pop("array_index"), ramp["bit_line"], ramp.pop("column_levels")
            if column_lv.size > a.physical_rows or not 0 <= c < a.physical_cols:
                raise CimcError(f"the ramp at array {k}, bit line {c} needs {column_lv.size} rows; the array has {a.rows}")
            if column_lv.size > a.rows or c >= a.cols:
                layout.may_touch_spares(k)
            layout.free(k, slice(0, column_lv.size), c, f"ramp {len(ramps)}")[...] = column_lv
            ramps.append({"array": k, **ramp})
            layout.regions.setdefault(k, []).append({"kind": "ramp", "ramp": len(ramps) - 1,
                                                     "word_lines": [0, int(column_lv.size)], "bit_lines": [c, c + 1]})
            extra[id(op)] = {"image.ramp": len(ramps) - 1}
    program = module_to_program(module, extra)
    hardware = hw.to_dict()
    if hw.array.limit is None:  # a chip sized to the model: record the count actually used
        hardware["array"]["count"] = max(1, 1 + max(layout.used, default=-1))  # a chip has at least one array
    used, levels, level_type = layout.devices_used(), layout.levels(), layout.dtype.name
    manifest = {
        "format": FORMAT, "version": VERSION, "op_set": OP_SET, "provenance": provenance, "hardware": hardware,
        "model": {
            "source": module.attributes.get("source"),
            "inputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                       for n, v in zip(input_names(module), module.inputs)],
            "outputs": [{"name": n, "dtype": v.type.dtype, "shape": _dims(v.type.shape)}
                        for n, v in zip(output_names(module), module.outputs)],
        },
        "arrays": [{"index": k, "rows": levels[k].shape[0], "cols": levels[k].shape[1], "level_dtype": level_type,
                    "regions": layout.regions.get(k, []), "devices_used": int(used[i])}
                   for i, k in enumerate(layout.used)],
        "ramps": ramps,
    }
    if reference:
        manifest["reference"] = {"tiles": sorted(weights), "note": REFERENCE_NOTE}
    return Image(manifest, levels, program, dict(sorted(weights.items())))


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
