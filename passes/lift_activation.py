"""lift-activation: standalone monotonic ONNX activations become ``cim.activation``, so fuse-activation sees them.

decompose-rnn gives the recurrent cells' gates ``cim.activation`` ops; a
``Gemm -> Sigmoid`` or ``Conv -> Relu`` elsewhere in the graph is an
``onnx.Sigmoid``/``onnx.Relu`` that tile, ranges and fuse-activation would
never consider. This pass rewrites every Sigmoid, Tanh, Relu, HardSigmoid,
LeakyRelu, Elu, ThresholdedRelu, Softsign and Softplus, and the Clips that
have an exact form, into ``cim.activation`` with the same function (ONNX's
standalone defaults are those of ``cimc.kernels.activations``). Clip with
constant bounds maps to a function with the cell clip of ``cim.activation``
(symmetric, applied to the input):

- ``Clip(min=0, max=c)`` = Relu(clip(z, -c, c)) (ReLU6 is c = 6); ``Clip(min=0)`` = Relu;
- ``Clip(min=-c, max=c)`` = Affine(alpha=1, beta=0)(clip(z, -c, c)) (hard tanh).

Other Clips stay ``onnx.Clip`` (digital); the report names them.

An activation applied after layout ops that only move elements (Transpose,
Reshape, Squeeze, Unsqueeze, Identity; form-mvm's Conv lowering ends with a
Transpose back to channels-first) is moved before them when they read an MVM
and have no other user: an elementwise function commutes with moving
elements, and the activation then reads the MVM's columns directly, as an
NL-ADC must. Whether it is then fused is fuse-activation's decision, with
its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.builder import Builder
from cimc.dialects.builtin import constant_array
from cimc.ir import Module, Operation, Value
from cimc.kernels.activations import Activation
from cimc.pass_manager import ModulePass, register_pass

_FUNCTIONS = ("Sigmoid", "Tanh", "Relu", "HardSigmoid", "LeakyRelu", "Elu", "ThresholdedRelu", "Softsign", "Softplus")
_LAYOUT = ("onnx.Transpose", "onnx.Reshape", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Identity")


def _bound(op: Operation, index: int, attribute: str) -> float | None | str:
    """A Clip bound: its constant value, None if absent, or 'dynamic' if it is not a constant scalar."""
    value = op.operands[index] if len(op.operands) > index else None
    if value is None:
        raw = op.attributes.get(attribute)
        return None if raw is None else float(raw)  # type: ignore[arg-type]
    array = constant_array(value)
    if array is None or array.size != 1:
        return "dynamic"
    return float(array.reshape(-1)[0])


def clip_form(op: Operation) -> dict[str, object] | None:
    """The ``cim.activation`` attributes of an ``onnx.Clip`` with an exact ramp form, or None."""
    lo, hi = _bound(op, 1, "min"), _bound(op, 2, "max")
    if lo == 0.0 and hi is None:
        return {"function": "Relu"}
    if isinstance(lo, float) and isinstance(hi, float) and np.isfinite(hi) and hi > 0:
        if lo == 0.0:
            return {"function": "Relu", "clip": hi}
        if lo == -hi:
            return {"function": "Affine", "alpha": 1.0, "beta": 0.0, "clip": hi}
    return None


def activation_form(op: Operation) -> dict[str, object] | None:
    """The ``cim.activation`` attributes equivalent to ONNX op ``op``, or None if it has none."""
    name = op.name.removeprefix("onnx.")
    if not op.operands or op.operands[0] is None or not op.operands[0].type.is_float:
        return None
    if op.name == "onnx.Clip":
        return clip_form(op)
    if name not in _FUNCTIONS:
        return None
    act = Activation.create(name, op.attributes.get("alpha"), op.attributes.get("beta"))  # type: ignore[arg-type]
    attrs: dict[str, object] = {"function": act.name}
    attrs.update({k: v for k, v in (("alpha", act.alpha), ("beta", act.beta)) if v is not None})
    return attrs


def _layout_chain(x: Value) -> tuple[Value, list[Operation]]:
    """Walk down single-use layout ops from ``x`` to an MVM result: (that result, the ops from it up to ``x``),
    or (x, []) if the chain does not end at an MVM."""
    chain: list[Operation] = []
    value = x
    while getattr(value, "op", None) is not None and value.op.name in _LAYOUT and len(value.uses) == 1:  # type: ignore[union-attr]
        chain.append(value.op)  # type: ignore[union-attr]
        value = value.op.operands[0]  # type: ignore[union-attr, assignment]
    producer = getattr(value, "op", None)
    if chain and producer is not None and producer.name == "cim.matvec":
        return value, chain[::-1]
    return x, []


@register_pass
@dataclass(frozen=True)
class LiftActivation(ModulePass):
    """Turn standalone monotonic ONNX activations (and exact Clips) into cim.activation, moved next to their MVM."""

    name = "lift-activation"

    def apply(self, module: Module) -> bool:
        lifted = 0
        for op in list(module.walk()):
            if op.parent is None or not op.name.startswith("onnx."):
                continue
            attrs = activation_form(op)
            if attrs is None:
                continue
            x = op.operands[0]
            assert x is not None
            root, chain = _layout_chain(x)
            b = Builder(op.parent, op, op.location)
            out = b.value("cim.activation", [root], root.type, attrs)
            for layout in chain:
                out = b.value(layout.name, [out, *layout.operands[1:]], layout.results[0].type, dict(layout.attributes))
            op.results[0].replace_all_uses_with(out)
            op.erase()
            for layout in reversed(chain):
                if not layout.results[0].uses:
                    layout.erase()
            lifted += 1
        if lifted:
            module.attributes["lift.activations"] = lifted
        return bool(lifted)
