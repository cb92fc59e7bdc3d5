"""fuse-activation: compute sigmoid/tanh (and every monotonic RNN activation) in the ramp ADC itself.

Where a whole dot product reaches one comparator, "column -> linear ADC ->
digital activation" becomes "column -> NL-ADC(f)": a ``cim.nl_adc`` that
compares the column against a ``cim.ramp`` whose levels are the decision
thresholds of f (see ``cimc.ramp``). One ramp column serves every column of
its array that needs the same function at the same bits, so columns sharing
a ramp are first brought to one conductance-per-z scale (scaling a column
down keeps its devices in range and its weights unchanged). Ramp columns are
real bit lines of their array.

Everywhere else the linear ADC and the digital activation stay, and the
activation records why in its ``fuse.reason`` attribute: partial sums added
digitally, an input computed digitally (tanh(c_t), a peephole or reset term
added after the MVM), a function that is not monotonic on the range, or no
room for the ramp. An activation of a digital value can instead be fed
through an identity column (one device per row) into the NL-ADC
(``identity=column``); ``identity=auto`` does so where the hardware's cost
table says it saves energy, i.e. for activations at least
``identity_min_width`` values wide.

Ramp gain: the hardware declares the column-to-comparator current ratios its
readout offers (``ramp_gains``); with ratio a the ramp devices realize a * g
per unit of z. Per ramp the pass takes the *largest* a for which every step
is at least G_min wide (so cumulative tracking keeps every level within
ΔG/2: worst |INL| <= ΔG / (2 G_min) LSB), the column fits the array's rows
(wide steps take two devices) and the calibration devices reach the ramp's
start (``cimc.ramp.synthesize_with_gain`` says why: device errors are
absolute, so the widest steps give the least INL, ideal and under
programming noise). ``gain_rule=unity`` takes the realizable gain closest
to 1 instead, for the least mirror current. If no gain makes every step realizable, the gain with the
least INL within ``max_inl`` is used; a ramp that no gain brings within
``max_inl`` is not used and the reason names the limit.

Bits: ``bits`` for every ramp, or with ``auto_bits`` the fewest bits in
``min_bits..max_bits`` whose realized ramp keeps the output error
max |y_code(z) - f(z)| over the calibrated conversion range (hence on every
calibration sample) within ``auto_max_error``, in the activation's output
units. An absolute target, because what consumes the activation (the cell
update c_t = f c + i g, a classifier's logits) sees absolute errors: a gate
whose calibrated range spans only part of the sigmoid needs fewer bits than
one that spans all of it, and tanh (output span 2) one more than sigmoid
(span 1). The default 1/32 is what a 5-bit sigmoid over its full span meets
(0.5 LSB + INL <= 0.97 LSB of 1/31). Bit widths whose ramp does not fit the
array's rows are skipped; if none meets the target the least error is used.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate

import numpy as np

from cimc.attributes import Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.dialects.cim import IDENTITY_SUFFIX, activation_key, is_identity_tile
from cimc.hardware import Hardware
from cimc.ir import Module, Operation, Value
from cimc.kernels.activations import Activation
from cimc.pass_manager import ModulePass, from_hardware, register_pass
from cimc.passes.tile import ActivationKeys, slice_range
from cimc.ramp import Ramp, Transfer, format_number, informative_range, prepare_ideal_levels, synthesize_with_gain
from cimc.report import LISTED_ARRAYS
from cimc.types import TensorType


def identity_break_even(hw: Hardware) -> int:
    """Smallest activation width for which an identity column + NL-ADC costs less energy per step than digital.

    Column: one array read plus one NL-ADC conversion per value. Digital: a
    piecewise/LUT activation of ``digital_activation_ops`` ops per value.
    """
    c = hw.cost
    saving = c.digital_activation_ops * c.digital_op_pj - c.nl_adc_conversion_pj
    return int(np.ceil(c.array_read_pj / saving)) if saving > 0 else 1 << 30


Piece = tuple[Value, tuple[int, int]]  # an analog value and the columns [c0, c1) of it that are read


@dataclass
class _Use:
    """One piece of an activation's input: columns [c0, c1) of an analog value."""

    act: Operation
    analog: Value
    cols: tuple[int, int]
    tiles: list[Operation]

    @property
    def array(self) -> int:
        return int(self.tiles[0].attributes["array"])  # type: ignore[arg-type]


