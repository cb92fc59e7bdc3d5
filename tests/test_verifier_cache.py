"""The verifier's cache: an op's own rules are skipped only while the op is unchanged.

verify-each stays on after every pass; the cache must never hide a change. Each
test verifies once with a cache, changes the IR in one way a pass could, and
expects the second verification with the same cache to catch it.
"""

from __future__ import annotations

import numpy as np
import pytest

import cimc.verifier as verifier
from cimc.attributes import Tensor
from cimc.dialects import VerifyError
from cimc.parser import parse_module
from cimc.types import TensorType
from cimc.verifier import VerifyCache, verify

TEXT = """graph @g(%x: f32[batch, 3]) {
  %y = cim.matvec(%x) {weights = dense<f32[3, 2]: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]>} : f32[batch, 2]
  %z = onnx.Relu(%y) : f32[batch, 2]
  builtin.return(%z)
}
"""


def _matvec(module):  # noqa: ANN001, ANN202
    return next(op for op in module.walk() if op.name == "cim.matvec")


def test_replaced_attribute_is_checked_again() -> None:
    module, cache = parse_module(TEXT), VerifyCache()
    verify(module, cache)
    _matvec(module).attributes["weights"] = Tensor(np.ones((4, 2), np.float32))  # 4 rows, but the input drives 3
    with pytest.raises(VerifyError, match="drives 3 rows"):
        verify(module, cache)


def test_changed_operand_type_is_checked_again() -> None:
    module, cache = parse_module(TEXT), VerifyCache()
    verify(module, cache)
    module.inputs[0].type = TensorType("f32", ("batch", 5))
    with pytest.raises(VerifyError, match="drives 5 rows"):
        verify(module, cache)


def test_changed_result_type_is_checked_again() -> None:
    module, cache = parse_module(TEXT), VerifyCache()
    verify(module, cache)
    op = _matvec(module)
    op.results[0].type = TensorType("f32", ("batch", 7))
    with pytest.raises(VerifyError):
        verify(module, cache)


def test_unchanged_tensor_ops_are_not_checked_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The saving is real: the second run checks no tensor-holding op, an annotation does not count as a change."""
    module, cache = parse_module(TEXT), VerifyCache()
    checked: list[str] = []
    original = verifier._verify_op
    monkeypatch.setattr(verifier, "_verify_op", lambda op, opdef: (checked.append(op.name), original(op, opdef)))
    verify(module, cache)
    assert "cim.matvec" in checked
    checked.clear()
    _matvec(module).attributes["sched.stage"] = 3
    verify(module, cache)
    assert "cim.matvec" not in checked and "onnx.Relu" in checked  # cheap ops are always checked
    checked.clear()
    verify(module)  # without a cache every op is checked
    assert "cim.matvec" in checked
