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


class _Batch:
    """Tiles of one shape and model type queued for their levels (and reference weights): their conductances copied
    on arrival into the batch's float64 buffer, so that a queued tile keeps no conductances of the module alive (a
    tile is a window of a whole column chunk), with where each tile's levels go, on which array, and its tile id."""

    def __init__(self, rows: int, width: int, dtype: np.dtype, reference: bool) -> None:
        self.targets = np.empty((_BATCH, rows, width, 2))  # G+ and G- interleaved as on the array, then the levels
        self.scales = np.empty((_BATCH, 1, width)) if reference else None  # the column scales
        self.dtype = dtype
        self.tiles: list[tuple[np.ndarray, int, int]] = []  # (levels out, array, tile id)

    def add(self, g_pos: np.ndarray, g_neg: np.ndarray, scale: np.ndarray | None, levels: np.ndarray, k: int,
            tile: int) -> None:
        i = len(self.tiles)
        self.targets[i, :, :, 0], self.targets[i, :, :, 1] = g_pos, g_neg  # exact: a float32 target is a float64 value
        if self.scales is not None:
            self.scales[i, 0] = scale
        self.tiles.append((levels, k, tile))


class _Layout:
    """The devices of every used array, each array's (physical rows, physical cols) levels filled tile by tile and
    ramp by ramp, and the reference weights of the tiles laid out.

    The levels are written where the image keeps them, and saving streams them
    to the file without gathering them again. Each array is allocated when the
    first tile or ramp lands on it, not all in one buffer up front: with
    ``release``, the conductances of the tiles already laid out have then been
    freed, and the small allocations reuse their memory (one buffer would be new
    memory on top of the whole module: 36 MB for a 2-layer LSTM-1024). The
    physical size includes the spare lines (only map-defects puts anything on them).
    Each array's formed devices are counted as its levels are written, not by a
    second pass over them.
    """

    def __init__(self, hw: Hardware, used: list[int]) -> None:
        self.hw = hw
        d = hw.device
        self.delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        self.dtype = level_dtype(d.levels)
        self.used = used
        self.arrays: dict[int, np.ndarray] = {}
        self.regions: dict[int, list[dict[str, Any]]] = {}
        self.reference: dict[int, np.ndarray] = {}  # tile id -> its reference weights, as :meth:`flush` makes them
        self._formed: dict[int, int] = {}  # array -> formed devices laid out on it
        self._spares_touched: set[int] = set()  # arrays where something may have been laid out on a spare line
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None  # see _buffers
        self._pending: dict[tuple[Any, ...], _Batch] = {}  # (shape, dtype, with reference) -> its queued tiles
        self._batches: dict[tuple[Any, ...], _Batch] = {}  # the empty batch of each kind, for its next tiles

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

    def program(self, k: int, rows: slice, cols: slice, g_pos: np.ndarray, g_neg: np.ndarray,
                scale: np.ndarray | None, dtype: np.dtype, tile: int, what: str) -> None:
        """Program a tile's device pairs on a free region of array k (checked unused, then claimed at once, so that
        a clash with it is found); its levels, and with column scales ``scale`` its reference weights of type
        ``dtype`` (``reference[tile]``), are computed with the next tiles of its shape and type (:meth:`flush`)."""
        out = self.free(k, rows, cols, what)
        out[...] = 0  # claimed: not -1 any more
        kind = (g_pos.shape, dtype, scale is not None)
        batch = self._pending.get(kind)
        if batch is None:
            batch = self._pending[kind] = self._batches.get(kind) or _Batch(*g_pos.shape, dtype, scale is not None)
        batch.add(g_pos, g_neg, scale, out, k, tile)
        if len(batch.tiles) == _BATCH:
            self._write(kind)

    def flush(self) -> None:
        """Write the levels and reference weights of every tile still queued by :meth:`program`."""
        for kind in list(self._pending):
            self._write(kind)

    def _write(self, kind: tuple[Any, ...]) -> None:
        batch = self._pending.pop(kind)
        weights, formed = self._compute(batch)
        for (_, k, tile), tile_weights, tile_formed in zip(batch.tiles, weights, formed):
            self._formed[k] = self._formed.get(k, 0) + tile_formed
            if tile_weights is not None:
                self.reference[tile] = tile_weights
        batch.tiles = []
        self._batches[kind] = batch  # its buffers serve the next tiles of its kind

    def _compute(self, batch: _Batch) -> tuple[list[np.ndarray | None], list[int]]:
        """Levels of a batch's tiles, together, into each tile's levels: clip(rint((G - G_min) / delta_g), 0,
        levels - 1), -1 below G_min / 2, in float64 whatever the type of the targets (cim_kernels forms them in
        float64); with column scales each tile's reference weights (else None), and each tile's formed devices,
        in the tiles' order.

        The reference weights are what exact runs: the weights the conductances
        encode, (G+ - G-) / column scale in float64 as cim_kernels.encoded_weights
        forms them, rounded once to the model's float type (cim_kernels does the
        same). Each step runs once over the batch, in place in its float64 buffer
        that interleaves G+ and G- as the array does: numpy's per-call overhead is
        most of the cost of one 128 x 32 tile. A batch's reference weights are one
        array of the model's type (no float64 array larger than a batch), each
        tile's a view of it.
        """
        n = len(batch.tiles)
        _, rows, width, _ = batch.targets.shape
        x = batch.targets[:n]
        unformed, difference = self._buffers(n, rows, width)
        weights: list[np.ndarray | None] = [None] * n
        if batch.scales is not None:
            np.subtract(x[..., 0], x[..., 1], out=difference)
            # the quotient in float64, rounded once to the model's type as it is stored (astype's rounding)
            weights = list(np.divide(difference, batch.scales[:n], out=np.empty((n, rows, width), batch.dtype)))
        d = self.hw.device
        np.less(x, d.g_min_us / 2, out=unformed)
        np.subtract(x, d.g_min_us, out=x)
        np.divide(x, self.delta_g, out=x)
        np.rint(x, out=x)
        np.clip(x, 0, d.levels - 1, out=x)
        np.copyto(x, -1, where=unformed)
        formed = []
        for i, (levels, _, _) in enumerate(batch.tiles):
            levels[...] = x[i].reshape(rows, 2 * width)
            formed.append(2 * rows * width - int(np.count_nonzero(unformed[i])))
        return weights, formed

    def _buffers(self, n: int, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The unformed mask and G+ - G- buffers of n tiles of rows x width: views of one pair of flat buffers,
        grown to the largest batch so far (every kind of tile shares them)."""
        size = n * rows * width
        if self._scratch is None or self._scratch[1].size < size:
            full = max(_BATCH * rows * width, 0 if self._scratch is None else self._scratch[1].size)
            self._scratch = (np.empty(2 * full, bool), np.empty(full))
        unformed, difference = self._scratch
        return unformed[:2 * size].reshape(n, rows, width, 2), difference[:size].reshape(n, rows, width)

    def devices_used(self) -> list[int]:
        """Formed devices of each used array, in index order."""
        self.flush()
        return [self._formed.get(k, 0) for k in self.used]

    def free(self, k: int, rows: slice, cols: slice | int, what: str) -> np.ndarray:
        """The devices of a new region (a view), checked unused."""
        lv = self.array(k)[rows, cols]
        if np.bitwise_and.reduce(lv, axis=None) != -1:  # -1 has every bit set, any other level a bit clear
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        return lv

    def place_column(self, k: int, col: int, levels: np.ndarray, what: str) -> None:
        """Program ``levels`` (a ramp's) down column ``col`` of array k from word line 0, checked unused."""
        self.free(k, slice(0, levels.size), col, what)[...] = levels
        self._formed[k] = self._formed.get(k, 0) + int(np.count_nonzero(levels >= 0))

    def occupy(self, k: int, lines: np.ndarray, bit_lines: np.ndarray, levels: np.ndarray, what: str) -> None:
        """Program ``levels`` on the devices at word lines ``lines`` x ``bit_lines``, checked unused."""
        lv, index = self.array(k), np.ix_(lines, bit_lines)
        if (lv[index] != -1).any():
            raise CimcError(f"internal placement clash in array {k} while laying out {what}")
        lv[index] = levels
        self._formed[k] = self._formed.get(k, 0) + int(np.count_nonzero(levels >= 0))

    def natural(self, g_pos: np.ndarray, g_neg: np.ndarray, scale: np.ndarray | None = None,
                dtype: np.dtype = np.dtype(np.float32)) -> tuple[np.ndarray, np.ndarray | None]:
        """A tile's levels in its own order (rows, 2 x width: G+ of weight column j on column 2j, G- on 2j + 1),
        and with column scales its reference weights, computed now and laid out nowhere."""
        out = np.empty((g_pos.shape[0], 2 * g_pos.shape[1]), self.dtype)
        batch = _Batch(*g_pos.shape, dtype, scale is not None)
        batch.add(g_pos, g_neg, scale, out, -1, -1)  # no array, no tile id: laid out nowhere
        return out, self._compute(batch)[0][0]


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
    weights = layout.reference  # tile id -> reference weights: the layout's, and a shared tile's of other scales
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
            scale = at["g_scale"].array if reference else None  # type: ignore[union-attr]
            dtype = op.results[0].type.np_dtype
            where = (k, r, c, rows, width)
            region = programmed.get(where)
            if region is not None:
                # Shared weights: the devices are programmed once and read by every tile placed on them.
                layout.flush()
                held = layout.array(k)[r:r + rows, c:c + 2 * width] if in_order else layout.array(k)[np.ix_(lines, bit_lines)]
                levels, exact = layout.natural(g_pos, g_neg, scale, dtype)
                if not np.array_equal(held, levels):
                    raise CimcError(f"internal error: tiles sharing array {k}, bit line {c} hold different conductances")
                region.setdefault("shared_by", [region["tile"]]).append(tile_id)
                if op.location and op.location not in region.setdefault("nodes", []):
                    region["nodes"].append(op.location)
                # One reference per region, unless this tile's column scales make other weights of the same devices.
                key = region["tile"] if not reference or np.array_equal(weights[region["tile"]], exact) else tile_id
                if key == tile_id:
                    weights[tile_id] = exact  # type: ignore[assignment]
            else:
                if in_order:  # written in place: G+ on the even bit lines of the tile, G- on the odd
                    layout.program(k, slice(r, r + rows), slice(c, c + 2 * width), g_pos, g_neg, scale, dtype, tile_id,
                                   f"tile {tile_id}")
                else:
                    levels, exact = layout.natural(g_pos, g_neg, scale, dtype)
                    layout.occupy(k, lines, bit_lines, levels, f"tile {tile_id}")
                    if reference:
                        weights[tile_id] = exact  # type: ignore[assignment]
                r0, r1 = at["rows"]  # type: ignore[misc]
                c0, c1 = at["cols"]  # type: ignore[misc]
                region = {"kind": "weights", "tile": tile_id, "block": at.get("block"),
                          "block_rows": [r0, r1], "block_cols": [c0, c1],
                          "word_lines": [r, r + rows], "bit_lines": [c, c + 2 * width]}
                if pairs is not None:
                    region["column_pairs"] = [int(v) for v in pairs]  # type: ignore[union-attr]
                if moved_rows is not None:
                    region["row_lines"] = [int(v) for v in moved_rows]  # type: ignore[union-attr]
                if "share" in at and op.location:
                    region["nodes"] = [op.location]
                if reference:
                    region["reference"] = reference_entry(tile_id)
                programmed[where] = region
                layout.regions.setdefault(k, []).append(region)
                key = tile_id
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
            layout.place_column(k, c, column_lv, f"ramp {len(ramps)}")
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