@dataclass
class _ArrayState:
    rows: int
    bitlines: int
    used: int = 0
    functions: set[str] = field(default_factory=set)  # what its columns reach: place left a ramp bit line for each

    def fits_identity(self, width: int, key: str) -> bool:
        """Room for ``width`` identity columns of ``key`` beside every ramp column this array will need."""
        return self.used + 2 * width + len((self.functions | {key}) - {"linear"}) <= self.bitlines

    def take(self) -> int | None:
        if self.used >= self.bitlines:
            return None
        self.used += 1
        return self.used - 1


def analog_pieces(x: Value) -> list[Piece] | None:
    """The analog columns behind a converted value, through Concat and Slice of the last axis; None if it is digital.

    A gate wider than one array is converted in pieces and joined by a
    Concat; its activation then reads several pieces, each of which an NL-ADC
    can convert against its own array's ramp.
    """
    op = getattr(x, "op", None)
    if op is None:
        return None
    width = x.type.shape[-1]
    rank = x.type.rank
    if op.name == "cim.adc" and isinstance(width, int):
        return [(op.operands[0], (0, width))]
    if op.name == "onnx.Concat" and int(op.attributes["axis"]) % rank == rank - 1:  # type: ignore[arg-type]
        pieces: list[Piece] = []
        for part in op.operands:
            sub = analog_pieces(part) if part is not None else None
            if sub is None:
                return None
            pieces.extend(sub)
        return pieces
    if op.name == "onnx.Slice" and (span := slice_range(op, op.operands[0])) is not None:  # type: ignore[arg-type]
        inner = analog_pieces(op.operands[0])  # type: ignore[arg-type]
        if inner is None:
            return None
        out: list[Piece] = []
        offset = 0
        for value, (c0, c1) in inner:
            lo, hi = max(span[0], offset), min(span[1], offset + c1 - c0)
            if lo < hi:
                out.append((value, (c0 + lo - offset, c0 + hi - offset)))
            offset += c1 - c0
        return out
    return None


def _digital_partial_sum(value: Value) -> bool:
    """Whether ``value`` is a sum of linear conversions (possibly sliced): partial sums added after the ADCs."""
    op = getattr(value, "op", None)
    if op is not None and op.name == "onnx.Slice":
        return _digital_partial_sum(op.operands[0])  # type: ignore[arg-type]
    if op is None or op.name != "onnx.Add":
        return False
    return all(getattr(v, "op", None) is not None and (v.op.name == "cim.adc" or _digital_partial_sum(v))  # type: ignore[union-attr]
               for v in op.operands)


def _activation_of(op: Operation) -> Activation:
    a = op.attributes
    return Activation.create(str(a["function"]), a.get("alpha"), a.get("beta"))  # type: ignore[arg-type]


def _clip_of(op: Operation) -> float | None:
    return float(op.attributes["clip"]) if "clip" in op.attributes else None  # type: ignore[arg-type]


def _tiles_of(analog: Value) -> list[Operation]:
    op = analog.op  # type: ignore[attr-defined]
    return [op] if op.name == "cim.tile_mvm" else [v.op for v in op.operands]  # type: ignore[union-attr]


def _g_per_z(tile: Operation, cols: tuple[int, int]) -> np.ndarray:
    scale = tile.attributes["g_scale"].array[cols[0]:cols[1]]  # type: ignore[union-attr]
    return scale / float(tile.attributes.get("input_scale", 1.0))  # type: ignore[arg-type]


