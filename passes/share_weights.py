"""share-weights: MVMs whose weights are the same constant use one physical copy of them.

An unrolled decoder (20 greedy steps exported as 20 GRU nodes over the same
initializers), a weight tied between an embedding and a projection, or a
constant that folding made twice: each MVM got its own tiles, so the chip
would hold, and program, one copy per node. Tiles with equal conductances
(byte for byte: the same initializer, the same folded constant and equal
content alike) and whose columns reach the same activations are marked with
one ``share`` key; ``place`` then puts each such group on one set of devices,
``schedule`` serializes the group's reads (one read per array per stage),
and the image programs the devices once.

The devices of a shared tile are one physical object, so everything that is
a property of the devices must agree between the tiles that read them: the
conductances (equal by construction) and the conductance per unit of z an
NL-ADC ramp sees, g_scale / input_scale. Each group's DAC full scale
(``input_scale``) is therefore set to the largest of its members', so that
no member's inputs clip; fuse-activation then brings the shared columns to
one scale under one ramp whose range covers every member's. What is per
read stays per tile: the operands and each linear ADC's column range.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from cimc.ir import Module, Operation
from cimc.pass_manager import ModulePass, register_pass
from cimc.passes.tile import ActivationKeys


def weight_digest(tile: Operation, activation_keys: ActivationKeys | None = None) -> str:
    """A digest of what a tile's devices hold, and of the activations its columns reach."""
    h = hashlib.sha256()
    for key in ("g_pos", "g_neg", "g_scale"):
        array = np.ascontiguousarray(tile.attributes[key].array)  # type: ignore[union-attr]
        h.update(f"{key}{array.dtype.str}{array.shape}".encode())
        h.update(array)
    h.update(repr((tile.attributes.get("bias_rows", 0), (activation_keys or ActivationKeys())(tile))).encode())
    return h.hexdigest()


def _probe(tile: Operation) -> tuple:
    """A cheap function of what ``weight_digest`` hashes (shapes, column scales, the first row of devices):
    tiles that differ here cannot share, so only tiles that agree on it are hashed whole."""
    a = tile.attributes
    g_pos, g_neg = a["g_pos"].array, a["g_neg"].array  # type: ignore[union-attr]
    return (g_pos.shape, g_pos.dtype.str, a["g_scale"].array.tobytes(), g_pos[:1].tobytes(), g_neg[:1].tobytes(),  # type: ignore[union-attr]
            a.get("bias_rows", 0))


@register_pass
@dataclass(frozen=True)
class ShareWeights(ModulePass):
    """Give crossbar tiles with the same weights one physical copy: mark them for place, unify their DAC full scale."""

    name = "share-weights"

    def apply(self, module: Module) -> bool:
        candidates: dict[tuple, list[Operation]] = {}
        for op in module.walk():
            if op.name == "cim.tile_mvm" and "array" not in op.attributes:
                candidates.setdefault(_probe(op), []).append(op)
        activation_keys = ActivationKeys()
        groups: dict[str, list[Operation]] = {}
        for members in candidates.values():
            if len(members) > 1:
                for op in members:
                    groups.setdefault(weight_digest(op, activation_keys), []).append(op)
        order = {id(op): i for i, op in enumerate(module.walk())}
        shared = sorted((members for members in groups.values() if len(members) > 1), key=lambda m: order[id(m[0])])
        for number, members in enumerate(shared):
            scales = [float(t.attributes["input_scale"]) for t in members if "input_scale" in t.attributes]  # type: ignore[arg-type]
            for tile in members:
                tile.attributes["share"] = f"w{number}"
                if scales:
                    tile.attributes["input_scale"] = max(scales)
        module.attributes["share.groups"] = len(shared)
        return bool(shared)
