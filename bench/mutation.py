"""Mutation testing of the simulator and the ramp code: does the test suite notice a broken analog path?

Two kinds of mutants, each run against a small targeted test subset:

- hand-listed mutations (``HAND``): one-line textual patches of a source line
  (find -> replace). A pattern that no longer occurs exactly once in the file
  is an error, so a stale mutation fails loudly instead of "surviving";
- automatic operator mutations over the simulator's modules (``backends/``)
  and ``cimc/ramp.py`` (AST): + <-> -, * <-> /, < <-> <=, > <-> >=, == <-> !=,
  a numeric constant c -> c + 1, a clip/minimum/maximum call replaced by its
  first argument, a unary minus dropped.

Each mutant runs in a forked child: the cimc modules are dropped from
``sys.modules`` and an import hook serves the mutated module (compiled from
the mutated source or AST under the original file name), then ``pytest.main``
runs the subset with ``-x``. Exit status 0 = survived; test failures, a
collection error or a timeout = killed. Forking keeps numpy/onnx/onnxruntime
imported once, so a mutant costs only its tests.

    .venv/bin/python bench/mutation.py                 # hand-listed + automatic, prints the score per file
    .venv/bin/python bench/mutation.py --hand          # only the hand-listed ones (what CI asserts)
    .venv/bin/python bench/mutation.py --file cimc/ramp.py --json out.json

Run from the repository root with the venv's python (the package must be installed).
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

#: source file (as in the repository) -> installed module name
MODULES = {"backends/simulator.py": "cimc.backends.simulator", "backends/plan.py": "cimc.backends.plan",
           "backends/chip.py": "cimc.backends.chip", "backends/ramp_codes.py": "cimc.backends.ramp_codes",
           "backends/write_verify.py": "cimc.backends.write_verify", "cimc/ramp.py": "cimc.ramp"}

#: targeted test subsets per file for the automatic mutants
_SIMULATOR_TESTS = ["tests/test_analog_ops.py", "tests/test_noise_model.py", "tests/test_progress.py",
                    "tests/test_saturation.py", "tests/test_simulator_plan.py"]
SUBSETS = {
    "backends/simulator.py": _SIMULATOR_TESTS,
    "backends/plan.py": _SIMULATOR_TESTS,
    "backends/chip.py": _SIMULATOR_TESTS,
    "backends/ramp_codes.py": _SIMULATOR_TESTS,
    "backends/write_verify.py": _SIMULATOR_TESTS + ["tests/test_write_verify.py"],
    "cimc/ramp.py": ["tests/test_ramp.py", "tests/test_analog_ops.py", "tests/test_ramp_thresholds.py"],
}

A = "tests/test_analog_ops.py::"
N = "tests/test_noise_model.py::"
P = "tests/test_simulator_plan.py::"


@dataclass(frozen=True)
class HandMutation:
    name: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]


#: The mutations of issue 15 §4 (each left every in-process simulator test green before these tests).
HAND: tuple[HandMutation, ...] = (
    HandMutation("linear ADC does not quantize", "backends/plan.py",
                 "return np.clip(np.rint((z - lo) / np.where(hi > lo, hi - lo, 1.0) * steps), 0, steps)",
                 "return np.clip((z - lo) / np.where(hi > lo, hi - lo, 1.0) * steps, 0, steps)",
                 (A + "test_tile_and_linear_adc_within_the_derived_bound_of_the_ideal_quantizer",)),
    HandMutation("DAC does not quantize", "backends/plan.py",
                 "    np.rint(code, out=code)\n", "",
                 (A + "test_exactly_programmable_weights_give_the_quantizers_composition",)),
    HandMutation("NL-ADC uses the ideal thresholds", "backends/plan.py",
                 "ramps.append((sim.realized_thresholds(ramp_id) * sim.vread_scale,",
                 "ramps.append((np.asarray(sim.ramps[ramp_id]['thresholds']) * sim.vread_scale,",
                 (A + "test_nl_adc_codes_come_from_the_programmed_ramp_devices",)),
    HandMutation("ramp is not recalibrated (noisy)", "backends/chip.py",
                 "wanted = ramp[\"offset_sign\"] * (offset + np.median(targets - levels))",
                 "wanted = ramp[\"offset_sign\"] * offset",
                 (N + "test_ramp_recalibration_absorbs_the_median_level_error",)),
    HandMutation("programming noise 10x", "backends/write_verify.py",
                 "target_us + n.program_noise_us * pulses[i]", "target_us + 10 * n.program_noise_us * pulses[i]",
                 (N + "test_programming_noise_has_the_configured_std",
                  N + "test_noisy_column_output_matches_its_analytic_distribution")),
    HandMutation("stuck rates 10x", "backends/chip.py",
                 "u = stream(seed, STUCK, array).random((a.rows, a.cols))",
                 "u = stream(seed, STUCK, array).random((a.rows, a.cols)) / 10",
                 (N + "test_stuck_devices_at_the_configured_rates",)),
    HandMutation("read noise drawn once, not per read", "backends/simulator.py",
                 "return box_muller(self._read_rng, shape)", "return box_muller(np.random.default_rng(0), shape)",
                 (N + "test_read_noise_is_fresh_at_every_read_with_the_configured_std",)),
    HandMutation("stuck devices drawn per image, not per position", "backends/chip.py",
                 "defect = stuck_positions(hw, seed, k)[:level.shape[0], :level.shape[1]] * used",
                 "defect = stuck_positions(hw, seed + int(level.sum()), k)[:level.shape[0], :level.shape[1]] * used",
                 (P + "test_one_seed_has_its_stuck_devices_at_the_same_positions_whatever_the_image",)),
    HandMutation("analog-sum noise shared across the batch", "backends/plan.py",
                 "var *= self.plan.sim.standard_normal(var.shape, var.dtype)",
                 "var *= self.plan.sim.standard_normal(var.shape[:1] + (1,), var.dtype)",
                 (P + "test_output_referred_read_noise_has_the_per_device_distribution",)),
    HandMutation("analog-sum noise of one partial sum only", "backends/plan.py",
                 "var = v if var is None else var.__iadd__(v)", "var = v",
                 (P + "test_output_referred_read_noise_has_the_per_device_distribution",)),
    HandMutation("NL-ADC lookup ignores the cell's threshold", "backends/ramp_codes.py",
                 "            idx += above\n", "",
                 (P + "test_column_codes_equal_searchsorted_per_column",)),
)


@dataclass
class Result:
    file: str
    name: str
    line: int
    status: str  # killed | survived | timeout | error
    seconds: float
    tests: list[str] = field(default_factory=list)


def source_path(file: str) -> Path:
    spec = importlib.util.find_spec(MODULES[file])
    assert spec is not None and spec.origin is not None, f"{MODULES[file]} is not importable"
    return Path(spec.origin)


def apply_hand(mutation: HandMutation) -> tuple[str, int]:
    """The mutated source and the patched line; the pattern must occur exactly once."""
    text = source_path(mutation.file).read_text()
    count = text.count(mutation.find)
    if count != 1:
        raise SystemExit(f"stale mutation '{mutation.name}': pattern {mutation.find!r} occurs {count} times "
                         f"in {mutation.file} (must be exactly once); update bench/mutation.py")
    line = text[:text.index(mutation.find)].count("\n") + 1
    return text.replace(mutation.find, mutation.replace), line


# --- automatic operator mutations -------------------------------------------------------------

_SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_CLIPS = {"clip", "minimum", "maximum"}


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _annotation_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        for ann in [getattr(node, "annotation", None), getattr(node, "returns", None)]:
            if ann is not None:
                ids.update(id(n) for n in ast.walk(ann))
    return ids


def _inside_functions(tree: ast.Module) -> set[int]:
    """Nodes inside function bodies: module-level constants and signatures are configuration, not logic."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                ids.update(id(n) for n in ast.walk(stmt))
    return ids


