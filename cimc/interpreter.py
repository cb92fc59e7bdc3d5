"""The reference interpreter: executes the IR with numpy.

It is the oracle every pass is checked against, so it is deliberately plain:
each op kind maps to one kernel, values live in a dictionary, and every result
is checked against its declared type (element type, rank, static dims, and one
consistent extent per symbolic dim), so a pass that mis-types a value is caught
at the op that produced it. Errors name the op and its source location.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cimc.attributes import AttrValue, Tensor, is_annotation
from cimc.diagnostics import CimcError
from cimc.dialects import lookup
from cimc.ir import Block, Module, Operation, Value
from cimc.types import TensorType

Arrays = list[np.ndarray | None]
Kernel = Callable[[Operation, Arrays, "Interpreter"], Sequence[np.ndarray]]

_KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    """Register ``fn`` as the kernel of the named op kinds."""

    def register(fn: Kernel) -> Kernel:
        for name in names:
            if name in _KERNELS:
                raise ValueError(f"two kernels for '{name}'")
            _KERNELS[name] = fn
        return fn

    return register


def has_kernel(name: str) -> bool:
    _load_kernels()
    return name in _KERNELS


def registered_kernels() -> dict[str, Kernel]:
    """Every registered kernel by op kind (a copy), for executors other than :class:`Interpreter` (the simulator's plan)."""
    _load_kernels()
    return dict(_KERNELS)


def _load_kernels() -> None:
    from cimc import cim_kernels, onnx_kernels  # noqa: F401  (importing registers the kernels)


class InterpreterError(CimcError):
    """An op failed or produced a value that contradicts its declared type."""


def plain_attrs(op: Operation) -> dict[str, object]:
    """Attributes as kernels take them: lists instead of tuples, arrays instead of tensors."""

    def plain(value: AttrValue) -> object:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Tensor):
            return value.array
        return value

    return {k: plain(v) for k, v in op.attributes.items() if not is_annotation(k)}


