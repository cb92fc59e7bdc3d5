"""The activation functions of the ONNX recurrent ops (LSTM, GRU, RNN).

Where the ONNX text is loose, onnxruntime's reading is followed unless the
spec is explicit:

* ``activation_alpha`` and ``activation_beta`` are two independent queues:
  each activation, in order, takes the next alpha only if it uses an alpha and
  the next beta only if it uses a beta.
* A missing alpha/beta takes the default of the standalone ONNX operator of
  the same name (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0,
  ThresholdedRelu 1.0). Affine and ScaledTanh have no standalone operator any
  more, so they default to 0.0 as in onnxruntime. onnxruntime also uses 0.0
  for ThresholdedRelu, against the spec.
* ThresholdedRelu passes ``x`` only where ``x > alpha`` (the standalone
  operator and onnxruntime); the recurrent ops' text says ``>=``, which
  differs only at ``x == alpha``.
* Softplus is evaluated without overflow, so it stays finite where
  onnxruntime's ``log(1 + exp(x))`` becomes inf (x above about 88 in float32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cimc.kernels import portable_math


def _functions(m) -> dict[str, Callable[[np.ndarray, np.generic, np.generic], np.ndarray]]:  # noqa: ANN001
    """The activations with ``m``'s exp, expm1, tanh and log1p: numpy's (fast) or portable_math's (same bits on every CPU)."""

    def sigmoid(x: np.ndarray) -> np.ndarray:
        # Split by sign so exp never overflows.
        e = m.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def softplus(x: np.ndarray) -> np.ndarray:
        # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow.
        return np.maximum(x, 0) + m.log1p(m.exp(-np.abs(x)))

    return {
        "Relu": lambda x, a, b: np.maximum(x, 0),
        "Tanh": lambda x, a, b: m.tanh(x),
        "Sigmoid": lambda x, a, b: sigmoid(x),
        "Affine": lambda x, a, b: a * x + b,
        "LeakyRelu": lambda x, a, b: np.where(x >= 0, x, a * x),
        "ThresholdedRelu": lambda x, a, b: np.where(x > a, x, 0),
        "ScaledTanh": lambda x, a, b: a * m.tanh(b * x),
        "HardSigmoid": lambda x, a, b: np.clip(a * x + b, 0, 1),
        "Elu": lambda x, a, b: np.where(x >= 0, x, a * m.expm1(np.minimum(x, 0))),
        "Softsign": lambda x, a, b: x / (1 + np.abs(x)),
        "Softplus": lambda x, a, b: softplus(x),
    }


_FUNCTIONS = _functions(np)
_PORTABLE_FUNCTIONS = _functions(portable_math)

_CANONICAL: dict[str, str] = {name.lower(): name for name in _FUNCTIONS}