def operator_mutants(text: str) -> Iterator[tuple[str, int, ast.Module]]:
    """(description, line, mutated tree) of every automatic mutant of ``text``, in a fixed order."""
    tree = ast.parse(text)
    skip = _docstring_ids(tree) | _annotation_ids(tree)
    inside = _inside_functions(tree)
    sites = [n for n in ast.walk(tree) if id(n) in inside and id(n) not in skip]
    seen: dict[str, int] = {}
    for node in sites:
        for label, change in _changes(node):
            mutated = copy.deepcopy(tree)
            change(_twin(tree, mutated, node))
            ast.fix_missing_locations(mutated)
            name = f"{label} @ {node.lineno}:{node.col_offset}"
            seen[name] = seen.get(name, 0) + 1
            # Nested operators (a * b * c) start at the same column: number the repeats so names stay unique.
            yield name if seen[name] == 1 else f"{name}#{seen[name]}", node.lineno, mutated


def _twin(tree: ast.AST, mutated: ast.AST, node: ast.AST) -> ast.AST:
    """The node of ``mutated`` at the same walk position as ``node`` in ``tree``."""
    for a, b in zip(ast.walk(tree), ast.walk(mutated)):
        if a is node:
            return b
    raise AssertionError("node not found")


def _changes(node: ast.AST):  # noqa: ANN202
    if isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BIN:
        new = _SWAP_BIN[type(node.op)]
        yield f"{type(node.op).__name__}->{new.__name__}", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAP_CMP:
        new = _SWAP_CMP[type(node.ops[0])]
        yield f"{type(node.ops[0]).__name__}->{new.__name__}", lambda n, new=new: setattr(n, "ops", [new()])
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        yield f"constant {node.value!r}->+1", lambda n: setattr(n, "value", n.value + 1)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        yield "drop unary minus", lambda n: setattr(n, "op", ast.UAdd())
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CLIPS \
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "np" and node.args:
        def drop(n: ast.Call) -> None:
            n.func = ast.Attribute(ast.Name("np", ast.Load()), "asarray", ast.Load())
            n.args, n.keywords = n.args[:1], []
        yield f"drop np.{node.func.attr}", drop


