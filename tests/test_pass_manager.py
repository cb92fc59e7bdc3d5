"""Pipelines: parsing, printing, errors; the pass manager's verification and IR printing."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cimc.diagnostics import CimcError, InternalError
from cimc.ir import Module
from cimc.parser import parse_module
from cimc.pass_manager import ModulePass, PassManager, format_pipeline, parse_pipeline, register_pass


@register_pass
@dataclass(frozen=True)
class OptionsForTests(ModulePass):
    """Test pass with one option of every type."""

    name = "test-options"
    rows: int = 128
    scale: float = 0.5
    analog: bool = True
    label: str = "plain"

    def apply(self, module: Module) -> bool:
        return False


@register_pass
@dataclass(frozen=True)
class BreakIR(ModulePass):
    """Test pass that leaves an op with a stale operand list."""

    name = "test-break"

    def apply(self, module: Module) -> bool:
        op = module.body.ops[0]
        op.operands.append(module.inputs[0])
        return True


TEXT = """graph @g(%x: f32[4]) {
  %a = onnx.Identity(%x) : f32[4]
  %b = onnx.Relu(%a) : f32[4]
  %c = onnx.Relu(%a) : f32[4]
  %d = onnx.Add(%b, %c) : f32[4]
  builtin.return(%d)
}
"""


def test_pipeline_round_trips() -> None:
    text = 'canonicalize{max_iterations=10},test-options{rows=64 scale=0.25 analog=false label="two words"},dce'
    passes = parse_pipeline(text)
    assert [p.name for p in passes] == ["canonicalize", "test-options", "dce"]
    assert passes[1] == OptionsForTests(64, 0.25, False, "two words")
    assert format_pipeline(passes) == text
    assert format_pipeline(parse_pipeline(format_pipeline(passes))) == text


@given(st.integers(-(10**9), 10**9), st.floats(allow_nan=False), st.booleans(), st.text(max_size=10))
def test_pipeline_round_trips_any_option_values(rows: int, scale: float, analog: bool, label: str) -> None:
    passes = [OptionsForTests(rows, scale, analog, label)]
    assert parse_pipeline(format_pipeline(passes)) == passes


def test_defaults_are_written_out() -> None:
    assert format_pipeline(parse_pipeline("test-options")) == 'test-options{rows=128 scale=0.5 analog=true label=plain}'


def test_empty_pipeline() -> None:
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "unknown pass 'nope'"),
        ("dce,", "expected a pass name"),
        ("test-options{rows=x}", "option 'rows' takes a int"),
        ("test-options{analog=1}", "option 'analog' takes a bool"),
        ("test-options{depth=1}", "has no option 'depth'"),
        ("test-options{rows=1", "expected }"),
        ("dce cse", "expected ,"),
        ("dce;cse", "unexpected character"),
    ],
)
def test_bad_pipelines(text: str, message: str) -> None:
    with pytest.raises(CimcError, match=message):
        parse_pipeline(text)


def test_pass_manager_names_the_failing_pass_and_its_predecessors() -> None:
    module = parse_module(TEXT)
    with pytest.raises(InternalError) as info:
        PassManager(parse_pipeline("cse,test-options,test-break,dce")).run(module)
    message = str(info.value)
    assert "after pass 'test-break'" in message and "[cse, test-options]" in message


def test_invalid_input_is_refused_before_any_pass() -> None:
    module = parse_module(TEXT)
    module.body.ops[0].operands.append(module.inputs[0])
    with pytest.raises(CimcError, match="input IR is invalid"):
        PassManager(parse_pipeline("dce")).run(module)


def test_print_after_named_pass_only() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("cse,canonicalize"), print_after=frozenset({"cse"}), out=out).run(parse_module(TEXT))
    dumps = out.getvalue()
    assert dumps.count("IR Dump After") == 1 and "IR Dump After cse" in dumps
    assert dumps.count("onnx.Relu") == 1  # cse merged the two Relus


def test_print_after_all() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("cse,canonicalize,dce"), print_after_all=True, out=out).run(parse_module(TEXT))
    assert [line.split()[5] for line in out.getvalue().splitlines() if "IR Dump After" in line] == [
        "cse", "canonicalize{max_iterations=10}", "dce"]