# (default alpha, default beta) of the activations that take them; None marks a
# parameter the activation does not use.
_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "Affine": (0.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (0.0, 0.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
}

SUPPORTED: tuple[str, ...] = tuple(_FUNCTIONS)


def canonical_name(name: str) -> str:
    """Map a case-insensitive ONNX activation name to its canonical spelling.

    ONNX models spell activations in any case (onnxruntime's LSTM and GRU
    lowercase them, though its RNN accepts only the canonical spelling), so
    everything downstream compares canonical names only.
    """
    try:
        return _CANONICAL[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; supported: {', '.join(SUPPORTED)}"
        ) from None


def takes_alpha(name: str) -> bool:
    """Whether the activation consumes an entry of ``activation_alpha``."""
    return _DEFAULTS.get(canonical_name(name), (None, None))[0] is not None


def takes_beta(name: str) -> bool:
    """Whether the activation consumes an entry of ``activation_beta``."""
    return _DEFAULTS.get(canonical_name(name), (None, None))[1] is not None


@dataclass(frozen=True)
class Activation:
    """One resolved activation: canonical name plus the alpha/beta it uses.

    ``alpha``/``beta`` are None exactly when the function does not use them,
    so two activations compare equal only if they compute the same function.
    Build instances with :meth:`create`, which normalises the name and fills
    defaults.
    """

    name: str
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.name not in _FUNCTIONS:
            raise ValueError(
                f"{self.name!r} is not a canonical activation name; "
                f"supported: {', '.join(SUPPORTED)} (use Activation.create for other spellings)"
            )
        if (self.alpha is not None) != takes_alpha(self.name):
            raise ValueError(f"{self.name} {'requires' if takes_alpha(self.name) else 'takes no'} alpha")
        if (self.beta is not None) != takes_beta(self.name):
            raise ValueError(f"{self.name} {'requires' if takes_beta(self.name) else 'takes no'} beta")

    @classmethod
    def create(cls, name: str, alpha: float | None = None, beta: float | None = None) -> Activation:
        """Build from any spelling of ``name``, defaulting a missing alpha/beta.

        Passing an alpha or beta to a function that does not use it is an
        error rather than being ignored, since it signals a mis-resolved list.
        """
        canonical = canonical_name(name)
        default_alpha, default_beta = _DEFAULTS.get(canonical, (None, None))
        if alpha is not None and default_alpha is None:
            raise ValueError(f"{canonical} takes no alpha (got {alpha})")
        if beta is not None and default_beta is None:
            raise ValueError(f"{canonical} takes no beta (got {beta})")
        return cls(
            canonical,
            None if default_alpha is None else float(default_alpha if alpha is None else alpha),
            None if default_beta is None else float(default_beta if beta is None else beta),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Apply elementwise in ``x``'s floating dtype (alpha/beta are cast to it)."""
        x = np.asarray(x)
        scalar = x.dtype.type
        alpha = scalar(0 if self.alpha is None else self.alpha)
        beta = scalar(0 if self.beta is None else self.beta)
        return _FUNCTIONS[self.name](x, alpha, beta).astype(x.dtype, copy=False)

    def portable(self, x: np.ndarray) -> np.ndarray:
        """Like calling it, but evaluated in float64 by ``portable_math`` and rounded once to ``x``'s dtype.

        The compiler uses this for the numbers it records (NL-ADC thresholds,
        calibration ranges): they are then the same on every CPU, where numpy's
        SIMD exp and tanh differ in the last bit from one instruction set to the next.
        """
        x = np.asarray(x)
        wide = x.astype(np.float64)
        alpha = np.float64(0 if self.alpha is None else self.alpha)
        beta = np.float64(0 if self.beta is None else self.beta)
        return _PORTABLE_FUNCTIONS[self.name](wide, alpha, beta).astype(x.dtype, copy=False)


def resolve_activations(
    names: list[str] | None,
    alphas: list[float] | None,
    betas: list[float] | None,
    per_direction: int,
    num_directions: int,
    defaults: list[str],
) -> list[list[Activation]]:
    """Resolve a recurrent op's activation attributes into per-direction lists.

    ``names`` is the ``activations`` attribute (``per_direction`` entries per
    direction, forward first) or None for ``defaults`` in every direction.
    ``alphas``/``betas`` are consumed as independent queues, each entry going to
    the next activation that uses that parameter; activations left without an
    entry take their default. Leftover entries are an error, as they mean the
    model and this reading of it disagree.
    """
    if len(defaults) != per_direction:
        raise ValueError(f"expected {per_direction} default activations, got {defaults}")
    if names is None:
        names = list(defaults) * num_directions
    if len(names) != per_direction * num_directions:
        raise ValueError(
            f"expected {per_direction * num_directions} activations "
            f"({per_direction} per direction x {num_directions}), got {len(names)}: {names}"
        )
    alpha_queue = list(alphas or [])
    beta_queue = list(betas or [])
    resolved = []
    for name in names:
        alpha = alpha_queue.pop(0) if takes_alpha(name) and alpha_queue else None
        beta = beta_queue.pop(0) if takes_beta(name) and beta_queue else None
        resolved.append(Activation.create(name, alpha, beta))
    if alpha_queue or beta_queue:
        raise ValueError(
            f"activation_alpha/activation_beta have unused entries "
            f"(alpha {alpha_queue}, beta {beta_queue}) for activations {names}"
        )
    return [resolved[d * per_direction : (d + 1) * per_direction] for d in range(num_directions)]
