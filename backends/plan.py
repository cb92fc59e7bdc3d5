"""The step plan: an image's program, compiled once at load into resolved steps over value slots.

The reference interpreter walks the IR op by op, dispatching by name and
looking values up by identity; for a recurrence that is 200 ops per time step.
The simulator instead compiles each block of the program into a list of steps
that read and write a flat list of slots, with everything that does not change
between steps resolved beforehand:

- **Read groups.** The tiles that share their inputs and rows are one read: one
  matrix product per group and step, over the weights of all of its tiles side
  by side, pre-cast to the model's float type. A tile's value is a column
  slice (a view) of its group's product. The driven input vector [x; h; 1] is
  assembled once for all groups over the same operands.
- **Analog sums.** Partial sums of row-split tiles whose groups line up column
  for column are added once over the groups' whole width; each
  ``cim.analog_sum`` is then a view of that total.
- **Conversions.** The NL-ADCs reading one buffer are converted together: at
  ``exact``, one activation call per run of columns with the same function; at
  ``ideal``/``noisy``, one vectorized lookup for every column against its own
  ramp (``backends/ramp_codes.py``). A ``Concat`` of adjacent views of one
  buffer is itself a view.
- **Read noise** is output-referred (see ``docs/simulator.md``): the column
  value plus sqrt((x^2) @ V) times one standard normal per batch element and
  column, V = sigma^2 (G+^2 + G-^2) / s^2, drawn where the current is
  converted: at the analog sum when the partial sums are read only through it.
- Everything else runs the interpreter's own kernel, resolved once.

Each step produces its ops' values in the slots; ops folded into a step are
still reported to an observer one by one, with the same values, so the general
path (observers, teacher forcing, saturation counters) computes exactly the
numbers of the fast one. Values are never written into a buffer a later step
reuses, so anything an observer keeps stays valid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cimc.attributes import Tensor
from cimc.backends.ramp_codes import ColumnCodes
from cimc.cim_kernels import apply_activation
from cimc.diagnostics import CimcError
from cimc.dialects import lookup
from cimc.interpreter import InterpreterError, Kernel, op_location, ordered_inputs, output_names, registered_kernels
from cimc.ir import Block, Module, Operation, Value

if TYPE_CHECKING:
    from cimc.backends.simulator import Simulator

Env = list[Any]
Observer = Callable[[Operation, list, list], None]


def dac_quantize(driven: np.ndarray, scale: float | np.ndarray, bits: int) -> np.ndarray:
    """The DAC's output for the driven inputs x_i / r_i: each row's x_i over its own full scale s_ref r_i.

    Dividing by r_i beforehand puts every row on the reference full scale
    s_ref, so one quantizer of ``bits`` (sign + magnitude, 2^(bits-1) - 1
    steps each way) over [-s_ref, s_ref] serves every segment.
    """
    levels = (1 << (bits - 1)) - 1
    code = driven / scale  # rint(clip(x / s, -1, 1) * levels) / levels * s, in place after this one array
    np.clip(code, -1.0, 1.0, out=code)
    code *= levels
    np.rint(code, out=code)
    code /= levels
    code *= scale
    return code.astype(driven.dtype, copy=False)


def adc_codes(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The codes 0..2^bits-1 of a linear ADC over each column's [lo, hi] (a degenerate range reads as width 1)."""
    steps = (1 << bits) - 1
    return np.clip(np.rint((z - lo) / np.where(hi > lo, hi - lo, 1.0) * steps), 0, steps)


