"""The ``cim`` dialect: ops of the lowered, hardware-level program.

``cim.loop`` is the structured recurrence: one body executed ``trip_count``
times. Operands after the trip count are the initial loop-carried values; the
body's block arguments are the iteration index and the carried values; its
``cim.yield`` returns the next carried values followed by per-step *scan*
values, which the loop stacks along a new leading axis in iteration order.
The results are the final carried values followed by the stacked scans.
"""

from __future__ import annotations

from cimc.dialects.registry import VerifyError, define
from cimc.ir import Operation
from cimc.types import TensorType, scalar


def _verify_loop(op: Operation) -> None:
    trip, *inits = op.operands
    if trip is None or trip.type != scalar("i64"):
        raise VerifyError(op, "type mismatch: the trip count must be of type i64[]")
    if any(v is None for v in inits):
        raise VerifyError(op, "loop-carried initial values cannot be absent")
    block = op.regions[0].block
    if len(block.args) != 1 + len(inits):
        raise VerifyError(op, f"the body takes {len(block.args)} arguments; expected the index and {len(inits)} carried values")
    if block.args[0].type != scalar("i64"):
        raise VerifyError(op, "type mismatch: the body's first argument (the index) must be of type i64[]")
    for i, (arg, init) in enumerate(zip(block.args[1:], inits)):
        assert init is not None
        if arg.type != init.type:
            raise VerifyError(op, f"type mismatch: carried value #{i} is {init.type} but the body argument is {arg.type}")
    term = block.terminator
    if term is None or term.name != "cim.yield":
        raise VerifyError(op, "the loop body must end with 'cim.yield'")
    yielded = term.operands
    if len(yielded) < len(inits):
        raise VerifyError(op, f"'cim.yield' returns {len(yielded)} values, fewer than the {len(inits)} carried values")
    if len(op.results) != len(yielded):
        raise VerifyError(op, f"the loop has {len(op.results)} results but its body yields {len(yielded)} values")
    for i, (res, val) in enumerate(zip(op.results, yielded)):
        assert val is not None
        if i < len(inits):
            expected = val.type
        else:
            expected = TensorType(val.type.dtype, (res.type.shape[:1] or (None,)) + val.type.shape)
        if res.type != expected or (i >= len(inits) and res.type.rank != val.type.rank + 1):
            what = "carried" if i < len(inits) else "scan"
            raise VerifyError(op, f"type mismatch: {what} result #{i} is {res.type} but the body yields {val.type}")


LOOP = define(
    "cim.loop",
    "Structured recurrence: runs its body trip_count times, carrying state and stacking scan values.",
    operands="trip_count, inits*",
    results="results*",
    num_regions=1,
    verify=_verify_loop,
)

YIELD = define(
    "cim.yield",
    "Ends a loop body: next carried values, then this step's scan values.",
    operands="values*",
    terminator=True,
    pure=False,
)