def _rescale(tile: Operation, spans: list[tuple[tuple[int, int], float]], g_min: float) -> None:
    """Scale each span's conductance deviations so that g_scale / input_scale equals its target; weights do not change.

    All spans of a tile in order, on one copy of its conductances (one copy per tile, not per span; none when one
    span covers the tile). The masks for unformed devices are applied only if the tile has one (its tensors' known
    minima or lower bounds say so, see Tensor.all_above): without one they select nothing. Each device is
    (G - G_min) * factor + G_min in float64 (one buffer per tile), rounded once to the tile's type.
    """
    a = tile.attributes
    pos_t, neg_t = a["g_pos"], a["g_neg"]
    scale = a["g_scale"].array.copy()  # type: ignore[union-attr]
    unformed = not (pos_t.all_above(0) and neg_t.all_above(0))  # type: ignore[union-attr]  (a NaN minimum too)
    whole = len(spans) == 1 and spans[0][0] == (0, scale.size)
    g_pos, g_neg = (np.empty_like(t.array) if whole else t.array.copy() for t in (pos_t, neg_t))  # type: ignore[union-attr]
    input_scale = float(a.get("input_scale", 1.0))  # type: ignore[arg-type]
    for cols, target in spans:
        sl = slice(*cols)
        factor = target * input_scale / scale[sl]
        # The span as it stands (earlier spans rescaled), read before either side is written: each is the other's mask.
        pos, neg = (pos_t.array, neg_t.array) if whole else (g_pos[:, sl].copy(), g_neg[:, sl].copy())  # type: ignore[union-attr]
        scaled = np.empty(pos.shape)
        # A pair's deviations from G_min shrink; a device left unformed (0 uS) stays so, and its partner scales whole.
        for own, partner, out in ((pos, neg, g_pos[:, sl]), (neg, pos, g_neg[:, sl])):
            scaled[...] = own  # widened exactly, then float64 loops in place (faster than mixed-type ufunc loops)
            scaled -= g_min
            scaled *= factor
            scaled += g_min
            if unformed:
                np.multiply(own, factor, out=scaled, where=partner == 0, dtype=np.float64)
                scaled[own == 0] = 0.0
            out[...] = scaled  # rounded once to the tile's type
        scale[sl] = scale[sl] * factor
    for key, array in (("g_pos", g_pos), ("g_neg", g_neg), ("g_scale", scale)):
        a[key] = Tensor.adopt(array, key=a[key].key)  # type: ignore[union-attr]


def _rescale_tiles(rescales: list[tuple[Operation, list[tuple[tuple[int, int], float]]]], g_min: float) -> None:
    """``_rescale`` of every tile; the row tiles of one column chunk of an MVM (windows of the chunk's copy of its
    conductances, as ``tile`` cuts them), each rescaled whole and with every device formed, at once: one pass over
    the chunk with each row's factors, the same float64 operations per device as ``_rescale``'s, hence the same bits."""
    chunks: dict[tuple[int, int, int, int], list[tuple[Operation, int, np.ndarray, list]]] = defaultdict(list)
    for tile, spans in rescales:
        a = tile.attributes
        pos_t, neg_t, scale = a["g_pos"], a["g_neg"], a["g_scale"].array  # type: ignore[union-attr]
        origins = pos_t.origin, neg_t.origin  # type: ignore[union-attr]
        if len(spans) != 1 or spans[0][0] != (0, scale.size) or None in origins or origins[0][1] != origins[1][1] \
                or not (pos_t.all_above(0) and neg_t.all_above(0)):  # type: ignore[union-attr,index]
            _rescale(tile, spans, g_min)
            continue
        rows, cols = origins[0][1]  # type: ignore[index]
        factor = spans[0][1] * float(a.get("input_scale", 1.0)) / scale  # type: ignore[arg-type]
        chunks[(id(origins[0][0]), id(origins[1][0]), cols.start, cols.stop)].append((tile, rows.start, factor, spans))  # type: ignore[index]
    pos_t = neg_t = origins = None  # type: ignore[assignment]  (no reference to a conductance outlives its tiles')
    runs = []  # (members, row offsets) of each chunk whose tiles are one run of rows
    for members in chunks.values():
        members.sort(key=lambda m: m[1])
        heights = [m[0].attributes["g_pos"].array.shape[0] for m in members]  # type: ignore[union-attr]
        offsets = [0, *accumulate(heights)]
        if [m[1] for m in members] == [members[0][1] + o for o in offsets[:-1]]:
            runs.append((members, offsets))
        else:
            for tile, _, _, spans in members:  # one at a time
                _rescale(tile, spans, g_min)
    # One float64 buffer serves every chunk: a fresh temporary of this size would be mapped (and faulted in) anew
    # each time. Each chunk's results are one new array, handed out at once: the chunk it replaces is then let go,
    # and its memory serves the next chunk.
    buffer = np.empty(max((offsets[-1] * m[0][2].size for m, offsets in runs), default=0))
    for members, offsets in runs:
        first = members[0][1]
        for name in ("g_pos", "g_neg"):
            parent, (_, cols) = members[0][0].attributes[name].origin  # type: ignore[union-attr,misc]
            source = parent.array[first:first + offsets[-1], cols]
            scaled = buffer[:source.size].reshape(source.shape)
            scaled[...] = source
            scaled -= g_min
            for (_, _, factor, _), lo, hi in zip(members, offsets, offsets[1:]):
                scaled[lo:hi] *= factor
            scaled += g_min
            rescaled = Tensor.adopt(scaled.astype(source.dtype))
            rescaled.minimum()  # one pass over the chunk bounds every tile's devices (the verifier's >= 0 rule)
            parent = source = None  # type: ignore[assignment]
            for (tile, *_), lo, hi in zip(members, offsets, offsets[1:]):
                tile.attributes[name] = rescaled.window((slice(lo, hi), slice(None)), key=tile.attributes[name].key)  # type: ignore[union-attr]
        for tile, _, factor, _ in members:
            scale = tile.attributes["g_scale"]
            tile.attributes["g_scale"] = Tensor.adopt(scale.array * factor, key=scale.key)  # type: ignore[union-attr]


