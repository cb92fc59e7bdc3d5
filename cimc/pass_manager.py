"""Passes, their registry, pipeline strings and the pass manager.

A pass is a small frozen dataclass whose fields are its typed options, so a
pipeline is data: ``canonicalize,tile{rows=128 cols=64}``. The pass manager
verifies the IR before the first pass and after every pass, so that a pass that
breaks an invariant is named at once, together with the passes that ran before it.

The hardware reaches the passes as a typed :class:`PassContext`, not as
pipeline text: an option declared with :func:`from_hardware` defaults to None
and is filled from the context's hardware just before the pass runs, so the
image and the passes read one description, and an option written in the
pipeline still overrides it (``tile{rows=16}`` on a 128-row chip).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TextIO, TypeVar, Union, get_args, get_origin, get_type_hints

from cimc.collector import collector_paused
from cimc.defects import ChipMeasurement
from cimc.diagnostics import CimcError, InternalError
from cimc.dialects import VerifyError
from cimc.hardware import Hardware, load_hardware
from cimc.ir import Module
from cimc.printer import module_to_text
from cimc.timing import Timing
from cimc.verifier import verify


@dataclass(frozen=True)
class PassContext:
    """What every pass may rely on besides its options: the hardware the IR is lowered for, and (map-defects only)
    the measured chip to map around (``cimc compile --defects``)."""

    hardware: Hardware
    defects: ChipMeasurement | None = None

    @staticmethod
    def default() -> PassContext:
        """The shipped hardware description, for pipelines run without one (``cimc opt -p tile``)."""
        return PassContext(load_hardware())


def from_hardware(source: Callable[[Hardware], Any], doc: str) -> Any:
    """Declare an option whose default is read from the context's hardware (``doc`` names where, for ``cimc passes``)."""
    return field(default=None, metadata={"hardware": source, "doc": doc})