def adc_quantize(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """A linear ADC of ``bits`` over each column's [lo, hi]: the nearest of 2^bits levels, clipped to the range."""
    steps = (1 << bits) - 1
    span = np.where(hi > lo, hi - lo, 1.0)
    return (lo + adc_codes(z, lo, hi, bits) * span / steps).astype(z.dtype)


@dataclass
class Hooks:
    """What a general run adds to the fast one (all optional)."""

    observer: Observer | None = None
    progress: Callable[[str, int, int], None] | None = None
    carried_override: Callable[[Operation, int, list], list] | None = None


@dataclass
class Step(ABC):
    """One resolved unit of work; ``ops`` are the program ops whose values it produces, in report order."""

    ops: list[Operation]

    @abstractmethod
    def __call__(self, env: Env) -> None:
        """Compute this step's values into ``env``."""


@dataclass
class BlockPlan:
    steps: list[Step]
    arg_slots: list[int]
    yield_slots: list[int]


@dataclass
class _Layout:
    """A value that is columns [a, b) of the buffer in slot ``buffer`` (along the last axis).

    ``stored``: the slot of the buffer's column-by-column storage (columns, N), when it has one.
    """

    buffer: int
    a: int
    b: int
    stored: int = -1


class Plan:
    """The program of one image for one simulator (its fidelity and chip), ready to run any number of times."""

    def __init__(self, program: Module, simulator: Simulator) -> None:
        self.sim = simulator
        self.program = program
        self.kernels: dict[str, Kernel] = registered_kernels()
        self.slots: dict[int, int] = {}
        self.layouts: dict[int, _Layout] = {}
        self.hooks = Hooks()
        self.symbols: dict[str, int] = {}
        self.groups: dict[int, ReadGroup] = {}  # id(tile op) -> its read group
        self._cache: dict[int, np.ndarray] = {}
        self.main = self._block(program.body)

    # ---- building ------------------------------------------------------------------------------------------

    def slot(self, value: Value) -> int:
        key = id(value)
        if key not in self.slots:
            self.slots[key] = len(self.slots)
        return self.slots[key]

    def new_slot(self) -> int:
        index = len(self.slots)
        self.slots[-(index + 1)] = index  # internal buffers have no Value; negative keys never clash with ids
        return index

    def _block(self, block: Block) -> BlockPlan:
        arg_slots = [self.slot(a) for a in block.args]
        steps: list[Step] = []
        emitted: set[int] = set()  # ids of ops already produced by an earlier (hoisted) step
        groups = self._read_groups(block)
        sums = self._fused_sums(block, groups)
        conversions = self._conversions(block)
        yield_slots: list[int] = []
        for op in block.ops:
            if id(op) in emitted:
                continue
            opdef = lookup(op.name)
            if opdef is not None and opdef.terminator:
                yield_slots = [self.slot(v) for v in op.operands if v is not None]
                break
            if op.name == "cim.tile_mvm":
                read = groups[id(op)].read
                assert read is not None
                steps.append(AssembleStep([], [self.slot(v) if v is not None else -1 for v in op.operands],
                                          int(op.attributes.get("bias_rows", 0)), read.input))  # type: ignore[arg-type]
                steps.append(read)
                emitted.update(id(t) for t in read.ops)
            elif op.name == "cim.analog_sum" and id(op) in sums:
                step = sums[id(op)]
                steps.append(step)
                emitted.update(id(o) for o in step.ops)
            elif op.name == "cim.nl_adc" and id(op) in conversions:
                step = conversions[id(op)]
                steps.append(step)
                emitted.update(id(o) for o in step.ops)
            elif op.name == "cim.adc":
                steps.append(AdcStep(self, op))
            elif op.name == "cim.loop":
                steps.append(LoopStep(self, op))
            elif op.name in ("builtin.constant", "cim.ramp"):
                steps.append(ConstantStep([op], self.slot(op.results[0]), self._constant(op)))
            elif op.name == "onnx.Concat" and (view := self._concat_view(op)) is not None:
                steps.append(view)
            else:
                steps.append(KernelStep(self, op))
        return BlockPlan(steps, arg_slots, yield_slots)

    @staticmethod
    def _constant(op: Operation) -> np.ndarray:
        name = "value" if op.name == "builtin.constant" else "thresholds"
        value = op.attributes[name]
        assert isinstance(value, Tensor)
        return value.array

    def _read_groups(self, block: Block) -> dict[int, ReadGroup]:
        """Tiles driven by the same inputs over the same rows are read together: one product per step."""
        by_key: dict[tuple, ReadGroup] = {}
        for op in block.ops:
            if op.name == "cim.tile_mvm":
                key = (tuple(id(v) for v in op.operands), int(op.attributes.get("bias_rows", 0)),  # type: ignore[arg-type]
                       tuple(op.attributes["rows"]))  # type: ignore[arg-type]
                group = by_key.get(key)
                if group is None:
                    group = by_key[key] = ReadGroup(self, key[:2])
                group.add(op)
        banks: dict[tuple, list[ReadGroup]] = {}
        for group in by_key.values():
            group.finish()
            for tile in group.tiles:
                self.groups[id(tile)] = group
            banks.setdefault((group.input_key, group.dtype), []).append(group)
        for members in banks.values():
            read = ReadStep(self, members, self.new_slot())
            for group in members:
                group.read = read
        return {id(t): g for g in by_key.values() for t in g.tiles}

    def _fused_sums(self, block: Block, groups: dict[int, ReadGroup]) -> dict[int, SumStep]:
        """Analog sums whose partial sums sit at the same columns of equally wide groups: one total per group set."""
        by_groups: dict[tuple[int, ...], list[Operation]] = {}
        for op in block.ops:
            if op.name != "cim.analog_sum":
                continue
            parts = [v for v in op.operands if v is not None]
            if not parts or not all(v.op.name == "cim.tile_mvm" and id(v.op) in groups for v in parts):  # type: ignore[union-attr]
                continue
            tiles = [v.op for v in parts]  # type: ignore[union-attr]
            chosen = [groups[id(t)] for t in tiles]
            spans = {chosen[i].columns[id(t)] for i, t in enumerate(tiles)}
            widths = {g.width for g in chosen}
            if len(spans) != 1 or len(widths) != 1 or len({id(g) for g in chosen}) != len(chosen):
                continue
            by_groups.setdefault(tuple(id(g) for g in chosen), []).append(op)
        fused: dict[int, SumStep] = {}
        for ops in by_groups.values():
            chosen = [groups[id(v.op)] for v in ops[0].operands if v is not None]  # type: ignore[union-attr]
            step = SumStep(self, ops, chosen)
            for op in ops:
                fused[id(op)] = step
        return fused

    def _buffer_of(self, value: Value) -> _Layout | None:
        """Where a value lives as columns of a buffer: its recorded layout, or itself from column 0."""
        layout = self.layouts.get(self.slot(value))
        if layout is not None:
            return layout
        width = value.type.shape[-1] if value.type.shape else None
        return _Layout(self.slot(value), 0, width) if isinstance(width, int) else None

    def _conversions(self, block: Block) -> dict[int, ConvertStep]:
        """The NL-ADCs reading one buffer, converted together (no two of them reading the same column)."""
        pending: dict[int, list[tuple[Operation, int, int]]] = {}
        stored: dict[int, int] = {}
        order: list[int] = []
        for op in block.ops:
            if op.name != "cim.nl_adc":
                continue
            where = self._buffer_of(op.operands[0])  # type: ignore[arg-type]
            if where is None:
                continue
            c0, c1 = op.attributes["cols"]  # type: ignore[misc]
            if where.buffer not in pending:
                pending[where.buffer] = []
                stored[where.buffer] = where.stored
                order.append(where.buffer)
            pending[where.buffer].append((op, where.a + int(c0), where.a + int(c1)))
        steps: dict[int, ConvertStep] = {}
        for buffer in order:
            groups: list[list[tuple[Operation, int, int]]] = []
            for entry in pending[buffer]:
                for group in groups:
                    if all(entry[2] <= b0 or entry[1] >= b1 for _, b0, b1 in group):
                        group.append(entry)
                        break
                else:
                    groups.append([entry])
            for group in groups:
                step = ConvertStep(self, buffer, stored[buffer], group)
                for op, _, _ in group:
                    steps[id(op)] = step
        return steps

    def _concat_view(self, op: Operation) -> ConcatView | None:
        """A Concat along the last axis of adjacent columns of one buffer is a view of that buffer."""
        parts = [v for v in op.operands if v is not None]
        rank = len(op.results[0].type.shape)
        axis = int(op.attributes.get("axis", 0))  # type: ignore[arg-type]
        if not parts or rank == 0 or axis % rank != rank - 1:
            return None
        layouts = [self.layouts.get(self.slot(v)) for v in parts]
        if any(lay is None for lay in layouts) or len({lay.buffer for lay in layouts}) != 1:  # type: ignore[union-attr]
            return None
        if any(layouts[i].b != layouts[i + 1].a for i in range(len(layouts) - 1)):  # type: ignore[union-attr]
            return None
        if any(v.type.shape[:-1] != op.results[0].type.shape[:-1] for v in parts):
            return None
        view = _Layout(layouts[0].buffer, layouts[0].a, layouts[-1].b)  # type: ignore[union-attr]
        out = self.slot(op.results[0])
        self.layouts[out] = view
        return ConcatView([op], out, view)

    # ---- running -------------------------------------------------------------------------------------------

    def run(self, inputs: Mapping[str, np.ndarray], hooks: Hooks) -> dict[str, np.ndarray]:
        names, arrays = ordered_inputs(self.program, inputs)
        self.symbols = {}
        for arg, name, array in zip(self.program.inputs, names, arrays):
            self._check_input(arg, name, array)
        self.hooks = hooks
        self._cache = {}
        env: Env = [None] * len(self.slots)
        outputs = self.run_block(self.main, env, arrays)
        return dict(zip(output_names(self.program), outputs, strict=True))

    def _check_input(self, arg: Value, name: str, array: np.ndarray) -> None:
        t = arg.type
        problem = None
        if array.dtype != t.np_dtype or array.ndim != t.rank:
            problem = f"has element type {array.dtype} and shape {array.shape}, declared {t}"
        else:
            for dim, extent in zip(t.shape, array.shape):
                if isinstance(dim, int) and dim != extent:
                    problem = f"has shape {array.shape}, declared {t}"
                elif isinstance(dim, str) and self.symbols.setdefault(dim, extent) != extent:
                    problem = f"has shape {array.shape} but '{dim}' is already {self.symbols[dim]} (declared {t})"
        if problem:
            raise InterpreterError(f"input '{name}' {problem}")

    def run_block(self, plan: BlockPlan, env: Env, args: list[np.ndarray]) -> list[np.ndarray]:
        for slot, array in zip(plan.arg_slots, args, strict=True):
            env[slot] = array
        observer = self.hooks.observer
        if observer is None:
            for step in plan.steps:
                step(env)
        else:
            for step in plan.steps:
                step(env)
                for op in step.ops:
                    operands = [None if v is None else env[self.slots[id(v)]] for v in op.operands]
                    observer(op, operands, [env[self.slots[id(r)]] for r in op.results])
        return [env[s] for s in plan.yield_slots]

    def cached(self, op: Operation, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The interpreter's per-run cache, for kernels that use it."""
        key = id(op)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


# ---- steps ---------------------------------------------------------------------------------------------------

@dataclass
class ConstantStep(Step):
    out: int
    value: np.ndarray

    def __call__(self, env: Env) -> None:
        env[self.out] = self.value


class KernelStep(Step):
    """An op run by the interpreter's own kernel, resolved once."""

    def __init__(self, plan: Plan, op: Operation) -> None:
        super().__init__([op])
        fn = plan.kernels.get(op.name)
        if fn is None:
            raise InterpreterError(f"no kernel for '{op.name}'{op_location(op)}")
        self.fn, self.op, self.plan = fn, op, plan
        self.args = [None if v is None else plan.slot(v) for v in op.operands]
        self.outs = [plan.slot(r) for r in op.results]

    def __call__(self, env: Env) -> None:
        op = self.op
        try:
            results = self.fn(op, [None if s is None else env[s] for s in self.args], self.plan)  # type: ignore[arg-type]
        except CimcError:
            raise
        except Exception as e:  # noqa: BLE001  (a kernel failure must name the op that caused it)
            raise InterpreterError(f"'{op.name}'{op_location(op)} failed: {type(e).__name__}: {e}") from e
        if len(results) != len(self.outs):
            raise InterpreterError(f"'{op.name}'{op_location(op)} produced {len(results)} values for {len(self.outs)} results")
        for slot, value in zip(self.outs, results):
            env[slot] = np.asarray(value)


@dataclass
class ConcatView(Step):
    out: int
    view: _Layout

    def __call__(self, env: Env) -> None:
        env[self.out] = env[self.view.buffer][..., self.view.a:self.view.b]


@dataclass
class AssembleStep(Step):
    """The vectors the MVMs over these operands drive, stored row by row: (x_1; ...; x_k; ones)^T as a (rows, N) array.

    N is the number of vectors (the batch, or every leading index flattened);
    with each input row's N values contiguous, every read group's rows are a
    contiguous block and its product W^T x^T is one BLAS call on contiguous
    operands. The slot holds (that array, the leading shape).
    """

    args: list[int]
    bias_rows: int
    out: int
    _ones: dict[tuple, np.ndarray] = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        inputs = [env[s] for s in self.args if s >= 0]
        lead = inputs[0].shape[:-1]
        if any(a.shape[:-1] != lead for a in inputs):
            lead = np.broadcast_shapes(*(a.shape[:-1] for a in inputs))
            inputs = [np.broadcast_to(a, lead + a.shape[-1:]) for a in inputs]
        n = math.prod(lead)
        parts = [a.reshape(n, a.shape[-1]).T for a in inputs]
        if self.bias_rows:
            key = (n, inputs[0].dtype)
            if key not in self._ones:
                self._ones[key] = np.ones((self.bias_rows, n), inputs[0].dtype)
            parts.append(self._ones[key])
        env[self.out] = (np.concatenate(parts, axis=0) if len(parts) > 1 else np.ascontiguousarray(parts[0]), lead)


def logical(stored: np.ndarray, lead: tuple) -> np.ndarray:
    """A (columns, N) array as the program's (..., columns) value: a view."""
    return stored.T.reshape(lead + (stored.shape[0],))


class ReadGroup:
    """The tiles one read serves: their weights side by side, the DAC of their rows, and their read noise."""

    def __init__(self, plan: Plan, input_key: tuple) -> None:
        self.plan = plan
        self.input_key = input_key
        self.tiles: list[Operation] = []
        self.columns: dict[int, tuple[int, int]] = {}
        self.width = 0
        self.noise_here = True  # False when a fused analog sum draws the noise of the whole column
        self.offset = 0  # where its columns start in its read's bank
        self.driven_slot = -1
        self.read: ReadStep | None = None
        self._variance: np.ndarray | None = None

    def add(self, tile: Operation) -> None:
        c0, c1 = tile.attributes["cols"]  # type: ignore[misc]
        self.columns[id(tile)] = (self.width, self.width + int(c1) - int(c0))
        self.width += int(c1) - int(c0)
        self.tiles.append(tile)

    def finish(self) -> None:
        first = self.tiles[0]
        self.rows = tuple(int(r) for r in first.attributes["rows"])  # type: ignore[union-attr]
        self.dtype = first.results[0].type.np_dtype
        self.input_scale = float(first.attributes.get("input_scale", 1.0))  # type: ignore[arg-type]
        rs = first.attributes.get("row_scale")
        row_scale = rs.array if isinstance(rs, Tensor) else None
        self.row_scale = None if row_scale is None or bool((row_scale == 1.0).all()) else row_scale.astype(self.dtype)

    def conductances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(G+, G-, g_scale) of every column of the group on this chip."""
        sim = self.plan.sim
        parts = [sim.tile_conductances(t) for t in self.tiles]
        scale = np.concatenate([t.attributes["g_scale"].array for t in self.tiles])  # type: ignore[union-attr]
        return np.concatenate([p for p, _ in parts], axis=1), np.concatenate([n for _, n in parts], axis=1), scale

    def weights(self) -> np.ndarray:
        sim = self.plan.sim
        if not sim.quantized:  # exact: the weights as compiled
            return np.concatenate([sim.exact_weights(t) for t in self.tiles], axis=1).astype(self.dtype)
        g_pos, g_neg, scale = self.conductances()
        return ((g_pos - g_neg) / scale).astype(self.dtype)

    @property
    def variance_t(self) -> np.ndarray:
        """Per column and row (transposed, as reads use it), the read-noise variance of the column value per unit x_i^2:
        sigma^2 (G+^2 + G-^2) / s^2.

        At read-voltage scale k the column value and its noise both scale by k: the variance by k^2.
        """
        if self._variance is None:
            g_pos, g_neg, scale = self.conductances()
            sim = self.plan.sim
            sigma = sim.hw.nonideality.read_noise_rel * sim.vread_scale  # the noise current scales with Vread too
            self._variance = np.ascontiguousarray((sigma ** 2 * (g_pos ** 2 + g_neg ** 2) / scale ** 2).astype(self.dtype).T)
        return self._variance


class ReadStep(Step):
    """The reads of every group over one input vector: one DAC pass where the groups allow it, one product per group.

    The products lie side by side in one buffer (the bank), stored column by
    column ((width, N), see ``AssembleStep``), so that the conversions after
    them see one buffer of contiguous columns; each tile's value is a view of it.
    """

    def __init__(self, plan: Plan, groups: list[ReadGroup], input_slot: int) -> None:
        super().__init__([t for g in groups for t in g.tiles])
        sim = plan.sim
        self.plan, self.groups, self.input = plan, groups, input_slot
        self.bank = plan.new_slot()
        self.stored = plan.new_slot()
        self.width = 0
        for g in groups:
            g.offset = self.width
            g.driven_slot = plan.new_slot()  # the DAC outputs, for a fused sum's noise
            self.width += g.width
        self.quantized = sim.quantized
        self.dac_bits = sim.hw.converters.dac_bits
        dtype = groups[0].dtype
        self.dtype = dtype
        self.vread = None if sim.vread_scale == 1.0 else dtype.type(sim.vread_scale)
        self.weights_t = [np.ascontiguousarray(g.weights().T) for g in groups]
        self.outs = []
        for g in groups:
            for tile in g.tiles:
                a, b = g.columns[id(tile)]
                out = plan.slot(tile.results[0])
                plan.layouts[out] = _Layout(self.bank, g.offset + a, g.offset + b, self.stored)
                self.outs.append((out, g.offset + a, g.offset + b))
        # One DAC pass over the whole vector when every group has the same full scale and the rows do not overlap.
        rows = sorted(g.rows for g in groups)
        disjoint = all(rows[i][1] <= rows[i + 1][0] for i in range(len(rows) - 1))
        self.shared_dac = disjoint and len({g.input_scale for g in groups}) == 1
        self.row_scale: np.ndarray | None = None
        if self.shared_dac and any(g.row_scale is not None for g in groups):
            full = np.ones(max(r1 for _, r1 in rows), dtype)
            for g in groups:
                if g.row_scale is not None:
                    full[g.rows[0]:g.rows[1]] = g.row_scale
            self.row_scale = full[:, None]
        self.span = (rows[0][0], rows[-1][1])

    def driven(self, env: Env) -> list[np.ndarray]:
        """Each group's DAC output (quantized fidelities) or driven input x / r (exact), as (rows, N)."""
        x_all = env[self.input][0]
        counts = self.plan.sim.saturation if self.quantized else None
        if self.shared_dac:
            r0, r1 = self.span
            x = x_all[r0:r1]
            if self.row_scale is not None:
                x = x / self.row_scale[r0:r1]
            if counts is not None:
                scale = self.groups[0].input_scale
                within = x.size == 0 or (x.max() <= scale and x.min() >= -scale)  # one check for every group
                for g in self.groups:
                    rows = x[g.rows[0] - r0:g.rows[1] - r0]
                    if within:
                        counts.dac_within(g.tiles[0], rows.size)
                    else:
                        counts.dac(g.tiles[0], rows, g.input_scale)
            if self.quantized:
                x = dac_quantize(x, self.groups[0].input_scale, self.dac_bits)
            return [x[g.rows[0] - r0:g.rows[1] - r0] for g in self.groups]
        out = []
        for g in self.groups:
            x = x_all[g.rows[0]:g.rows[1]]
            if g.row_scale is not None:
                x = x / g.row_scale[:, None]
            if counts is not None:
                counts.dac(g.tiles[0], x, g.input_scale)
            out.append(dac_quantize(x, g.input_scale, self.dac_bits) if self.quantized else x)
        return out

    def __call__(self, env: Env) -> None:
        xs = self.driven(env)
        sim = self.plan.sim
        if len(self.groups) == 1:
            bank = self.weights_t[0] @ xs[0]
            parts = [bank]
        else:
            bank = np.empty((self.width, xs[0].shape[1]), self.dtype)
            parts = []
            for g, x, w in zip(self.groups, xs, self.weights_t):
                part = bank[g.offset:g.offset + g.width]
                np.matmul(w, x, out=part)
                parts.append(part)
        if self.vread is not None:
            bank *= self.vread
        if sim.read_noise:
            here = [g.noise_here for g in self.groups]
            if all(here):  # one draw for the whole bank
                std = np.empty_like(bank)
                for g, x in zip(self.groups, xs):
                    np.matmul(g.variance_t, x * x, out=std[g.offset:g.offset + g.width])
                np.sqrt(std, out=std)
                std *= sim.standard_normal(std.shape, std.dtype)
                bank += std
            else:
                for g, x, part in zip(self.groups, xs, parts):
                    if g.noise_here:
                        part += np.sqrt(g.variance_t @ (x * x)) * sim.standard_normal(part.shape, part.dtype)
                    else:
                        env[g.driven_slot] = x
        view = logical(bank, env[self.input][1])
        env[self.stored] = bank
        env[self.bank] = view
        for out, a, b in self.outs:
            env[out] = view[..., a:b]


class SumStep(Step):
    """Analog sums over the same columns of several groups: one total over the groups' width, each sum a view.

    When the groups' tiles are read only through these sums, the read noise of
    the whole column (every device of every partial sum) is drawn here once:
    a sum of independent Gaussians is Gaussian with the summed variance.
    """

    def __init__(self, plan: Plan, ops: list[Operation], groups: list[ReadGroup]) -> None:
        super().__init__(list(ops))
        self.plan = plan
        self.groups = groups
        self.total = plan.new_slot()
        self.stored = plan.new_slot()
        fused = {id(op) for op in ops}
        only_here = all(use.op.name == "cim.analog_sum" and id(use.op) in fused
                        for g in groups for t in g.tiles for use in t.results[0].uses)
        self.noise = plan.sim.read_noise and only_here
        if self.noise:
            for g in groups:
                g.noise_here = False
        self.outs = []
        for op in ops:
            tile = next(v for v in op.operands if v is not None).op  # type: ignore[union-attr]
            a, b = groups[0].columns[id(tile)]
            out = plan.slot(op.results[0])
            plan.layouts[out] = _Layout(self.total, a, b, self.stored)
            self.outs.append((out, a, b))

    def __call__(self, env: Env) -> None:
        products = [env[g.read.stored][g.offset:g.offset + g.width] for g in self.groups]  # type: ignore[union-attr]
        total = products[0] + products[1] if len(products) > 1 else products[0].copy()
        for p in products[2:]:
            total += p
        if self.noise:
            var = None
            for g in self.groups:
                x = env[g.driven_slot]
                v = g.variance_t @ (x * x)
                var = v if var is None else var.__iadd__(v)
            np.sqrt(var, out=var)
            var *= self.plan.sim.standard_normal(var.shape, var.dtype)
            total += var
        view = logical(total, env[self.groups[0].read.input][1])  # type: ignore[union-attr]
        env[self.stored] = total
        env[self.total] = view
        for out, a, b in self.outs:
            env[out] = view[..., a:b]


class AdcStep(Step):
    """A linear ADC over each column's compiled range (identity at exact fidelity)."""

    def __init__(self, plan: Plan, op: Operation) -> None:
        super().__init__([op])
        self.plan = plan
        self.arg = plan.slot(op.operands[0])  # type: ignore[arg-type]
        self.out = plan.slot(op.results[0])
        self.tile = first_tile(op.operands[0].op)  # type: ignore[union-attr, arg-type]
        self.lo, self.hi = self.tile.attributes["z_lo"].array, self.tile.attributes["z_hi"].array  # type: ignore[union-attr]
        self.bits = int(op.attributes["bits"])  # type: ignore[arg-type]

    def __call__(self, env: Env) -> None:
        z = env[self.arg]
        if not self.plan.sim.quantized:
            env[self.out] = z
            return
        counts = self.plan.sim.saturation
        if counts is not None:
            counts.adc(self.tile, z, adc_codes(z, self.lo, self.hi, self.bits), (1 << self.bits) - 1, self.lo, self.hi)
        env[self.out] = adc_quantize(z, self.lo, self.hi, self.bits)


def _activation_key(op: Operation) -> tuple:
    return tuple(repr(op.attributes.get(k)) for k in ("function", "alpha", "beta", "clip"))


def _activate(op: Operation, z: np.ndarray, out: np.ndarray) -> None:
    """f(clip(z)) into ``out``, the interpreter's values; sigmoid and tanh in place, without temporaries.

    The values must be the interpreter's bit for bit: verification teacher-forces a quantized run from this
    exact run's states while the error bound follows the interpreter's, and an ulp apart is enough to flip a
    DAC or NL-ADC code on the other side of a threshold.
    """
    name = str(op.attributes["function"])
    if "clip" not in op.attributes and name in ("Sigmoid", "Tanh"):
        if name == "Tanh":
            np.tanh(z, out=out)
            return
        # exp(-|z|) never overflows; 1 / (1 + e) and e / (1 + e), the interpreter's two branches, bit for bit
        e = np.abs(z, out=out)
        np.negative(e, out=e)
        np.exp(e, out=e)
        denominator = e + out.dtype.type(1)
        # numerator 1 where z >= 0, else e: max(e, [z >= 0]), as e <= 1 there and e >= 0 elsewhere
        np.maximum(e, z >= 0, out=e)
        np.divide(e, denominator, out=e)
        return
    out[...] = apply_activation(op, z)


class ConvertStep(Step):
    """The NL-ADCs reading columns [a, b) of one buffer, converted together; each result is a view."""

    def __init__(self, plan: Plan, buffer: int, stored: int, entries: list[tuple[Operation, int, int]]) -> None:
        super().__init__([op for op, _, _ in entries])
        self.plan, self.buffer, self.stored = plan, buffer, stored
        self.lo = min(a for _, a, _ in entries)
        self.hi = max(b for _, _, b in entries)
        self.out = plan.new_slot()
        self.entries = entries
        self.outs = []
        for op, a, b in entries:
            slot = plan.slot(op.results[0])
            plan.layouts[slot] = _Layout(self.out, a - self.lo, b - self.lo)
            self.outs.append((slot, a - self.lo, b - self.lo))
        self.dtype = entries[0][0].results[0].type.np_dtype
        self._range: tuple[np.ndarray, np.ndarray] | None = None  # per column: the ramp's range at this Vread
        sim = plan.sim
        if sim.quantized:
            self.codes = self._column_codes(sim)
        else:  # runs of adjacent columns with the same function, one activation call each
            ordered = sorted(entries, key=lambda e: e[1])
            self.runs: list[tuple[Operation, int, int]] = []
            for op, a, b in ordered:
                last = self.runs[-1] if self.runs else None
                if last is not None and last[2] == a and _activation_key(last[0]) == _activation_key(op):
                    self.runs[-1] = (last[0], last[1], b)
                else:
                    self.runs.append((op, a, b))

    def _column_codes(self, sim: Simulator) -> ColumnCodes:
        ramps: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(1))]  # columns no NL-ADC reads
        index: dict[int, int] = {}
        ramp_of = np.zeros(self.hi - self.lo, np.intp)
        for op, a, b in self.entries:
            ramp_id = int(op.operands[1].op.attributes["image.ramp"])  # type: ignore[union-attr, arg-type]
            if ramp_id not in index:
                index[ramp_id] = len(ramps)
                ramps.append((sim.realized_thresholds(ramp_id) * sim.vread_scale,
                              np.asarray(sim.ramps[ramp_id]["output_levels"])))
            ramp_of[a - self.lo:b - self.lo] = index[ramp_id]
        return ColumnCodes(ramps, ramp_of, self.dtype)

    def __call__(self, env: Env) -> None:
        lead = env[self.buffer].shape[:-1]
        if self.stored >= 0:
            z_t = env[self.stored][self.lo:self.hi]
        else:
            z_t = env[self.buffer][..., self.lo:self.hi].reshape(-1, self.hi - self.lo).T
        sim = self.plan.sim
        if sim.quantized:
            out_t = self.codes(z_t)
            if sim.saturation is not None:
                self._count(z_t, lead)
        else:
            out_t = np.empty(z_t.shape, self.dtype)
            for op, a, b in self.runs:
                _activate(op, z_t[a - self.lo:b - self.lo], out_t[a - self.lo:b - self.lo])
        out = logical(out_t, lead)
        env[self.out] = out
        for slot, a, b in self.outs:
            env[slot] = out[..., a:b]

    def _count(self, z_t: np.ndarray, lead: tuple) -> None:
        """Saturation counts per NL-ADC; one vectorized range check first, details only where a column left its range."""
        sim = self.plan.sim
        counts = sim.saturation
        assert counts is not None
        if self._range is None:
            lo = np.full((self.hi - self.lo, 1), -np.inf)
            hi = np.full((self.hi - self.lo, 1), np.inf)
            for op, a, b in self.entries:
                ramp = sim.ramps[int(op.operands[1].op.attributes["image.ramp"])]  # type: ignore[union-attr, arg-type]
                lo[a - self.lo:b - self.lo] = float(ramp["z_lo"]) * sim.vread_scale
                hi[a - self.lo:b - self.lo] = float(ramp["z_hi"]) * sim.vread_scale
            self._range = (lo, hi)
        lo, hi = self._range
        left = ((z_t < lo) | (z_t > hi)).any(axis=1)
        if not left.any():
            for op, a, b in self.entries:
                counts.nl_adc_within(first_tile(op.operands[0].op), (b - a) * z_t.shape[1])  # type: ignore[union-attr, arg-type]
            return
        starts = [a - self.lo for _, a, _ in self.entries]
        order = np.argsort(starts, kind="stable")
        flags = np.empty(len(starts), bool)
        flags[order] = np.logical_or.reduceat(left, np.asarray(starts)[order])  # gaps between entries never leave
        for (op, a, b), leaves in zip(self.entries, flags):
            tile = first_tile(op.operands[0].op)  # type: ignore[union-attr, arg-type]
            rows = slice(a - self.lo, b - self.lo)
            if not leaves:
                counts.nl_adc_within(tile, z_t[rows].size)
                continue
            ramp = sim.ramps[int(op.operands[1].op.attributes["image.ramp"])]  # type: ignore[union-attr, arg-type]
            counts.nl_adc(tile, op, logical(z_t[rows], lead), float(ramp["z_lo"]), float(ramp["z_hi"]),
                          np.asarray(ramp["output_levels"]), sim.vread_scale)


