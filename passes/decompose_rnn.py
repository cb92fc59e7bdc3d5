"""decompose-rnn: ONNX LSTM/GRU/RNN become one ``cim.loop`` per direction over a single time step.

The body holds what the hardware does each step: the gate MVMs (``cim.matvec``
of the input and of the hidden state, plus a diagonal one over c_(t-1) for the
i and f peepholes), the activations (``cim.activation``, carrying the op's
``clip``), and the elementwise cell update. ``sequence_lens`` becomes a
per-step mask: an entry past its length keeps its state and emits zeros. The
reverse direction walks t = T-1 .. 0, which is exactly "start at each
sequence's own last step" under that mask, and its stacked outputs are
flipped back to time order after the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cimc.attributes import Tensor
from cimc.builder import Builder
from cimc.diagnostics import CimcError
from cimc.dialects.builtin import constant_tensor
from cimc.ir import Block, Module, Operation, Region, Value
from cimc.kernels.activations import Activation, resolve_activations
from cimc.pass_manager import ModulePass, register_pass
from cimc.types import Dim, TensorType, dtype_name, scalar

_INT64_MIN = np.iinfo(np.int64).min
_GATES = {"onnx.LSTM": 4, "onnx.GRU": 3, "onnx.RNN": 1}
_DEFAULT_ACTIVATIONS = {"onnx.LSTM": ["Sigmoid", "Tanh", "Tanh"], "onnx.GRU": ["Sigmoid", "Tanh"], "onnx.RNN": ["Tanh"]}


@dataclass
class _Cell:
    """Everything one direction's loop body needs, resolved from the op's operands and attributes."""

    kind: str
    d: int
    reverse: bool
    hidden: int
    W: Tensor  # [gates * H, I], a view of the op's W
    R: Tensor  # [gates * H, H], a view of the op's R
    Wb: np.ndarray | None
    Rb: np.ndarray | None
    P: np.ndarray | None  # [3H] (i, o, f)
    acts: list[Activation]
    clip: float | None
    input_forget: bool
    linear_before_reset: bool



class _Step:
    """Builds one direction's loop body."""

    def __init__(self, cell: _Cell, body: Block, dtype: np.dtype, batch: Dim, location: str | None, prefix: str) -> None:
        self.cell = cell
        self.prefix = f"{prefix}.d{cell.d}"
        self.b = Builder(body, location=location)
        self.dtype = dtype
        self.batch = batch

    def t(self, width: int) -> TensorType:
        return TensorType(dtype_name(self.dtype), (self.batch, width))

    def const(self, array: np.ndarray) -> Value:
        return self.b.const(np.asarray(array, self.dtype))

    def gates(self, source: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """Rows lo:hi of W or R (gates times H), transposed to the [in, out] an MVM takes: a view, not a copy
        (form-mvm stacks an MVM's parts into its one copy of them)."""
        rows = source.array[lo:hi]
        if rows.dtype != self.dtype:  # ONNX gives X, W and R one type; a model that does not is computed in X's
            return Tensor.adopt(rows.T.astype(self.dtype))
        return source.view(rows.T)

    def matvec(self, x: Value, weights: Tensor, block: str, part: str) -> Value:
        return self.b.value("cim.matvec", [x], self.t(weights.array.shape[1]),
                            {"weights": weights.renamed(f"{block}.{part}"), "block": block})

    def add(self, a: Value, b: Value) -> Value:
        return self.b.value("onnx.Add", [a, b], a.type)

    def mul(self, a: Value, b: Value) -> Value:
        return self.b.value("onnx.Mul", [a, b], a.type)

    def affine(self, terms: list[tuple[Value, Tensor, str]], bias: np.ndarray | None, block: str) -> Value:
        """sum_k x_k @ W_k (+ bias): the shape form-mvm merges into one MVM with a bias row."""
        total = None
        for x, w, part in terms:
            y = self.matvec(x, w, block, part)
            total = y if total is None else self.add(total, y)
        assert total is not None
        return total if bias is None else self.add(total, self.const(bias))

    def slice(self, x: Value, start: int, width: int) -> Value:
        b = self.b
        args = [b.const(np.array([start], np.int64)), b.const(np.array([start + width], np.int64)), b.const(np.array([1], np.int64))]
        return b.value("onnx.Slice", [x, *args], self.t(width))

    def act(self, x: Value, act: Activation, clip: bool = True) -> Value:
        attrs: dict[str, object] = {"function": act.name}
        if act.alpha is not None:
            attrs["alpha"] = float(act.alpha)
        if act.beta is not None:
            attrs["beta"] = float(act.beta)
        if clip and self.cell.clip is not None:
            attrs["clip"] = float(self.cell.clip)
        return self.b.value("cim.activation", [x], x.type, attrs)

    def bias(self, lo: int, hi: int) -> np.ndarray | None:
        c = self.cell
        if c.Wb is None or c.Rb is None:
            return None
        return c.Wb[lo:hi] + c.Rb[lo:hi]

    def lstm(self, x: Value, h: Value, c: Value) -> tuple[Value, Value]:
        cell, H = self.cell, self.cell.hidden
        name = self.prefix
        terms = [(x, self.gates(cell.W), "W"), (h, self.gates(cell.R), "R")]
        if cell.P is not None:
            diag = np.zeros((H, 4 * H), self.dtype)
            diag[np.arange(H), np.arange(H)] = cell.P[:H]  # i
            diag[np.arange(H), 2 * H + np.arange(H)] = cell.P[2 * H:]  # f
            terms.append((c, Tensor.adopt(diag), "P"))
        z = self.affine(terms, self.bias(0, 4 * H), f"{name}.gates")
        f_act, g_act, h_act = cell.acts
        i = self.act(self.slice(z, 0, H), f_act)
        if cell.input_forget:
            forget = self.b.value("onnx.Sub", [self.const(np.array(1.0)), i], i.type)
        else:
            forget = self.act(self.slice(z, 2 * H, H), f_act)
        g = self.act(self.slice(z, 3 * H, H), g_act)
        c_new = self.add(self.mul(forget, c), self.mul(i, g))
        pre_o = self.slice(z, H, H)
        if cell.P is not None:
            pre_o = self.add(pre_o, self.mul(c_new, self.const(cell.P[H:2 * H])))
        o = self.act(pre_o, f_act)
        return self.mul(o, self.act(c_new, h_act, clip=False)), c_new

    def gru(self, x: Value, h: Value) -> Value:
        cell, H = self.cell, self.cell.hidden
        name = self.prefix
        f_act, g_act = cell.acts
        zr = self.affine([(x, self.gates(cell.W, 0, 2 * H), "W"), (h, self.gates(cell.R, 0, 2 * H), "R")],
                         self.bias(0, 2 * H), f"{name}.zr")
        z = self.act(self.slice(zr, 0, H), f_act)
        r = self.act(self.slice(zr, H, H), f_act)
        W_h, R_h = self.gates(cell.W, 2 * H), self.gates(cell.R, 2 * H)
        if cell.linear_before_reset:
            wb = None if cell.Wb is None else cell.Wb[2 * H:]
            rb = None if cell.Rb is None else cell.Rb[2 * H:]
            pre_h = self.add(self.affine([(x, W_h, "W")], wb, f"{name}.hx"),
                             self.mul(r, self.affine([(h, R_h, "R")], rb, f"{name}.hh")))
        else:
            pre_h = self.affine([(x, W_h, "W"), (self.mul(r, h), R_h, "R")], self.bias(2 * H, 3 * H), f"{name}.h")
        hh = self.act(pre_h, g_act)
        one_minus_z = self.b.value("onnx.Sub", [self.const(np.array(1.0)), z], z.type)
        return self.add(self.mul(one_minus_z, hh), self.mul(z, h))

    def rnn(self, x: Value, h: Value) -> Value:
        cell = self.cell
        pre = self.affine([(x, self.gates(cell.W), "W"), (h, self.gates(cell.R), "R")], self.bias(0, cell.hidden), self.prefix)
        return self.act(pre, cell.acts[0])


def _require_constant(op: Operation, index: int, what: str) -> Tensor | None:
    value = op.operands[index] if index < len(op.operands) else None
    if value is None:
        return None
    tensor = constant_tensor(value)
    if tensor is None:
        raise CimcError(f"{op.location or op.name}: decompose-rnn needs {what} to be a constant (weights are programmed once)")
    return tensor


def decompose(op: Operation, prefix: str) -> None:
    """Replace one recurrent op by its per-direction loops and the glue that rebuilds Y, Y_h, Y_c.

    ``prefix`` names the op's weight blocks (``<prefix>.d0.gates`` ...) uniquely in the module.
    """
    block = op.parent
    assert block is not None
    a = op.attributes
    kind = op.name
    gates = _GATES[kind]
    H = int(a["hidden_size"])  # type: ignore[arg-type]
    direction = str(a.get("direction", "forward"))
    layout = int(a.get("layout", 0))  # type: ignore[arg-type]
    num_dirs = 2 if direction == "bidirectional" else 1
    X = op.operands[0]
    assert X is not None
    seq_axis, batch_axis = (0, 1) if layout == 0 else (1, 0)
    T_dim, B_dim = X.type.shape[seq_axis], X.type.shape[batch_axis]
    dtype = X.type.np_dtype
    W, R, bias_tensor = (_require_constant(op, i, n) for i, n in ((1, "W"), (2, "R"), (3, "B")))
    peepholes = _require_constant(op, 7, "P") if kind == "onnx.LSTM" else None
    Bias, P = (None if t is None else t.array for t in (bias_tensor, peepholes))
    assert W is not None and R is not None
    names = a.get("activations")
    per_dir = len(_DEFAULT_ACTIVATIONS[kind])
    names_list = list(names) if isinstance(names, tuple) else None
    if kind == "onnx.RNN" and names_list is not None and num_dirs == 1 and len(names_list) == 2:
        names_list = names_list[:1]  # the RNN schema's default lists Tanh twice even for one direction
    try:
        acts = resolve_activations(names_list, _floats(a.get("activation_alpha")), _floats(a.get("activation_beta")),
                                   per_dir, num_dirs, _DEFAULT_ACTIVATIONS[kind])
    except ValueError as e:
        raise CimcError(f"{op.location or op.name}: {e}") from None
    clip = a.get("clip")
    b = Builder(block, op, op.location)
    ftype = X.type.dtype

    shape = b.value("onnx.Shape", [X], TensorType("i64", (3,)))
    trip = b.value("onnx.Gather", [shape, b.const(np.array(seq_axis, np.int64))], scalar(), {"axis": 0})
    last = b.value("onnx.Sub", [trip, b.const(np.array(1, np.int64))], scalar()) if direction != "forward" else None
    lens = None
    if len(op.operands) > 4 and op.operands[4] is not None:
        lens = b.value("onnx.Cast", [op.operands[4]], TensorType("i64", (B_dim,)), {"to": 7})
    state_type = TensorType(ftype, (B_dim, H))

    def initial(index: int, d: int) -> Value:
        given = op.operands[index] if len(op.operands) > index else None
        if given is not None:
            return b.value("onnx.Gather", [given, b.const(np.array(d, np.int64))], state_type, {"axis": 0 if layout == 0 else 1})
        batch = b.value("onnx.Shape", [X], TensorType("i64", (1,)), {"start": batch_axis, "end": batch_axis + 1})
        dims = b.value("onnx.Concat", [batch, b.const(np.array([H], np.int64))], TensorType("i64", (2,)), {"axis": 0})
        return b.value("onnx.ConstantOfShape", [dims], state_type, {"value": np.zeros(1, dtype)})

    ys, finals = [], []
    for d in range(num_dirs):
        reverse = direction == "reverse" or d == 1
        cell = _Cell(kind, d, reverse, H, W.view(W.array[d]), R.view(R.array[d]),
                     None if Bias is None else Bias[d, :gates * H], None if Bias is None else Bias[d, gates * H:],
                     None if P is None else P[d], acts[d], None if clip is None else float(clip),  # type: ignore[arg-type]
                     bool(a.get("input_forget", 0)), bool(a.get("linear_before_reset", 0)))
        n_state = 2 if kind == "onnx.LSTM" else 1
        inits = [initial(5, d)] + ([initial(6, d)] if n_state == 2 else [])
        body = Block([scalar()] + [state_type] * n_state)
        step = _Step(cell, body, dtype, B_dim, op.location, prefix)
        s, *state = body.args
        t = s if not reverse else step.b.value("onnx.Sub", [last, s], scalar())  # type: ignore[list-item]
        x_t = step.b.value("onnx.Gather", [X, t], TensorType(ftype, (B_dim, X.type.shape[2])), {"axis": seq_axis})
        if kind == "onnx.LSTM":
            h_new, c_new = step.lstm(x_t, state[0], state[1])
            new_state = [h_new, c_new]
        else:
            h_new = step.gru(x_t, state[0]) if kind == "onnx.GRU" else step.rnn(x_t, state[0])
            new_state = [h_new]
        y = h_new
        if lens is not None:
            less = step.b.value("onnx.Less", [t, lens], TensorType("bool", (B_dim,)))
            valid = step.b.value("onnx.Unsqueeze", [less, step.b.const(np.array([1], np.int64))], TensorType("bool", (B_dim, 1)))
            new_state = [step.b.value("onnx.Where", [valid, new, old], state_type) for new, old in zip(new_state, state)]
            y = step.b.value("onnx.Where", [valid, h_new, step.const(np.array(0.0))], state_type)
        step.b.create("cim.yield", [*new_state, y], [])
        loop = b.create("cim.loop", [trip, *inits], [state_type] * n_state + [TensorType(ftype, (T_dim, B_dim, H))],
                        regions=[Region(body)])
        y_seq = loop.results[-1]
        if reverse:
            flip = [b.const(np.array([v], np.int64)) for v in (-1, _INT64_MIN, 0, -1)]
            y_seq = b.value("onnx.Slice", [y_seq, *flip], y_seq.type)
        ys.append(y_seq)
        finals.append(loop.results[:n_state])
    _rebuild_outputs(op, b, ys, finals, layout)
    op.erase()


def _floats(value: object) -> list[float] | None:
    return [float(v) for v in value] if isinstance(value, tuple) else None  # type: ignore[union-attr]


def _rebuild_outputs(op: Operation, b: Builder, ys: list[Value], finals: list[list[Value]], layout: int) -> None:
    """Stack per-direction results into ONNX's Y [T, D, B, H] and Y_h/Y_c [D, B, H] (or layout 1)."""
    def stack(parts: list[Value], axis: int, declared: TensorType, perm: tuple[int, ...] | None, name: str | None) -> Value:
        axes = b.const(np.array([axis], np.int64))
        expanded = []
        for p in parts:
            shape = list(p.type.shape)
            shape.insert(axis, 1)
            expanded.append(b.value("onnx.Unsqueeze", [p, axes], TensorType(p.type.dtype, tuple(shape))))
        if len(expanded) == 1:
            joined = expanded[0]
        else:
            shape = list(expanded[0].type.shape)
            shape[axis] = len(expanded)
            joined = b.value("onnx.Concat", expanded, TensorType(declared.dtype, tuple(shape)), {"axis": axis})
        if perm is not None:
            joined = b.value("onnx.Transpose", [joined], TensorType(declared.dtype, tuple(joined.type.shape[i] for i in perm)), {"perm": perm})
        final = b.value("onnx.Identity", [joined], declared) if joined.type != declared else joined
        final.name = name  # keep the ONNX tensor name, so dumps and per-layer verification can find it
        return final

    for index, result in enumerate(op.results):
        if not result.uses:
            continue
        if index == 0:
            new = stack(ys, 1, result.type, (2, 0, 1, 3) if layout == 1 else None, result.name)
        else:
            new = stack([f[index - 1] for f in finals], 0, result.type, (1, 0, 2) if layout == 1 else None, result.name)
        result.replace_all_uses_with(new)


@register_pass
@dataclass(frozen=True)
class DecomposeRNN(ModulePass):
    """Turn ONNX LSTM/GRU/RNN ops into one structured loop per direction over a single time step.

    Every direction, layout, activation, clip, peephole, input_forget,
    linear_before_reset and sequence_lens setting the importer accepts is kept.
    """

    name = "decompose-rnn"

    def apply(self, module: Module) -> bool:
        ops = [op for op in module.walk() if op.name in _GATES]
        taken: set[str] = set()
        for index, op in enumerate(ops):
            base = re.sub(r"[^A-Za-z0-9_]+", "_", (op.location or "").rpartition(":")[2]).strip("_") or f"{op.name[5:].lower()}{index}"
            prefix, n = base, 0
            while prefix in taken:
                n += 1
                prefix = f"{base}_{n}"
            taken.add(prefix)
            decompose(op, prefix)
        return bool(ops)
