"""What one inference does to the hardware, read from a programming image: reads, conversions, digital work.

The step program of the image is walked once into :class:`Event` records
grouped by schedule stage, with loops kept as nested :class:`Block` s and
their trip counts. The cost model prices these events under a converter
scheme; nothing here depends on a cost figure, so the three baselines and
every bit width of a sweep price the very same events.

Counting conventions (docs/cost-model.md, "What is counted"):

- A ``cim.tile_mvm`` is one read of its array region per input vector; its
  MACs are its weight rows (bias rows excluded) times its columns. Identity
  columns (block ``*.identity``) do no model arithmetic and count no MACs.
- ``cim.nl_adc`` / ``cim.adc`` convert ``cols`` columns per vector.
- ``cim.activation`` (an activation the compiler left digital) and onnx
  Sigmoid/Tanh/Softmax/... cost ``digital_activation_ops`` per output element;
  other onnx arithmetic one op per output element; data movement (Concat,
  Gather, Reshape, ...) and ``cim.analog_sum`` (currents adding on a wire) cost nothing.
- Symbolic dims: a dim whose name contains "batch" is the batch (1 per
  inference); any other symbolic or unknown dim is the sequence length. A
  loop runs its constant trip count, or the static dim its trip count is read
  from, else the sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cimc.diagnostics import CimcError
from cimc.dialects.cim import is_identity_tile
from cimc.image import Image, tile_devices
from cimc.ir import Block as IrBlock
from cimc.ir import Operation, Value

# Digital ops that only move or reinterpret data: addressing, no arithmetic.
_DATA_MOVEMENT = frozenset({
    "Concat", "Gather", "GatherElements", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split",
    "Shape", "ConstantOfShape", "Identity", "Flatten", "Expand", "Cast", "Size", "Range", "Tile", "Pad",
})
# Digital ops priced like an activation (a transcendental per element).
_TRANSCENDENTAL = frozenset({"Sigmoid", "Tanh", "Exp", "Log", "Softmax", "LogSoftmax", "Softplus", "Softsign",
                             "HardSigmoid", "Elu", "Selu", "Erf", "Sqrt", "Reciprocal", "Pow", "Gelu"})


@dataclass(frozen=True)
class Read:
    """One array read: the word lines driven and the devices that conduct."""

    layer: str
    array: int
    word_lines: int            # rows of the region (bias rows included: they are driven too)
    weight_columns: int        # differential pairs read
    conductance_us: float      # sum of the region's formed devices' conductances
    macs: int                  # model MACs (0 for an identity column)
    identity: bool
    vectors: int               # reads of this region per execution of its block
    inputs: tuple[str, ...]    # the values driven onto the rows (reads of one vector fetch it from the buffer once)


@dataclass(frozen=True)
class Conversion:
    """Columns of one array converted per vector: by the NL-ADC (with its ramp) or a linear ADC."""

    layer: str
    array: int
    columns: int
    bits: int
    nonlinear: bool            # a cim.nl_adc: the code is f(z)
    function: str | None       # the NL-ADC's activation
    ramp: int | None           # the manifest's ramp id of an NL-ADC
    of_identity: bool          # converts an identity column's read (a digital value's activation)
    vectors: int


@dataclass(frozen=True)
class Digital:
    """Digital work: ``values`` results of ``activation`` (LUT/PWL) or elementwise ops."""

    layer: str
    values: int
    activation: bool
    function: str | None = None


Event = Read | Conversion | Digital


@dataclass
class Block:
    """Stages of one block, in order; a stage holds events and nested loops that run in it."""

    stages: dict[int, list[Event | Loop]] = field(default_factory=dict)

    def add(self, stage: int, item: Event | Loop) -> None:
        self.stages.setdefault(stage, []).append(item)


@dataclass
class Loop:
    """A ``cim.loop``: ``trips`` executions of ``body`` (one per time step)."""

    layer: str
    trips: int
    body: Block


@dataclass(frozen=True)
class RampInfo:
    """An in-memory ramp column: where it is, its rows, and its conductance at each cycle of its sweep."""

    id: int
    array: int
    bit_line: int
    bits: int
    rows: int                   # word lines its step and calibration devices occupy
    two_device_steps: int       # steps wider than G_max, made of two devices
    cumulative_us: tuple[float, ...]  # ramp conductance at cycle 0..2^N - 1


@dataclass
class StepProgram:
    """The events of one inference of an image, and what the mapping occupies."""

    top: Block
    arrays: list[int]                      # used physical arrays
    rows: int
    cols: int
    array_layer: dict[int, str]            # the layer (source op) of each array's first region
    ramps: dict[int, RampInfo]
    seq_len: int
    symbolic_trips: bool                   # some loop's trip count is the (given or default) sequence length
    read_voltage_v: float


def _layer(op: Operation) -> str:
    loc = op.location
    return str(loc) if loc else op.name


def _extent(dim: object, seq_len: int, batch: int) -> int:
    if isinstance(dim, int):
        return dim
    return batch if isinstance(dim, str) and "batch" in dim.lower() else seq_len


def _elements(value: Value, seq_len: int, batch: int) -> int:
    return math.prod(_extent(d, seq_len, batch) for d in value.type.shape)


def _vectors(value: Value, seq_len: int, batch: int) -> int:
    """Vectors a converter or array result holds: every dim but the last (the columns)."""
    return math.prod(_extent(d, seq_len, batch) for d in value.type.shape[:-1])


def _first_tile(value: Value) -> Operation:
    op = value.op  # type: ignore[attr-defined]
    while op.name != "cim.tile_mvm":
        op = op.operands[0].op
    return op


def _constant(value: Value | None) -> np.ndarray | None:
    op = getattr(value, "op", None)
    if op is None or op.name != "builtin.constant":
        return None
    return np.asarray(getattr(op.attributes.get("value"), "array", None))


def _static_trip_count(loop: Operation) -> int | None:
    """The trip count when the program fixes it: a constant, or a static dim read by Gather(Shape(x), i)."""
    source = loop.operands[0]
    constant = _constant(source)
    if constant is not None and constant.size == 1 and np.issubdtype(constant.dtype, np.integer):
        return int(constant.reshape(-1)[0])
    op = getattr(source, "op", None)
    if op is not None and op.name == "onnx.Gather":
        shape_op = getattr(op.operands[0], "op", None)
        index = _constant(op.operands[1])
        if shape_op is not None and shape_op.name == "onnx.Shape" and index is not None and index.size == 1 \
                and not shape_op.attributes.get("start") and not shape_op.attributes.get("end"):
            dims = shape_op.operands[0].type.shape
            dim = dims[int(index.reshape(-1)[0])]
            return dim if isinstance(dim, int) else None
    return None


class _Reader:
    def __init__(self, image: Image, seq_len: int, batch: int) -> None:
        self.image = image
        self.seq_len = seq_len
        self.batch = batch
        hw = image.hardware
        d = hw.device
        self.delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
        self.g_min = d.g_min_us
        self._names: dict[int, str] = {}
        self.symbolic_trips = False  # a loop ran seq_len times because the program does not fix its trip count
        self._ramp_id = {(int(r["array"]), int(r["bit_line"])): int(r["id"]) for r in image.manifest["ramps"]}

    def name(self, value: Value | None) -> str:
        """A stable name for an operand, so that reads of one vector can be recognized as such."""
        if value is None:
            return "none"
        return self._names.setdefault(id(value), f"v{len(self._names)}")

    def conductance(self, k: int, rows: np.ndarray, cols: np.ndarray) -> float:
        levels = self.image.device_levels(k)[np.ix_(rows, cols)].astype(np.int64)
        formed = levels >= 0
        # Integer sums, then one multiply each: the same total on every CPU, whatever numpy's summation order.
        return int(formed.sum()) * self.g_min + int(levels[formed].sum()) * self.delta_g

    def block(self, ir_block: IrBlock) -> Block:
        out = Block()
        for op in ir_block.ops:
            stage = op.attributes.get("sched.stage")
            if stage is None:
                continue
            item = self.item(op)
            if item is not None:
                out.add(int(stage), item)  # type: ignore[arg-type]
        return out

    def item(self, op: Operation) -> Event | Loop | None:
        name = op.name
        layer = _layer(op)
        if name == "cim.loop":
            trips = _static_trip_count(op)
            if trips is None:
                self.symbolic_trips = True
                trips = self.seq_len
            return Loop(layer, trips, self.block(op.regions[0].block))
        if name == "cim.tile_mvm":
            k = int(op.attributes["array"])  # type: ignore[arg-type]
            r0, r1 = op.attributes["rows"]  # type: ignore[misc]
            c0, c1 = op.attributes["cols"]  # type: ignore[misc]
            word_lines, columns = int(r1 - r0), int(c1 - c0)
            bias = int(op.attributes.get("bias_rows", 0))  # type: ignore[arg-type]
            _, lines, pos, neg = tile_devices(op)  # the lines map-defects moved rows and columns onto, if it did
            g = self.conductance(k, lines, np.concatenate([pos, neg]))
            identity = is_identity_tile(op)
            return Read(layer, k, word_lines, columns, g, 0 if identity else (word_lines - bias) * columns, identity,
                        _vectors(op.results[0], self.seq_len, self.batch), tuple(self.name(v) for v in op.operands))
        if name in ("cim.nl_adc", "cim.adc"):
            tile = _first_tile(op.operands[0])
            vectors = _vectors(op.results[0], self.seq_len, self.batch)
            columns = int(op.results[0].type.shape[-1])  # type: ignore[arg-type]
            ramp = None
            if name == "cim.nl_adc":
                ramp_op = op.operands[1].op  # type: ignore[union-attr]
                if "image.ramp" in ramp_op.attributes:  # the manifest id, where the image names it
                    ramp = int(ramp_op.attributes["image.ramp"])  # type: ignore[arg-type]
                else:
                    key = (int(ramp_op.attributes["array"]), int(ramp_op.attributes["array_col"]))  # type: ignore[arg-type]
                    ramp = self._ramp_id[key]
            function = str(op.attributes["function"]) if name == "cim.nl_adc" else None
            return Conversion(layer, int(tile.attributes["array"]), columns, int(op.attributes["bits"]),  # type: ignore[arg-type]
                              name == "cim.nl_adc", function, ramp, is_identity_tile(tile), vectors)
        if name == "cim.activation":
            return Digital(layer, _elements(op.results[0], self.seq_len, self.batch), True, str(op.attributes.get("function")))
        if name.startswith("onnx."):
            kind = name.split(".", 1)[1]
            if kind in _DATA_MOVEMENT or not op.results:
                return None
            activation = kind in _TRANSCENDENTAL
            return Digital(layer, _elements(op.results[0], self.seq_len, self.batch), activation, kind if activation else None)
        return None  # builtin.*, cim.ramp (programmed, not executed), cim.analog_sum (a wire), cim.yield

    def ramp(self, entry: dict) -> RampInfo:
        k, col = int(entry["array"]), int(entry["bit_line"])
        steps = [int(n) for n in entry["step_devices"]]
        c0, c1 = (int(v) for v in entry["calibration_rows"])
        levels = self.image.device_levels(k)[:, col].astype(np.int64)

        def g(row: int) -> float:
            return 0.0 if levels[row] < 0 else float(self.g_min + levels[row] * self.delta_g)

        level = sum(g(r) for r in range(c0, c1))
        cumulative = [level]
        row = 0
        for n in steps:
            level += sum(g(r) for r in range(row, row + n))
            row += n
            cumulative.append(level)
        bits = int(entry["bits"])
        cumulative = (cumulative + [level] * (1 << bits))[: 1 << bits]
        return RampInfo(int(entry["id"]), k, col, bits, max(c1, row), sum(1 for n in steps if n > 1), tuple(cumulative))


def read_program(image: Image, seq_len: int, batch: int = 1) -> StepProgram:
    """The events of one inference of ``image`` over sequences of ``seq_len`` steps, ``batch`` samples."""
    if seq_len < 1 or batch < 1:
        raise CimcError(f"sequence length and batch must be at least 1 (got {seq_len}, {batch})")
    reader = _Reader(image, seq_len, batch)
    module = image.program()
    top = reader.block(module.body)
    array_layer: dict[int, str] = {}
    for op in module.walk():
        if op.name == "cim.tile_mvm":
            array_layer.setdefault(int(op.attributes["array"]), _layer(op))  # type: ignore[arg-type]
    arrays = sorted(int(a["index"]) for a in image.manifest["arrays"])
    for k in arrays:
        array_layer.setdefault(k, "ramps")
    hw = image.hardware
    ramps = {int(r["id"]): reader.ramp(r) for r in image.manifest["ramps"]}
    return StepProgram(top, arrays, hw.array.rows, hw.array.cols, array_layer, ramps, seq_len, reader.symbolic_trips,
                       hw.device.read_voltage_v)