class LoopStep(Step):
    """``cim.loop``: its body's plan run once per step, carried values threaded, scan values stacked."""

    def __init__(self, plan: Plan, op: Operation) -> None:
        super().__init__([op])
        self.plan, self.op = plan, op
        self.args = [None if v is None else plan.slot(v) for v in op.operands]
        self.outs = [plan.slot(r) for r in op.results]
        self.body = plan._block(op.regions[0].block)
        self.n_carried = len(op.operands) - 1

    def __call__(self, env: Env) -> None:
        trip, *carried = [None if s is None else env[s] for s in self.args]
        state = [a for a in carried if a is not None]
        hooks = self.plan.hooks
        scans: list[list[np.ndarray]] = [[] for _ in self.op.results[self.n_carried:]]
        steps = int(trip)  # type: ignore[arg-type]
        for t in range(steps):
            if hooks.carried_override is not None:
                state = hooks.carried_override(self.op, t, state)
            out = self.plan.run_block(self.body, env, [np.array(t, dtype=np.int64), *state])
            state = out[:self.n_carried]
            for acc, value in zip(scans, out[self.n_carried:]):
                acc.append(value)
            if hooks.progress is not None:
                hooks.progress(self.op.location or self.op.name, t + 1, steps)
        stacked = []
        for acc, res in zip(scans, self.op.results[self.n_carried:]):
            if acc:
                stacked.append(np.stack(acc))
            else:
                shape = [0] + [d if isinstance(d, int) else self.plan.symbols.get(str(d), 0) for d in res.type.shape[1:]]
                stacked.append(np.zeros(shape, res.type.np_dtype))
        for slot, value in zip(self.outs, state + stacked):
            env[slot] = value


def first_tile(op: Operation) -> Operation:
    """The tile behind a converter's input: the input itself, or the first partial sum of an analog sum."""
    return op if op.name == "cim.tile_mvm" else op.operands[0].op  # type: ignore[union-attr, return-value]
