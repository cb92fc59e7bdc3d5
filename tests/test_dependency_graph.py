"""The dependency graph that place and schedule share (cimc.passes.schedule.DependencyGraph): its layers and its
order, against their definitions on a small block written out by hand."""

from __future__ import annotations

from cimc.ir import Block, Operation
from cimc.passes.schedule import dependency_graph
from cimc.types import TensorType

F = TensorType("f32", (1, 4))


def block_of(reads: list[list[int]]) -> Block:
    """Op i is an onnx.Add of the ops ``reads[i]`` (the block argument where it reads fewer than two)."""
    body = Block([F], ["x"])
    ops: list[Operation] = []
    for sources in reads:
        operands = [ops[j].result for j in sources] + [body.args[0]] * (2 - len(sources))
        ops.append(body.append(Operation("onnx.Add", operands, [F])))
    body.append(Operation("builtin.return", [ops[-1].result]))
    return body


def test_layers_put_every_op_one_after_the_latest_it_reads() -> None:
    reads = [[], [], [0], [0, 0], [2, 1], [3], [4, 5]]  # op 3 reads op 0 twice: one dependency
    graph = dependency_graph(block_of(reads))
    assert graph.predecessors[3] == [0] and graph.successors[0] == [2, 3]
    layers = list(graph.generations())
    level = {i: n for n, layer in enumerate(layers) for i in layer}
    for i, sources in enumerate(reads):
        assert level[i] == 1 + max((level[j] for j in sources), default=-1)
    # Within a layer: in the order the ops became ready (their last predecessor's layer order, then reading order).
    assert layers == [[0, 1], [2, 3], [4, 5], [6]]


def test_smallest_first_is_the_least_ready_op_at_every_step() -> None:
    graph = dependency_graph(block_of([[], [0], [], [1, 2], [0]]))
    order = list(graph.smallest_first())
    assert sorted(order) == list(range(5))
    done: set[int] = set()
    for i in order:
        ready = [j for j in range(5) if j not in done and all(p in done for p in graph.predecessors[j])]
        assert i == min(ready)
        done.add(i)
