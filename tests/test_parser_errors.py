"""Bad IR text is reported as file:line:col, the source line and a caret."""

from __future__ import annotations

import pytest

from cimc.diagnostics import CimcError
from cimc.parser import parse_module

GOOD = """graph @g(%x: f32[batch, 4], %y: f32[batch, 4]) {
  %a = onnx.Add(%x, %y) : f32[batch, 4]
  builtin.return(%a)
}
"""


def error_of(text: str) -> CimcError:
    with pytest.raises(CimcError) as info:
        parse_module(text, "bad.cir")
    return info.value


@pytest.mark.parametrize(
    "old, new, line, col, message",
    [
        ("onnx.Add(%x, %y)", "onnx.Add(%x %y)", 2, 20, "unexpected '%y'; expected ')', ','"),
        ("%a = onnx.Add", "%a = onnx.Ad", 2, 8, "unknown op 'onnx.Ad'"),
        ("onnx.Add(%x, %y)", "onnx.Add(%x, %z)", 2, 21, "use of undefined value %z"),
        ("%a = onnx.Add", "%y = onnx.Add", 2, 3, "redefinition of %y"),
        ("onnx.Add(%x, %y)", "onnx.Add(%x, %y, %x)", 2, 8, "wrong arity: 'onnx.Add' takes 2 operands, got 3"),
        (": f32[batch, 4]\n", ": i64[batch, 4]\n", 2, 8, "type mismatch"),
        ("f32[batch, 4]) {", "f32[batch, 4) {", 1, 45, "unexpected ')'"),
        ("builtin.return(%a)", "builtin.return(%a) : f32[]", 3, 3, "wrong arity: 0 result names but 1 result types"),
        ("%a = onnx.Add(%x, %y) : f32[batch, 4]", "%a = onnx.Add(%x, %y) {axis = 1, axis = 2} : f32[batch, 4]", 2, 36, "duplicate attribute 'axis'"),
    ],
)
def test_error_points_at_the_problem(old: str, new: str, line: int, col: int, message: str) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    err = error_of(text)
    assert err.pos is not None and (err.pos.line, err.pos.column) == (line, col), str(err)
    assert message in err.message
    rendered = str(err).splitlines()
    assert rendered[0].startswith(f"bad.cir:{line}:{col}: error: ")
    assert rendered[1] == text.splitlines()[line - 1]
    assert rendered[2] == " " * (col - 1) + "^"


def test_good_text_parses() -> None:
    module = parse_module(GOOD, "good.cir")
    assert [op.name for op in module.walk()] == ["onnx.Add", "builtin.return"]


def test_unterminated_input() -> None:
    err = error_of(GOOD[: GOOD.index("builtin")])
    assert "unexpected end of input" in err.message


def test_resource_without_sidecar_is_an_error() -> None:
    text = GOOD.replace("  builtin.return", '  %w = builtin.constant() {value = resource<f32[40]: "w">} : f32[40]\n  builtin.return')
    err = error_of(text)
    assert "sidecar" in err.message and err.pos is not None and err.pos.line == 3


def test_keywords_are_usable_as_names() -> None:
    text = """graph @g(%none: f32[none, inf, dense], %f32: f32[f32]) attributes {inf = 1, nan = "x", none = [nan, -inf], loc = 2.5} {
  builtin.return(%none, %f32)
}
"""
    module = parse_module(text, "kw.cir")
    assert module.attributes["none"][0] != module.attributes["none"][0]  # NaN
    assert module.inputs[0].type.shape == ("none", "inf", "dense")