def _base_transfer(uses: list[_Use]) -> Transfer:
    """The function a group's ramp must realize, on the group's whole column range."""
    act = uses[0].act
    z_lo, z_hi = _z_range(uses)
    return Transfer(_activation_of(act), _clip_of(act), z_lo, z_hi)


def _z_range(uses: list[_Use]) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for use in uses:
        a = use.tiles[0].attributes
        if "z_lo" in a:
            lo = min(lo, float(a["z_lo"].array[use.cols[0]:use.cols[1]].min()))  # type: ignore[union-attr]
            hi = max(hi, float(a["z_hi"].array[use.cols[0]:use.cols[1]].max()))  # type: ignore[union-attr]
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise CimcError("fuse-activation needs column ranges: run the 'ranges' pass before it")
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


@register_pass
@dataclass(frozen=True)
class FuseActivation(ModulePass):
    """Replace ADC + digital activation by an NL-ADC against a synthesized, shared ramp column wherever the hardware allows."""

    name = "fuse-activation"
    bits: int | None = from_hardware(lambda hw: hw.converters.nl_adc_bits, "converters.nl_adc_bits")
    g_min: float | None = from_hardware(lambda hw: hw.device.g_min_us, "device.g_min_us")
    g_max: float | None = from_hardware(lambda hw: hw.device.g_max_us, "device.g_max_us")
    levels: int | None = from_hardware(lambda hw: hw.device.levels, "device.levels")
    calibration_devices: int | None = from_hardware(lambda hw: hw.converters.ramp_calibration_devices,
                                                    "converters.ramp_calibration_devices")
    rows: int | None = from_hardware(lambda hw: hw.array.rows, "array.rows")
    cols: int | None = from_hardware(lambda hw: hw.array.cols, "array.cols")
    arrays: int | None = from_hardware(lambda hw: hw.array.limit or 0, "array.count; 0: auto, as many as the mapping needs")
    identity: str = "auto"
    identity_min_width: int | None = from_hardware(identity_break_even, "[cost] break-even width")
    quantization: str = "cumulative"
    max_inl: float = 1.0
    ramp_gains: str | None = from_hardware(lambda hw: ",".join(format_number(a) for a in hw.converters.ramp_gains),
                                           "converters.ramp_gains")
    auto_bits: bool = False
    min_bits: int = 3
    max_bits: int = 8
    auto_max_error: float = 1 / 32
    gain_rule: str = "largest"

    def apply(self, module: Module) -> bool:
        if self.identity not in ("auto", "column", "digital"):
            raise CimcError(f"fuse-activation identity must be auto, column or digital, got '{self.identity}'")
        gains = self._gains()
        if self.auto_bits and not 1 <= self.min_bits <= self.max_bits <= 12:
            raise CimcError(f"fuse-activation needs 1 <= min_bits <= max_bits <= 12, got {self.min_bits}..{self.max_bits}")
        arrays = self._array_states(module)
        identities: dict[tuple, list[tuple[int, int, int, int]]] = {}  # shared identity columns: group -> placements
        plans: list[tuple[Operation, list[_Use]]] = []
        groups: dict[tuple[int, str], list[_Use]] = defaultdict(list)
        for act in [op for op in module.walk() if op.name == "cim.activation"]:
            x = act.operands[0]
            assert x is not None
            pieces: list[Piece] | str | None = analog_pieces(x)
            if pieces is None:
                if _digital_partial_sum(x):
                    pieces = "row-tiled partial sums are added digitally (the hardware has no analog partial sums)"
                elif self._wants_identity(act):
                    pieces = self._identity_pieces(act, arrays, identities)
                else:
                    pieces = "the input is a digital value, not a crossbar column"
            if isinstance(pieces, str):
                act.attributes["fuse.reason"] = pieces
                continue
            uses = [_Use(act, value, cols, _tiles_of(value)) for value, cols in pieces]
            plans.append((act, uses))
            for use in uses:
                groups[(use.array, activation_key(act))].append(use)
        _unify_shared_identities(module)
        self._prepare_ramps(list(groups.values()))
        outcomes = {key: self._plan_ramp(key[0], group, arrays[key[0]], gains) for key, group in sorted(groups.items())}
        ramp_values: dict[tuple[int, str], Value] = {}
        rescales: dict[int, tuple[Operation, list[tuple[tuple[int, int], float]]]] = {}  # per tile, in order
        fused = 0
        for act, uses in plans:
            keys = [(use.array, activation_key(act)) for use in uses]
            failed = [outcomes[k] for k in keys if isinstance(outcomes[k], str)]
            if failed:
                act.attributes["fuse.reason"] = failed[0]  # type: ignore[assignment]
                continue
            b = Builder(act.parent, act, act.location)  # type: ignore[arg-type]
            fn_attrs = {k: act.attributes[k] for k in ("function", "alpha", "beta", "clip") if k in act.attributes}
            outputs = []
            for use, key in zip(uses, keys):
                ramp, col, g_common = outcomes[key]  # type: ignore[misc]
                if key not in ramp_values:
                    ramp_values[key] = self._ramp_op(module, ramp, key[0], col, act)
                for tile in use.tiles:  # only columns that really use the ramp give up part of their window
                    rescales.setdefault(id(tile), (tile, []))[1].append((use.cols, g_common))
                lead = act.results[0].type.shape[:-1]
                out_type = TensorType(act.results[0].type.dtype, (*lead, use.cols[1] - use.cols[0]))
                outputs.append(b.value("cim.nl_adc", [use.analog, ramp_values[key]], out_type,
                                       {**fn_attrs, "bits": ramp.bits, "cols": use.cols}))
            result = act.results[0]
            joined = outputs[0] if len(outputs) == 1 else b.value("onnx.Concat", outputs, result.type, {"axis": result.type.rank - 1})
            if joined.type != result.type:
                joined = b.value("onnx.Identity", [joined], result.type)
            result.replace_all_uses_with(joined)
            act.erase()
            fused += 1
        _rescale_tiles(list(rescales.values()), self.g_min)
        module.attributes["fuse.ramps"] = len(ramp_values)
        module.attributes["fuse.activations"] = fused
        if self.auto_bits:
            module.attributes["fuse.auto_bits"] = (
                f"fewest bits in {self.min_bits}..{self.max_bits} with max |NL-ADC output - f(z)| over the calibrated "
                f"conversion range <= {self.auto_max_error:.4g}")
        return bool(ramp_values)

    def _gains(self) -> tuple[float, ...]:
        try:
            gains = tuple(sorted({float(v) for v in self.ramp_gains.split(",") if v.strip()}))
        except ValueError:
            gains = ()
        if not gains or not all(np.isfinite(a) and a > 0 for a in gains):
            raise CimcError(f"fuse-activation ramp_gains must be a comma-separated list of positive numbers, got '{self.ramp_gains}'")
        return gains

    def _wants_identity(self, act: Operation) -> bool:
        width = act.results[0].type.shape[-1]
        if self.identity == "digital" or not isinstance(width, int):
            return False
        return self.identity == "column" or width >= self.identity_min_width

    def _array_states(self, module: Module) -> dict[int, _ArrayState]:
        states: dict[int, _ArrayState] = {}
        activation_keys = ActivationKeys()
        for op in module.walk():
            if op.name == "cim.tile_mvm" and "array" in op.attributes:
                c0, c1 = op.attributes["cols"]  # type: ignore[misc]
                k = int(op.attributes["array"])  # type: ignore[arg-type]
                state = states.setdefault(k, _ArrayState(self.rows, self.cols))
                state.used = max(state.used, int(op.attributes["array_col"]) + 2 * (c1 - c0))  # type: ignore[arg-type]
                state.functions.update(activation_keys(op))
            elif op.name == "cim.ramp":
                state = states.setdefault(int(op.attributes["array"]), _ArrayState(self.rows, self.cols))  # type: ignore[arg-type]
                state.used = max(state.used, int(op.attributes["array_col"]) + 1)  # type: ignore[arg-type]
        return states

    def _identity_pieces(self, act: Operation, arrays: dict[int, _ArrayState],
                         identities: dict[tuple, list[tuple[int, int, int, int]]]) -> list[Piece] | str:
        """Route a digital value through identity tiles (one device per row), split to fit the arrays.

        Activations in loop bodies that read the same shared weights (unrolled
        steps of one decoder, see share-weights) run one after another and
        would get identical identity columns: they share one copy.
        """
        x = act.operands[0]
        assert x is not None
        width = int(x.type.shape[-1])  # type: ignore[arg-type]
        lo, hi = float(act.attributes.get("range.lo", -np.inf)), float(act.attributes.get("range.hi", np.inf))  # type: ignore[arg-type]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return "the input is a digital value with no known range (run 'ranges' first) for an identity column"
        try:
            transfer = informative_range(Transfer(_activation_of(act), _clip_of(act), lo, hi), self.bits)
        except CimcError as e:
            return e.message
        lo, hi = transfer.z_lo, transfer.z_hi
        piece = min(self.rows, (self.cols - 1) // 2)
        spans = [(c0, min(c0 + piece, width)) for c0 in range(0, width, piece)]
        group = _identity_group(act, width)
        placements = identities.get(group) if group is not None else None
        if placements is None:
            placements = []
            key = activation_key(act)
            # Only arrays with room for one identity column can take a piece (the first that fits is taken, as
            # if all were tried in order); the filter, made once, keeps this linear in the arrays.
            open_arrays = [k for k, s in sorted(arrays.items()) if s.fits_identity(1, "linear")]
            for c0, c1 in spans:
                target = next((k for k in open_arrays if arrays[k].fits_identity(c1 - c0, key)), None)
                if target is None:
                    if self.arrays and len(arrays) >= self.arrays:
                        return "the input is a digital value and the chip has no room for its identity columns"
                    target = max(arrays, default=-1) + 1
                    arrays[target] = _ArrayState(self.rows, self.cols)
                    open_arrays.append(target)
                placements.append((c0, c1, target, arrays[target].used))
                arrays[target].used += 2 * (c1 - c0)
                arrays[target].functions.add(key)
            if group is not None:
                identities[group] = placements
        block = f"{act.location or 'activation'}{IDENTITY_SUFFIX}"
        b = Builder(act.parent, act, act.location)  # type: ignore[arg-type]
        pieces: list[Piece] = []
        for c0, c1, array, col in placements:
            w = c1 - c0
            key = f"{block}.c{c0}"
            # One formed device per row (G_max on the diagonal); every other device is left unformed.
            tile = b.value("cim.tile_mvm", [x], TensorType(x.type.dtype, (*x.type.shape[:-1], w)), {
                "g_pos": Tensor(self.g_max * np.eye(w), key=f"{key}.g_pos"),
                "g_neg": Tensor(np.zeros((w, w)), key=f"{key}.g_neg"),
                "g_scale": Tensor(np.full(w, self.g_max), key=f"{key}.g_scale"),
                "block": block, "rows": (c0, c1), "cols": (0, w),
                "input_scale": max(abs(lo), abs(hi), float(np.finfo(np.float32).tiny)),
                "z_lo": Tensor(np.full(w, lo)), "z_hi": Tensor(np.full(w, hi)),
                "array": array, "array_row": 0, "array_col": col,
                **({"share": f"identity.{group[0]}.{group[1]}.{_digest(group[2])}.c{c0}"} if group is not None else {}),
            })
            pieces.append((tile, (0, w)))
        return pieces

    def _bit_widths(self) -> range | tuple[int]:
        return range(self.min_bits, self.max_bits + 1) if self.auto_bits else (self.bits,)

    def _prepare_ramps(self, groups: list[list[_Use]]) -> None:
        """Compute the ideal levels that ``_plan_ramp`` will ask for, of all groups together (the same numbers, faster)."""
        bases = []
        for uses in groups:
            try:
                bases.append(_base_transfer(uses))
            except CimcError:
                continue  # _plan_ramp reports it
        for bits in self._bit_widths():
            prepare_ideal_levels(bases, bits)
            informative = []
            for base in bases:
                try:
                    informative.append(informative_range(base, bits))
                except CimcError:
                    continue
            prepare_ideal_levels(informative, bits)

    def _plan_ramp(self, array: int, uses: list[_Use], state: _ArrayState, gains: tuple[float, ...]) -> tuple[Ramp, int, float] | str:
        """Synthesize the ramp of one (array, function) group and reserve its bit line, or say why not.

        Returns the ramp, its bit line and the conductance per unit of z that every
        column converted against it must be brought to.
        """
        g_common = min(float(_g_per_z(t, u.cols).min()) for u in uses for t in u.tiles)
        try:
            base = _base_transfer(uses)
            base.direction()
        except CimcError as e:
            return e.message
        outcome: Ramp | str = ""
        for bits in self._bit_widths():
            candidate = self._choose_gain(base, bits, g_common, state.rows, gains)
            if isinstance(candidate, str):
                outcome = outcome if isinstance(outcome, Ramp) else candidate
                continue
            if not self.auto_bits or _max_error(candidate) <= self.auto_max_error:
                outcome = candidate
                break
            if not isinstance(outcome, Ramp) or _max_error(candidate) < _max_error(outcome):
                outcome = candidate  # the best so far, if no bit width meets the target
        if isinstance(outcome, str):
            return outcome
        col = state.take()
        if col is None:
            return f"array {array} has no free bit line for a ramp column"
        return outcome, col, g_common

    def _choose_gain(self, base: Transfer, bits: int, g_per_z: float, rows: int, gains: tuple[float, ...]) -> Ramp | str:
        return _ramp_or_reason(base, (math.copysign(1.0, base.z_lo), math.copysign(1.0, base.z_hi)), bits, g_per_z,
                               self.g_min, self.g_max, self.levels, self.calibration_devices, self.quantization, gains,
                               rows, self.max_inl, self.gain_rule)

    def _ramp_op(self, module: Module, ramp: Ramp, array: int, col: int, act: Operation) -> Value:
        a = act.attributes
        attrs: dict[str, object] = {k: a[k] for k in ("function", "alpha", "beta", "clip") if k in a}
        attrs.update({
            "bits": ramp.bits, "array": array, "array_col": col, "rows": ramp.rows,
            "z_lo": float(ramp.transfer.z_lo), "z_hi": float(ramp.transfer.z_hi), "g_per_z": float(ramp.g_per_z),
            "thresholds": Tensor(ramp.thresholds.astype(np.float64), key=f"ramp{array}.{col}.thresholds"),
            "steps_us": Tensor(np.array([s.conductance_us for s in ramp.steps]), key=f"ramp{array}.{col}.steps_us"),
            "step_devices": tuple(len(s.device_levels) for s in ramp.steps),
            "offset_us": float(ramp.offset_us), "calibration_devices": self.calibration_devices,
            "quantization": ramp.quantization, "inl_lsb": float(np.abs(ramp.inl_lsb).max()), "gain": float(ramp.gain),
            "device_levels": tuple(lv for s in ramp.steps for lv in s.device_levels), "offset_levels": ramp.offset_levels,
        })
        b = Builder(module.body, module.body.ops[0] if module.body.ops else None, act.location)
        return b.value("cim.ramp", [], TensorType("f64", (len(ramp.thresholds),)), attrs, f"ramp{array}_{col}")


@lru_cache(maxsize=4096)
def _ramp_or_reason(base: Transfer, zero_signs: tuple[float, float], bits: int, g_per_z: float, g_min: float,
                    g_max: float, levels: int, calibration_devices: int, quantization: str, gains: tuple[float, ...],
                    rows: int, max_inl: float, gain_rule: str) -> Ramp | str:
    """The ramp that ``synthesize_with_gain`` picks for these parameters, or why there is none.

    Cached: a ramp is a pure function of its parameters (the Ramp is immutable), and many arrays convert the
    same function over the same range at the same conductance per unit of z (identity columns, equal gates),
    so they get one synthesis instead of one each. ``zero_signs`` (the signs of z_lo and z_hi) only keeps
    apart the transfers over -0.0 and 0.0, which compare equal but print differently.
    """
    try:
        return synthesize_with_gain(informative_range(base, bits), bits, g_per_z, g_min, g_max, levels,
                                    calibration_devices, quantization, gains, rows, max_inl, gain_rule)
    except CimcError as e:
        return e.message


def _identity_group(act: Operation, width: int) -> tuple[str, int, tuple[str, ...]] | None:
    """Activations with equal groups can share identity columns: same function and width, in loop bodies over the same shared weights."""
    block = act.parent
    shared = tuple(sorted({str(op.attributes["share"]) for op in getattr(block, "ops", ())
                           if op.name == "cim.tile_mvm" and "share" in op.attributes}))
    return (activation_key(act), width, shared) if shared else None


def _digest(keys: tuple[str, ...]) -> str:
    return hashlib.sha256(repr(keys).encode()).hexdigest()[:12]


def _unify_shared_identities(module: Module) -> None:
    """Identity tiles that share devices get one DAC full scale and one column range: the largest of their members'."""
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in module.walk():
        if op.name == "cim.tile_mvm" and str(op.attributes.get("share", "")).startswith("identity."):
            groups[str(op.attributes["share"])].append(op)
    for members in groups.values():
        scale = max(float(t.attributes["input_scale"]) for t in members)  # type: ignore[arg-type]
        lo = min(float(t.attributes["z_lo"].array.min()) for t in members)  # type: ignore[union-attr]
        hi = max(float(t.attributes["z_hi"].array.max()) for t in members)  # type: ignore[union-attr]
        for t in members:
            w = t.attributes["z_lo"].array.size  # type: ignore[union-attr]
            t.attributes.update({"input_scale": scale, "z_lo": Tensor(np.full(w, lo)), "z_hi": Tensor(np.full(w, hi))})


def fusion_summary(module: Module) -> str:
    """How many activations were fused, how many fell back and why, how many ramp columns, and the worst INL."""
    fused = int(module.attributes.get("fuse.activations", 0))  # type: ignore[arg-type]
    conversions = sum(1 for op in module.walk() if op.name == "cim.nl_adc")
    reasons: dict[str, int] = defaultdict(int)
    for op in module.walk():
        if op.name == "cim.activation":
            reasons[str(op.attributes.get("fuse.reason", "not considered (no fuse-activation pass)"))] += 1
    ramps = [op for op in module.walk() if op.name == "cim.ramp"]
    lines = [f"activations fused into NL-ADCs: {fused} (converted in {conversions} column pieces); "
             f"kept digital: {sum(reasons.values())}"]
    lines += [f"  {n} x {reason}" for reason, n in sorted(reasons.items())]
    clips = sum(1 for op in module.walk() if op.name == "onnx.Clip")
    if clips:
        lines.append(f"  {clips} x onnx.Clip with bounds other than [0, c] or [-c, c] (no single-ramp form) computed digitally")
    if ramps:
        worst = max(ramps, key=lambda r: float(r.attributes["inl_lsb"]))  # type: ignore[arg-type]
        lines.append(f"ramp columns: {len(ramps)}; worst |INL| {float(worst.attributes['inl_lsb']):.3f} LSB "  # type: ignore[arg-type]
                     f"({worst.attributes['function']} {worst.attributes['bits']}-bit ramp in array {worst.attributes['array']})")
        # kind (function, bits, gain, rows) -> (uS per unit of z, worst |INL|) of each ramp of that kind
        kinds: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in sorted(ramps, key=lambda r: (r.attributes["array"], r.attributes["array_col"])):  # type: ignore[arg-type, return-value]
            a = r.attributes
            gain = float(a.get("gain", 1.0))  # type: ignore[arg-type]
            kind = f"{activation_key(r)} {a['bits']}-bit, gain {format_number(gain)}"
            slope, inl = gain * float(a["g_per_z"]), float(a["inl_lsb"])  # type: ignore[arg-type]
            kinds[f"{kind}, {a['rows']} rows"].append((slope, inl))
            if len(ramps) <= LISTED_ARRAYS:
                lines.append(f"  array {a['array']} bit line {a['array_col']}: {kind} ({slope:.3g} uS per unit of z), "
                             f"{a['rows']} rows, worst |INL| {inl:.3f} LSB")
        if len(ramps) > LISTED_ARRAYS:  # a large model: one line per kind of ramp (cimc dump IMAGE lists each)
            for kind, each in sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0])):
                lo, hi = min(s for s, _ in each), max(s for s, _ in each)
                slope = f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}..{hi:.3g}"
                lines.append(f"  {len(each)} x {kind}, {slope} uS per unit of z, worst |INL| {max(i for _, i in each):.3f} LSB")
        if "fuse.auto_bits" in module.attributes:
            lines.append(f"NL-ADC bits per activation ({module.attributes['fuse.auto_bits']}):")
            bits: dict[str, set[int]] = defaultdict(set)
            for op in module.walk():
                if op.name == "cim.nl_adc":
                    bits[f"{activation_key(op)} at {op.location or '?'}"].add(int(op.attributes["bits"]))  # type: ignore[arg-type]
            lines += [f"  {where}: {'/'.join(str(b) for b in sorted(v))} bits" for where, v in sorted(bits.items())]
    else:
        lines.append("ramp columns: 0")
    identity = sum(1 for op in module.walk() if is_identity_tile(op))
    if identity:
        lines.append(f"identity columns: {identity}")
    return "\n".join(lines) + "\n"


def _max_error(ramp: Ramp) -> float:
    """Largest |NL-ADC output - f(z)| over the ramp's conversion range, in the activation's output units."""
    return ramp.max_output_error_lsb(20_001) * abs(ramp.lsb)
