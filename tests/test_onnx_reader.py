"""cimc.onnx_reader.read_model against onnx.load, and the importer's ownership of what it reads.

Every check is exact (bytes or array equality): the reader copies data, it computes nothing.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.importer import import_model, import_onnx
from cimc.onnx_reader import read_model

SHAPE = (160, 160)  # 25,600 elements: over the 16 KiB of raw data the reader leaves in the message, for any type
BIG = SHAPE[0] * SHAPE[1]


def _model(initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """Each initializer through an Identity to an output: a model onnx.checker accepts."""
    nodes = []
    for i, init in enumerate(initializers):
        nodes.append(helper.make_node("Identity", [init.name], [f"id{i}"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"id{i}", init.data_type, list(init.dims))
                               for i, init in enumerate(initializers)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _assert_as_onnx_loads(path: Path) -> tuple[onnx.ModelProto, list[np.ndarray | None]]:
    """read_model's message, with each taken array put back as raw data, serializes as onnx.load's message."""
    model, arrays = read_model(path)
    reference = onnx.load(str(path))
    for init, ref, array in zip(model.graph.initializer, reference.graph.initializer, arrays):
        if array is not None:
            expected = numpy_helper.to_array(ref)
            assert array.dtype == expected.dtype and array.shape == expected.shape
            assert array.tobytes() == expected.tobytes() and not init.HasField("raw_data")
            assert array.flags.owndata and array.flags.c_contiguous and array.flags.writeable
            init.raw_data = array.tobytes()
    assert model.SerializeToString() == reference.SerializeToString()
    return model, arrays


def test_large_raw_initializers_are_read_into_arrays_of_their_own(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(SHAPE).astype(dtype), f"w_{np.dtype(dtype).name}")
             for dtype in (np.float32, np.float64, np.float16, np.int64, np.int8, np.uint16, np.complex64)]
    inits.append(numpy_helper.from_array(rng.standard_normal(BIG) > 0, "mask"))
    inits.append(numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "small"))  # 16 KiB: kept
    path = tmp_path / "m.onnx"
    onnx.save(_model(inits), path)
    _, arrays = _assert_as_onnx_loads(path)
    assert [a is not None for a in arrays] == [True] * 8 + [False]


def test_tensors_to_array_must_read_keep_their_data_in_the_message(tmp_path: Path) -> None:
    """Typed fields (float_data), element types numpy has no built-in for (bfloat16), and raw data that does not
    fill the dims are left to onnx: the message keeps them as onnx.load gives them."""
    rng = np.random.default_rng(1)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, SHAPE, rng.standard_normal(BIG).astype(np.float32))
    bf16 = helper.make_tensor("bf16", TensorProto.BFLOAT16, SHAPE, rng.integers(0, 2**16, BIG).astype(np.uint16)
                              .tobytes(), raw=True)
    path = tmp_path / "m.onnx"
    onnx.save(_model([typed, bf16]), path)
    assert _assert_as_onnx_loads(path)[1] == [None, None]

    short = numpy_helper.from_array(np.zeros(SHAPE, np.float32), "short")
    short.raw_data = short.raw_data[:-4]
    model = _model([numpy_helper.from_array(np.zeros(SHAPE, np.float32), "w")])
    model.graph.initializer.append(short)  # not in a node: onnx.checker does not look at it
    path.write_bytes(model.SerializeToString())
    model, arrays = _assert_as_onnx_loads(path)
    assert arrays[1] is None and len(model.graph.initializer[1].raw_data) == 4 * BIG - 4


@pytest.mark.parametrize("last_elements", [BIG, 1])
def test_a_repeated_raw_data_field_reads_as_its_last_occurrence(tmp_path: Path, last_elements: int) -> None:
    """Protobuf keeps the last of a repeated scalar field: appending a second raw_data to an initializer's bytes
    replaces its data, and the reader must agree with onnx.load on which data that is (a short last one is
    then the tensor's data, which does not fill its dims: it stays in the message, for to_array to refuse)."""
    first, last = np.zeros(SHAPE, np.float32), np.arange(last_elements, dtype=np.float32)
    model = _model([numpy_helper.from_array(first, "w")])
    tensor = model.graph.initializer[0].SerializeToString() + TensorProto(raw_data=last.tobytes()).SerializeToString()
    model.graph.initializer[0].ParseFromString(tensor)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    model, arrays = _assert_as_onnx_loads(path)
    if last_elements == BIG:
        np.testing.assert_array_equal(arrays[0], last.reshape(SHAPE))
    else:
        assert arrays[0] is None and model.graph.initializer[0].raw_data == last.tobytes()


def test_external_data_is_loaded_as_onnx_load_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal(SHAPE).astype(np.float32), name) for name in ("a", "b")]
    path = tmp_path / "m.onnx"
    onnx.save(_model(inits), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    model, arrays = _assert_as_onnx_loads(path)
    assert arrays == [None, None] and all(i.data_location == TensorProto.DEFAULT for i in model.graph.initializer)


@pytest.mark.parametrize("content", [b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x3a\x05\x2a\x80\x80\x80\x80"])
def test_a_file_it_cannot_walk_is_left_to_onnx_load(tmp_path: Path, content: bytes) -> None:
    """An empty file is an empty model to onnx; a truncated field is onnx's DecodeError, not the reader's own."""
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    try:
        expected: object = onnx.load(str(path)).SerializeToString()
    except Exception as e:  # noqa: BLE001
        expected = type(e)
    try:
        got: object = read_model(path)[0].SerializeToString()
    except Exception as e:  # noqa: BLE001
        got = type(e)
    assert got == expected


def _weights_model(path: Path, shape: tuple[int, int]) -> np.ndarray:
    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return w


def _constant(module, name: str) -> np.ndarray:
    return next(op.attributes["value"].array for op in module.body.ops
                if op.name == "builtin.constant" and op.results[0].name == name)


def test_imported_weights_own_their_data_and_are_read_only(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    w = _weights_model(path, SHAPE)
    array = _constant(import_onnx(path), "w")
    np.testing.assert_array_equal(array, w)
    assert array.flags.owndata and not array.flags.writeable


def test_an_imported_initializer_does_not_alias_the_message(tmp_path: Path) -> None:
    """The message stays the caller's: writing its raw data after the import must not change the module."""
    path = tmp_path / "m.onnx"
    w = _weights_model(path, SHAPE)
    model = onnx.load(str(path))
    module = import_model(model, "m.onnx")
    model.graph.initializer[0].raw_data = np.ones_like(w).tobytes()
    array = _constant(module, "w")
    np.testing.assert_array_equal(array, w)
    assert not array.flags.writeable


def test_the_import_holds_the_weights_once(tmp_path: Path) -> None:
    """Traced allocations (numpy's and Python's) at their peak during an import of 4 MiB of weights stay under 1.5
    times the weights: one copy of them plus the import's own working set (shape inference of a one-node model,
    the IR: well under 1 MiB). onnx.load then to_array peaked at 3 copies (file bytes, the raw_data bytes, ...)."""
    path = tmp_path / "m.onnx"
    w = _weights_model(path, (1024, 1024))
    import_onnx(path)  # warm: the first import loads dialects and onnx's schemas
    tracemalloc.start()
    try:
        module = import_onnx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * w.nbytes, f"{peak / w.nbytes:.2f} x the weights"
    np.testing.assert_array_equal(_constant(module, "w"), w)