class Interpreter:
    """Evaluates one module; create one per run (it holds the symbol bindings)."""

    def __init__(self, module: Module, observer: Callable[[Operation, Arrays, list[np.ndarray]], None] | None = None,
                 overrides: Mapping[str, Kernel] | None = None, check_types: bool = True,
                 progress: Callable[[str, int, int], None] | None = None,
                 carried_override: Callable[[Operation, int, list[np.ndarray]], list[np.ndarray]] | None = None) -> None:
        """``observer(op, operands, results)`` sees every op as it runs (calibration records value ranges with it);
        ``overrides`` replaces the kernels of some op kinds (the simulator executes crossbar ops its own way);
        ``carried_override(loop, step, values)`` returns the values a ``cim.loop`` body starts step ``step`` from
        (teacher forcing: per-step verification restarts every step from a reference trajectory)."""
        _load_kernels()
        self.module = module
        self.observer = observer
        self.kernels = {**_KERNELS, **(overrides or {})}
        self.check_types = check_types
        self.progress = progress  # progress(where, step, steps) after every loop step
        self.carried_override = carried_override
        self.values: dict[int, np.ndarray] = {}
        self.symbols: dict[str, int] = {}
        self._cache: dict[int, np.ndarray] = {}

    def cached(self, op: Operation, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A per-op value computed once per run (a loop body runs the same op T times)."""
        key = id(op)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on ``inputs`` keyed by input name; return outputs keyed by output name."""
        names, arrays = ordered_inputs(self.module, inputs)
        for arg, name, array in zip(self.module.inputs, names, arrays):
            self._bind(arg, array, f"input '{name}'", None)
        outputs = self.run_block(self.module.body, arrays)
        return dict(zip(output_names(self.module), outputs, strict=True))

    def run_block(self, block: Block, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run ``block`` with its arguments bound to ``args``; return its terminator's operands."""
        for arg, array in zip(block.args, args, strict=True):
            self.values[id(arg)] = array
        for op in block.ops:
            operands = [None if v is None else self.values[id(v)] for v in op.operands]
            opdef = lookup(op.name)
            if opdef is not None and opdef.terminator:
                return [a for a in operands if a is not None]
            fn = self.kernels.get(op.name)
            if fn is None:
                raise InterpreterError(f"no kernel for '{op.name}'{op_location(op)}")
            try:
                results = fn(op, operands, self)
            except CimcError:
                raise
            except Exception as e:  # noqa: BLE001  (a kernel failure must name the op that caused it)
                raise InterpreterError(f"'{op.name}'{op_location(op)} failed: {type(e).__name__}: {e}") from e
            if len(results) != len(op.results):
                raise InterpreterError(f"'{op.name}'{op_location(op)} produced {len(results)} values for {len(op.results)} results")
            arrays = [np.asarray(a) for a in results]
            for res, array in zip(op.results, arrays):
                self._bind(res, array, f"result #{res.index} of '{op.name}'", op)
            if self.observer is not None:
                self.observer(op, operands, arrays)
        raise InterpreterError("block without terminator")

    def _bind(self, value: Value, array: np.ndarray, what: str, op: Operation | None) -> None:
        problem = self._type_problem(value.type, array) if self.check_types or op is None else None
        if problem:
            where = op_location(op) if op is not None else ""
            raise InterpreterError(f"{what}{where} {problem}")
        self.values[id(value)] = array

    def _type_problem(self, ttype: TensorType, array: np.ndarray) -> str | None:
        if array.dtype != ttype.np_dtype:
            return f"has element type {array.dtype}, declared {ttype}"
        if array.ndim != ttype.rank:
            return f"has shape {array.shape}, declared {ttype}"
        for dim, extent in zip(ttype.shape, array.shape):
            if isinstance(dim, int) and dim != extent:
                return f"has shape {array.shape}, declared {ttype}"
            if isinstance(dim, str):
                bound = self.symbols.setdefault(dim, extent)
                if bound != extent:
                    return f"has shape {array.shape} but '{dim}' is already {bound} (declared {ttype})"
        return None


def op_location(op: Operation | None) -> str:
    """`` at FILE:LINE:COL`` of ``op`` for an error message, or nothing when it has no location."""
    return f" at {op.location}" if op is not None and op.location else ""


def ordered_inputs(module: Module, inputs: Mapping[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """The graph's input names and the given arrays in their order; a missing or unknown name is a clear error."""
    names = input_names(module)
    missing = [n for n in names if n not in inputs]
    unknown = sorted(set(inputs) - set(names))
    if missing or unknown:
        raise CimcError(f"inputs do not match the graph: missing {missing}, unknown {unknown}; expected {names}")
    return names, [np.asarray(inputs[name]) for name in names]


def input_names(module: Module) -> list[str]:
    """The graph's input names: the ONNX names when imported, else the IR value names."""
    names = module.attributes.get("input_names")
    if isinstance(names, tuple) and len(names) == len(module.inputs):
        return [str(n) for n in names]
    return [a.name or f"input{i}" for i, a in enumerate(module.inputs)]


def output_names(module: Module) -> list[str]:
    names = module.attributes.get("output_names")
    outputs = module.outputs
    if isinstance(names, tuple) and len(names) == len(outputs):
        return [str(n) for n in names]
    return [v.name or f"output{i}" for i, v in enumerate(outputs)]


def run_kernel(name: str, attributes: Mapping[str, AttrValue], args: Arrays) -> list[np.ndarray]:
    """Evaluate one op kind on concrete arrays, outside any graph (used for constant folding)."""
    _load_kernels()
    fn = _KERNELS.get(name)
    if fn is None:
        raise InterpreterError(f"no kernel for '{name}'")
    op = Operation(name, [], [], dict(attributes))
    return [np.asarray(r) for r in fn(op, args, Interpreter(Module("fold", Block())))]


def evaluate(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``module`` on ``inputs`` with the reference interpreter."""
    return Interpreter(module).run(inputs)