# --- running a mutant -------------------------------------------------------------------------

class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, module: str, code) -> None:  # noqa: ANN001
        self.module, self.code = module, code

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname != self.module:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=self.code.co_filename)
        return spec

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return None

    def exec_module(self, module) -> None:  # noqa: ANN001
        module.__file__ = self.code.co_filename
        exec(self.code, module.__dict__)  # noqa: S102


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the runner dies, so an interrupted run leaves no process behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_mutant(file: str, code, tests: list[str], timeout: float) -> tuple[str, float]:  # noqa: ANN001
    """Fork, install the mutant, run ``tests``; killed / survived / timeout / error."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setpgid(0, 0)
            _die_with_parent()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            for name in [m for m in sys.modules if m == "cimc" or m.startswith("cimc.")]:
                del sys.modules[name]
            if code is not None:
                sys.meta_path.insert(0, _MutantFinder(MODULES[file], code))
            import pytest
            status = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(ROOT),
                                  *[str(ROOT / t) for t in tests]])
        except BaseException:  # noqa: BLE001
            status = 3
        os._exit(int(status))
    deadline = start + timeout
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.02)
    code_ = os.waitstatus_to_exitcode(wait_status)
    status = {0: "survived", 1: "killed"}.get(code_, "error")
    return status, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hand", action="store_true", help="only the hand-listed mutations")
    parser.add_argument("--file", choices=sorted(MODULES), action="append", help="automatic mutants of this file only")
    parser.add_argument("--limit", type=int, default=0, help="at most this many automatic mutants per file (0: all)")
    parser.add_argument("--line", type=int, action="append", help="automatic mutants of this source line only")
    parser.add_argument("--survivors-of", type=Path, help="re-run only the automatic mutants that survived in this --json report")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant (a hang counts as killed)")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    import cimc  # noqa: F401  (warm numpy/onnx/onnxruntime imports in the parent)
    import pytest  # noqa: F401

    results: list[Result] = []
    previous = set()
    if args.survivors_of:
        previous = {(r["file"], r["name"]) for r in json.loads(args.survivors_of.read_text()) if r["status"] == "survived"}
    baseline_tests = {t.split("::")[0] for m in HAND for t in m.tests}
    if not args.hand:
        baseline_tests |= {t for file in args.file or MODULES for t in SUBSETS[file]}
    baseline_tests = sorted(baseline_tests)
    status, _ = run_mutant("cimc/ramp.py", None, baseline_tests, 600)
    if status != "survived":
        print(f"baseline: the unmutated tests do not pass ({status}); fix them first", file=sys.stderr)
        return 2
    for mutation in HAND:
        text, line = apply_hand(mutation)
        code = compile(text, str(source_path(mutation.file)), "exec")
        status, seconds = run_mutant(mutation.file, code, list(mutation.tests), args.timeout)
        results.append(Result(mutation.file, mutation.name, line, status, seconds, list(mutation.tests)))
        print(f"hand  {status:<8} {mutation.file}:{line}  {mutation.name}  ({seconds:.1f} s)", flush=True)
    if not args.hand:
        for file in args.file or sorted(MODULES):
            path = source_path(file)
            for i, (label, line, tree) in enumerate(operator_mutants(path.read_text())):
                if args.limit and i >= args.limit:
                    break
                if args.line and line not in args.line:
                    continue
                if args.survivors_of and (file, label) not in previous:
                    continue
                code = compile(tree, str(path), "exec")
                status, seconds = run_mutant(file, code, SUBSETS[file], args.timeout)
                results.append(Result(file, label, line, status, seconds, SUBSETS[file]))
                print(f"auto  {status:<8} {file}:{line}  {label}  ({seconds:.1f} s)", flush=True)
    print("\nmutation score (killed, timeout and error count as killed):")
    for file in sorted({r.file for r in results}):
        for kind in ("hand", "auto"):
            rows = [r for r in results if r.file == file and (r.name in {m.name for m in HAND}) == (kind == "hand")]
            if rows:
                killed = sum(r.status != "survived" for r in rows)
                print(f"  {file:<24} {kind}: {killed}/{len(rows)} killed = {killed / len(rows):.1%}")
    survivors = [r for r in results if r.status == "survived"]
    for r in survivors:
        print(f"  survived: {r.file}:{r.line}  {r.name}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.status == "survived" for r in results if r.name in {m.name for m in HAND}) else 0


if __name__ == "__main__":
    sys.exit(main())
