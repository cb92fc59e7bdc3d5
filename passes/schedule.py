"""schedule: order the reads, conversions and digital ops of every block into numbered stages.

Within a block (the graph, or one time step of a loop body) each op gets a
``sched.stage``: one more than the latest stage among the ops it depends on,
where dependencies are the SSA edges plus one resource rule: an array
performs one read at a time, so two tiles on one array that are driven by
different inputs go to different stages (tiles that share weights are such
tiles: one set of devices, read once per MVM), while column pieces of one
MVM read on the same array share the read. A loop occupies every array its
body reads for as long as it runs, so two loops that read one array go to
different stages of the enclosing block. Constants cost no stage. The block's ops
are then reordered by stage (a valid topological order, found with networkx),
and each loop records ``sched.stages``, its latency in stages per time step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cimc.ir import Block, Module, Operation, Value
from cimc.pass_manager import ModulePass, register_pass

if TYPE_CHECKING:
    import networkx as nx

_FREE = ("builtin.constant",)


def read_key(op: Operation) -> tuple:
    """Tiles with equal keys on one array are served by one read."""
    return (tuple(id(v) for v in op.operands), tuple(op.attributes["rows"]))  # type: ignore[arg-type]


def _captured(op: Operation) -> list[Value]:
    """Every value ``op`` reads, including those read by ops nested in its regions."""
    if not op.regions:
        return [v for v in op.operands if v is not None]
    values = []
    for inner in op.walk():
        values.extend(v for v in inner.operands if v is not None)
    return values


def _arrays_read(op: Operation) -> set[int]:
    """The arrays ``op`` reads: a placed tile's own, or, for a loop, every array its body reads at each step."""
    if op.name == "cim.tile_mvm":
        return {int(op.attributes["array"])} if "array" in op.attributes else set()  # type: ignore[arg-type]
    if not op.regions:
        return set()
    return {int(t.attributes["array"]) for t in op.walk() if t.name == "cim.tile_mvm" and "array" in t.attributes}  # type: ignore[arg-type]


def dependency_graph(block: Block) -> nx.DiGraph:
    import networkx as nx  # here, not at the top: only place and schedule need it, not every user of the pass registry

    ops = [op for op in block.ops if op is not block.terminator]
    position = {id(op): i for i, op in enumerate(ops)}
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(ops)))
    for i, op in enumerate(ops):
        for value in _captured(op):
            producer = getattr(value, "op", None)
            j = position.get(id(producer)) if producer is not None else None
            if j is not None and j != i:
                graph.add_edge(j, i)
    return graph


def schedule_block(block: Block) -> int:
    """Assign stages in one block and reorder it; return the number of stages used."""
    import networkx as nx

    for op in block.ops:
        for region in op.regions:
            stages = schedule_block(region.block)
            op.attributes["sched.stages"] = stages
    ops = [op for op in block.ops if op is not block.terminator]
    graph = dependency_graph(block)
    stage: dict[int, int] = {}
    busy: dict[tuple[int, int], tuple] = {}
    for i in nx.lexicographical_topological_sort(graph):
        op = ops[i]
        ready = max((stage[p] + (0 if ops[p].name in _FREE else 1) for p in graph.predecessors(i)), default=0)
        arrays, key = _arrays_read(op), read_key(op) if op.name == "cim.tile_mvm" else ("region", id(op))
        while any(busy.get((array, ready), key) != key for array in arrays):
            ready += 1
        for array in arrays:
            busy[(array, ready)] = key
        stage[i] = ready
    order = sorted(range(len(ops)), key=lambda i: (stage[i], i))
    terminator = block.terminator
    block.ops = [ops[i] for i in order] + ([terminator] if terminator is not None else [])
    for i, op in enumerate(ops):
        if op.name not in _FREE:
            op.attributes["sched.stage"] = stage[i]
    return 1 + max((stage[i] for i in range(len(ops)) if ops[i].name not in _FREE), default=-1)


@register_pass
@dataclass(frozen=True)
class Schedule(ModulePass):
    """Order array reads, conversions and digital ops into stages, respecting data and array-port dependencies."""

    name = "schedule"

    def apply(self, module: Module) -> bool:
        module.attributes["graph_stages"] = schedule_block(module.body)
        return True
