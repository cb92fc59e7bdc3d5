"""Reference kernels for the ONNX recurrent ops LSTM, GRU and RNN (opsets 7, 14, 22).

Every input and attribute of the ops is honoured. Arithmetic stays in the
inputs' floating dtype so float32 results track onnxruntime's to rounding.
Each kernel is vectorised over the batch and loops over time only.

Conventions settled against onnxruntime where the ONNX text is loose:

* ``clip`` bounds every gate pre-activation (after bias and peephole terms)
  to ``[-clip, clip]``; the LSTM cell state fed to ``h`` is not clipped.
* With ``sequence_lens``, a batch entry stops at its own length: its ``Y``
  rows past the length are zero, its ``Y_h``/``Y_c`` are the state after its
  last valid step, and the reverse direction starts from that last valid step.
  A length of 0 is rejected, because runtimes disagree on its ``Y_h``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cimc.kernels.activations import resolve_activations

# One time step: (input projection X_t W^T + Wb for this step, state) -> new state.
# The state tuple's first element is the hidden state H_t.
_Step = Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]

_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def lstm(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
    *,
    hidden_size: int,
    direction: str = "forward",
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    input_forget: int = 0,
    layout: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX LSTM: returns ``(Y, Y_h, Y_c)``.

    Gate order in ``W``/``R``/``B`` is i, o, f, c and in ``P`` it is i, o, f;
    the output-gate peephole sees the new cell state C_t. ``input_forget``
    couples the gates as f = 1 - i. Activations (f, g, h) default to
    Sigmoid, Tanh, Tanh.
    """
    pb = _prepare(
        "LSTM", X, W, R, B, sequence_lens, {"initial_h": initial_h, "initial_c": initial_c},
        gates=4, hidden_size=hidden_size, direction=direction, layout=layout,
    )
    H = hidden_size
    if P is not None:
        P = _check_param("P", P, pb.dtype, (pb.num_directions, 3 * H))
    acts = resolve_activations(
        _as_list(activations), _as_list(activation_alpha), _as_list(activation_beta),
        3, pb.num_directions, ["Sigmoid", "Tanh", "Tanh"],
    )
    bound = _clip_bound(clip, pb.dtype)

    def make_step(d: int) -> _Step:
        f, g, h = acts[d]
        R_t = pb.R[d].T
        Rb = pb.recurrent_bias(d)
        p_i, p_o, p_f = (np.zeros(H, pb.dtype),) * 3 if P is None else np.split(P[d], 3)

        def step(xw: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            h_prev, c_prev = state
            pre_i, pre_o, pre_f, pre_c = np.split(xw + (h_prev @ R_t + Rb), 4, axis=-1)
            i = f(_clip(pre_i + p_i * c_prev, bound))
            forget = 1 - i if input_forget else f(_clip(pre_f + p_f * c_prev, bound))
            c = forget * c_prev + i * g(_clip(pre_c, bound))
            o = f(_clip(pre_o + p_o * c, bound))
            return o * h(c), c

        return step

    Y, (Y_h, Y_c) = _run(pb, direction, make_step)
    return _outputs(layout, Y, Y_h, Y_c)


def gru(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    hidden_size: int,
    direction: str = "forward",
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    linear_before_reset: int = 0,
    layout: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX GRU: returns ``(Y, Y_h)``.

    Gate order in ``W``/``R``/``B`` is z, r, h. With ``linear_before_reset``
    the reset gate scales ``H_{t-1} Rh^T + Rbh`` instead of ``H_{t-1}``
    (the cuDNN/PyTorch form). Activations (f, g) default to Sigmoid, Tanh.
    """
    pb = _prepare(
        "GRU", X, W, R, B, sequence_lens, {"initial_h": initial_h},
        gates=3, hidden_size=hidden_size, direction=direction, layout=layout,
    )
    H = hidden_size
    acts = resolve_activations(
        _as_list(activations), _as_list(activation_alpha), _as_list(activation_beta),
        2, pb.num_directions, ["Sigmoid", "Tanh"],
    )
    bound = _clip_bound(clip, pb.dtype)

    def make_step(d: int) -> _Step:
        f, g = acts[d]
        R_zr, R_h = pb.R[d, : 2 * H].T, pb.R[d, 2 * H :].T
        Rb = pb.recurrent_bias(d)
        Rb_zr, Rb_h = Rb[: 2 * H], Rb[2 * H :]

        def step(xw: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            (h_prev,) = state
            xw_zr, xw_h = xw[:, : 2 * H], xw[:, 2 * H :]
            z, r = np.split(f(_clip(xw_zr + (h_prev @ R_zr + Rb_zr), bound)), 2, axis=-1)
            if linear_before_reset:
                pre_h = xw_h + r * (h_prev @ R_h + Rb_h)
            else:
                pre_h = xw_h + ((r * h_prev) @ R_h + Rb_h)
            return ((1 - z) * g(_clip(pre_h, bound)) + z * h_prev,)

        return step

    Y, (Y_h,) = _run(pb, direction, make_step)
    return _outputs(layout, Y, Y_h)


def rnn(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    hidden_size: int,
    direction: str = "forward",
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    layout: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX RNN: returns ``(Y, Y_h)`` for ``H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)``.

    The activation defaults to Tanh. The schema's default ``activations`` is
    ``["Tanh", "Tanh"]`` even for one direction, so two names for a
    one-direction RNN are accepted when they are identical (the second would
    otherwise be silently dropped, as onnxruntime does).
    """
    pb = _prepare(
        "RNN", X, W, R, B, sequence_lens, {"initial_h": initial_h},
        gates=1, hidden_size=hidden_size, direction=direction, layout=layout,
    )
    names = _as_list(activations)
    if names is not None and pb.num_directions == 1 and len(names) == 2:
        if names[0].lower() != names[1].lower():
            raise ValueError(f"one-direction RNN given two different activations {names}")
        names = names[:1]
    acts = resolve_activations(
        names, _as_list(activation_alpha), _as_list(activation_beta), 1, pb.num_directions, ["Tanh"]
    )
    bound = _clip_bound(clip, pb.dtype)

    def make_step(d: int) -> _Step:
        (f,) = acts[d]
        R_t = pb.R[d].T
        Rb = pb.recurrent_bias(d)

        def step(xw: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            (h_prev,) = state
            return (f(_clip(xw + (h_prev @ R_t + Rb), bound)),)

        return step

    Y, (Y_h,) = _run(pb, direction, make_step)
    return _outputs(layout, Y, Y_h)


def _num_directions(direction: str) -> int:
    try:
        return _DIRECTIONS[direction]
    except KeyError:
        raise ValueError(
            f"direction must be one of {', '.join(_DIRECTIONS)}; got {direction!r}"
        ) from None


def _as_list(values: Sequence | None) -> list | None:
    return None if values is None else list(values)


def _check_param(name: str, value: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype != dtype:
        raise TypeError(f"{name} has dtype {value.dtype}, but X has {dtype}; ONNX requires one type T")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
    return value


@dataclass(frozen=True)
class _Problem:
    """Validated inputs of one recurrent op, in layout 0."""

    X: np.ndarray  # [T, B, I]
    W: np.ndarray  # [D, gates * H, I]
    R: np.ndarray  # [D, gates * H, H]
    B: np.ndarray | None  # [D, 2 * gates * H]
    lengths: np.ndarray  # [B], each in [1, T]
    initial_states: tuple[np.ndarray, ...]  # each [D, B, H]

    @property
    def dtype(self) -> np.dtype:
        return self.X.dtype

    @property
    def num_directions(self) -> int:
        return self.W.shape[0]

    def input_bias(self, d: int) -> np.ndarray:
        """Wb of direction ``d``, zeros if B is absent."""
        width = self.W.shape[1]
        return np.zeros(width, self.dtype) if self.B is None else self.B[d, :width]

    def recurrent_bias(self, d: int) -> np.ndarray:
        """Rb of direction ``d``, zeros if B is absent."""
        width = self.W.shape[1]
        return np.zeros(width, self.dtype) if self.B is None else self.B[d, width:]


def _prepare(
    op: str,
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    sequence_lens: np.ndarray | None,
    initial_states: dict[str, np.ndarray | None],
    *,
    gates: int,
    hidden_size: int,
    direction: str,
    layout: int,
) -> _Problem:
    """Validate the inputs every recurrent op shares and bring them to layout 0.

    Absent initial states become zeros and absent ``sequence_lens`` full length.
    """
    num_directions = _num_directions(direction)
    if layout not in (0, 1):
        raise ValueError(f"{op} layout must be 0 or 1, got {layout}")
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"{op} X must be 3-D, got shape {list(X.shape)}")
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"{op} X must be a floating tensor, got {X.dtype}")
    if layout == 1:
        X = X.transpose(1, 0, 2)
    seq_length, batch, input_size = X.shape
    H = hidden_size
    if H <= 0:
        raise ValueError(f"{op} hidden_size must be positive, got {H}")
    W = _check_param("W", W, X.dtype, (num_directions, gates * H, input_size))
    R = _check_param("R", R, X.dtype, (num_directions, gates * H, H))
    if B is not None:
        B = _check_param("B", B, X.dtype, (num_directions, 2 * gates * H))
    states = []
    for name, value in initial_states.items():
        if value is None:
            states.append(np.zeros((num_directions, batch, H), X.dtype))
            continue
        expected = (num_directions, batch, H) if layout == 0 else (batch, num_directions, H)
        value = _check_param(name, value, X.dtype, expected)
        states.append(value if layout == 0 else value.transpose(1, 0, 2))
    if sequence_lens is None:
        lengths = np.full(batch, seq_length, dtype=np.int64)
    else:
        lengths = np.asarray(sequence_lens)
        if not np.issubdtype(lengths.dtype, np.integer) or lengths.shape != (batch,):
            raise ValueError(
                f"{op} sequence_lens must be an integer tensor of shape [{batch}], "
                f"got {lengths.dtype} {list(lengths.shape)}"
            )
        if np.any(lengths < 1) or np.any(lengths > seq_length):
            raise ValueError(
                f"{op} sequence_lens must lie in [1, seq_length={seq_length}], got {lengths.tolist()}"
            )
        lengths = lengths.astype(np.int64)
    return _Problem(X, W, R, B, lengths, tuple(states))


def _clip_bound(clip: float | None, dtype: np.dtype) -> np.generic | None:
    if clip is None:
        return None
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return dtype.type(clip)


def _clip(x: np.ndarray, bound: np.generic | None) -> np.ndarray:
    return x if bound is None else np.clip(x, -bound, bound)


def _reverse_within_lengths(seq: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse each batch entry of time-major ``seq`` within its own length.

    Steps past an entry's length stay in place. The map is an involution, so
    it also takes reverse-order outputs back to time order.
    """
    t = np.arange(seq.shape[0])[:, None]
    src = np.where(t < lengths, lengths - 1 - t, t)
    return seq[src, np.arange(seq.shape[1])]


def _run(
    pb: _Problem, direction: str, make_step: Callable[[int], _Step]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Scan every direction over time.

    Returns Y as ``[T, D, B, H]`` and each final state as ``[D, B, H]``. An
    entry whose sequence has ended keeps its state frozen and emits zeros.
    """
    seq_length, batch, _ = pb.X.shape
    hidden = pb.R.shape[-1]
    outputs, finals = [], []
    for d in range(pb.num_directions):
        reverse = direction == "reverse" or d == 1
        xs = _reverse_within_lengths(pb.X, pb.lengths) if reverse else pb.X
        xw = xs @ pb.W[d].T + pb.input_bias(d)
        step = make_step(d)
        state = tuple(s[d] for s in pb.initial_states)
        Y = np.zeros((seq_length, batch, hidden), pb.dtype)
        for t in range(seq_length):
            valid = (t < pb.lengths)[:, None]
            new_state = step(xw[t], state)
            state = tuple(np.where(valid, new, old) for new, old in zip(new_state, state))
            Y[t] = np.where(valid, new_state[0], 0)
        outputs.append(_reverse_within_lengths(Y, pb.lengths) if reverse else Y)
        finals.append(state)
    return np.stack(outputs, axis=1), tuple(np.stack(s) for s in zip(*finals))


def _outputs(layout: int, Y: np.ndarray, *finals: np.ndarray) -> tuple[np.ndarray, ...]:
    """Lay out ``Y [T, D, B, H]`` and ``[D, B, H]`` finals per ``layout``."""
    if layout == 1:
        Y = Y.transpose(2, 0, 1, 3)
        finals = tuple(f.transpose(1, 0, 2) for f in finals)
    return (np.ascontiguousarray(Y), *(np.ascontiguousarray(f) for f in finals))