@dataclass(frozen=True)
class ModulePass(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`apply`; their fields are options."""

    name: ClassVar[str] = ""

    @abstractmethod
    def apply(self, module: Module) -> bool:
        """Transform ``module`` in place; return whether anything changed."""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(fields(cls))

    @classmethod
    def option_types(cls) -> dict[str, type]:
        """Each option's value type (``int`` for ``int | None``: None only means "from the hardware")."""
        hints = get_type_hints(cls)
        return {f.name: _value_type(hints[f.name]) for f in fields(cls)}

    @classmethod
    def option_default(cls, name: str) -> str:
        """The default as ``cimc passes`` shows it: a value, or where in the hardware it comes from."""
        f = next(f for f in fields(cls) if f.name == name)
        if "hardware" in f.metadata:
            return f"hardware {f.metadata['doc']} ({_format_option(f.metadata['hardware'](load_hardware()))} by default)"
        return _format_option(f.default)

    def bind(self, context: PassContext) -> ModulePass:
        """This pass with every option left at None filled from ``context``."""
        filled = {f.name: f.metadata["hardware"](context.hardware) for f in fields(self)
                  if "hardware" in f.metadata and getattr(self, f.name) is None}
        return dataclasses.replace(self, **filled) if filled else self

    def needs_context(self) -> bool:
        return any("hardware" in f.metadata and getattr(self, f.name) is None for f in fields(self))

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.split("\n\n", 1)[0].replace("\n", " ")

    def spec(self) -> str:
        """This pass as pipeline text, every option written out (options still to come from the hardware left out)."""
        opts = [f"{f.name}={_format_option(getattr(self, f.name))}" for f in fields(self) if getattr(self, f.name) is not None]
        return self.name + ("{" + " ".join(opts) + "}" if opts else "")


_PASSES: dict[str, type[ModulePass]] = {}
P = TypeVar("P", bound=type[ModulePass])


def register_pass(cls: P) -> P:
    if not cls.name or cls.name in _PASSES:
        raise ValueError(f"pass name {cls.name!r} is empty or taken")
    _PASSES[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[ModulePass]]:
    from cimc.passes import PASS_MODULES

    for module in PASS_MODULES:  # importing a pass's module registers it
        importlib.import_module(f"cimc.passes.{module}")
    return dict(sorted(_PASSES.items()))


def pass_class(name: str) -> type[ModulePass] | None:
    """The pass registered as ``name`` (None if none is), importing its module only (``decompose-rnn`` is
    ``cimc.passes.decompose_rnn``): a pipeline does not import the passes it does not run."""
    from cimc.passes import PASS_MODULES

    module = name.replace("-", "_")
    if name not in _PASSES and module in PASS_MODULES:
        importlib.import_module(f"cimc.passes.{module}")
    return _PASSES.get(name)


def _value_type(hint: Any) -> type:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _format_option(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value) and value not in ("true", "false") else json.dumps(value)
    return repr(value)


_TOKEN = re.compile(r'\s*(?:(?P<name>[A-Za-z0-9_.+-]+)|(?P<string>"(?:\\.|[^"\\])*")|(?P<punct>[{},=]))')


def parse_pipeline(text: str) -> list[ModulePass]:
    """Parse ``a,b{opt=1 other=x}``; errors point at the offending column."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _pipeline_error(text, len(text) - len(text[pos:].lstrip()), "unexpected character")
        kind = m.lastgroup or "punct"
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out: list[ModulePass] = []
    i = 0

    def expect(kind: str, value: str | None = None) -> tuple[str, str, int]:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != kind or (value is not None and tokens[i][1] != value):
            col = tokens[i][2] if i < len(tokens) else len(text)
            raise _pipeline_error(text, col, f"expected {value or kind}")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        _, name, col = expect("name")
        cls = pass_class(name)
        if cls is None:
            raise _pipeline_error(text, col, f"unknown pass '{name}' (known: {', '.join(registered_passes())})")
        types = cls.option_types()
        values: dict[str, object] = {}
        if i < len(tokens) and tokens[i][1] == "{":
            i += 1
            while i < len(tokens) and tokens[i][1] != "}":
                _, key, kcol = expect("name")
                if key not in types:
                    raise _pipeline_error(text, kcol, f"pass '{name}' has no option '{key}' (options: {', '.join(types) or 'none'})")
                expect("punct", "=")
                if i >= len(tokens) or tokens[i][0] == "punct":
                    raise _pipeline_error(text, tokens[i][2] if i < len(tokens) else len(text), "expected a value")
                kind, raw, vcol = tokens[i]
                i += 1
                values[key] = _convert_option(text, vcol, key, raw, kind, types[key])
            expect("punct", "}")
        out.append(cls(**values))
        if i < len(tokens):
            expect("punct", ",")
            if i >= len(tokens):
                raise _pipeline_error(text, len(text), "expected a pass name after ','")
    return out


def _convert_option(text: str, col: int, key: str, raw: str, kind: str, typ: type) -> object:
    value = json.loads(raw) if kind == "string" else raw
    try:
        if typ is bool:
            if value not in ("true", "false"):
                raise ValueError
            return value == "true"
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        return str(value)
    except ValueError:
        raise _pipeline_error(text, col, f"option '{key}' takes a {typ.__name__}, got {raw}") from None


def _pipeline_error(text: str, col: int, message: str) -> CimcError:
    return CimcError(f"bad pipeline at column {col + 1}: {message}\n  {text}\n  {' ' * col}^")


def format_pipeline(passes: Iterable[ModulePass]) -> str:
    return ",".join(p.spec() for p in passes)



@dataclass
class PassManager:
    """Runs passes in order, verifying after each, optionally printing IR between them.

    ``context`` is the hardware the passes lower for (the shipped description if
    None); ``timing`` collects each pass's and each verifier run's wall time.
    """

    passes: list[ModulePass]
    print_after_all: bool = False
    print_after: frozenset[str] = frozenset()
    dump: Callable[[str, Module], None] | None = None
    out: TextIO | None = None
    context: PassContext | None = None
    timing: Timing | None = None

    def run(self, module: Module) -> Module:
        """Run the passes on ``module``; Python's cycle collector is paused meanwhile (see :func:`collector_paused`)."""
        with collector_paused():
            return self._run(module)

    def _run(self, module: Module) -> Module:
        timing = self.timing if self.timing is not None else Timing()
        context = self.context
        if context is None and any(p.needs_context() for p in self.passes):
            context = PassContext.default()
        self._verify(module, None, [], timing)
        done: list[str] = []
        for unbound in self.passes:
            p = unbound.bind(context) if context is not None else unbound
            t0 = time.perf_counter()
            try:
                p.apply(module)
            except CimcError as e:
                raise CimcError(f"in pass '{p.name}': {e.message}", e.pos) from None
            timing.add(p.name, time.perf_counter() - t0)
            self._verify(module, p, done, timing)
            done.append(p.name)
            if self.print_after_all or p.name in self.print_after:
                self._print(f"// -----// IR Dump After {p.spec()} //----- //\n" + module_to_text(module))
            if self.dump is not None:
                self.dump(p.name, module)
        return module

    def _verify(self, module: Module, p: ModulePass | None, done: list[str], timing: Timing) -> None:
        t0 = time.perf_counter()
        try:
            verify(module)
        except VerifyError as e:
            where = f" at '{e.op.name}'" + (f" ({e.op.location})" if e.op is not None and e.op.location else "") if e.op is not None else ""
            if p is None:
                raise CimcError(f"input IR is invalid{where}: {e.message}") from None
            raise InternalError(
                f"IR invalid after pass '{p.name}' (ran after passes [{', '.join(done)}]){where}: {e.message}"
            ) from None
        finally:
            timing.phases.append(("(verify)", time.perf_counter() - t0))

    def _print(self, text: str) -> None:
        import sys

        print(text, file=self.out or sys.stderr, end="")
