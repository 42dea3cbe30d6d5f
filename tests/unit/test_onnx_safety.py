"""Untrusted ONNX files: any external-data reference is refused before a runtime sees the bytes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gallery_common.errors import InvalidRequest
from gallery_common.onnx_safety import UnsafeOnnxModel, verify_self_contained_onnx

OPSET = [helper.make_opsetid("", 17)]


def make_external(tensor: TensorProto, location: str = "../../../etc/passwd") -> TensorProto:
    """Point `tensor` at a file, the way a hostile producer would; the inline data goes."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weight() -> TensorProto:
    return numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), "w")


def add_model(initializer: TensorProto | None = None, extra_nodes=(), sparse=()) -> onnx.ModelProto:
    """y = x + w over FP32 [4]; `w` comes from an initializer or from nodes that produce it."""
    graph = helper.make_graph(
        [*extra_nodes, helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[initializer] if initializer is not None else [],
        sparse_initializer=list(sparse),
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def sparse_weight() -> onnx.SparseTensorProto:
    values = numpy_helper.from_array(np.array([5.0], dtype=np.float32), "w")
    indices = numpy_helper.from_array(np.array([2], dtype=np.int64), "w_indices")
    return helper.make_sparse_tensor(values, indices, [4])


def if_model(then_value: TensorProto) -> onnx.ModelProto:
    """An If whose then-branch holds a Constant: the reference hides one graph down."""
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["w_then"], value=then_value)],
        "then",
        [],
        [helper.make_tensor_value_info("w_then", TensorProto.FLOAT, [4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["w_else"], value=weight())],
        "else",
        [],
        [helper.make_tensor_value_info("w_else", TensorProto.FLOAT, [4])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["w"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def test_a_clean_model_passes_and_runs_from_the_verified_bytes() -> None:
    data = add_model(weight()).SerializeToString()
    model = verify_self_contained_onnx(data)
    assert [i.name for i in model.graph.input] == ["x"]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones(4, dtype=np.float32)})
    assert y.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_clean_sparse_initializer_and_subgraph_constants_pass() -> None:
    verify_self_contained_onnx(add_model(sparse=[sparse_weight()]).SerializeToString())
    verify_self_contained_onnx(if_model(weight()).SerializeToString())


@pytest.mark.parametrize(
    ("model", "where"),
    [
        (lambda: add_model(make_external(weight())), "initializer 'w' in graph"),
        (
            lambda: add_model(
                sparse=[helper.make_sparse_tensor(make_external(weight()), sparse_weight().indices, [4])]
            ),
            "sparse initializer 'w' in graph",
        ),
        (
            lambda: add_model(extra_nodes=[helper.make_node("Constant", [], ["w"], value=make_external(weight()))]),
            "attribute 'value' of node 'Constant' (Constant) in graph",
        ),
        (
            lambda: add_model(
                extra_nodes=[
                    helper.make_node(
                        "Constant",
                        [],
                        ["w"],
                        name="dense_from_sparse",
                        sparse_value=helper.make_sparse_tensor(
                            make_external(sparse_weight().values), sparse_weight().indices, [4]
                        ),
                    )
                ]
            ),
            "attribute 'sparse_value' of node 'dense_from_sparse'",
        ),
        (
            lambda: if_model(make_external(weight())),
            "attribute 'value' of node 'Constant' (Constant) in subgraph 'then_branch' of node 'If' (If)",
        ),
    ],
    ids=["initializer", "sparse-initializer", "constant-value", "constant-sparse-value", "if-subgraph"],
)
def test_every_external_data_reference_is_refused(model, where: str) -> None:
    with pytest.raises(UnsafeOnnxModel) as refused:
        verify_self_contained_onnx(model().SerializeToString())
    assert "references external data" in str(refused.value)
    assert where in str(refused.value)
    assert isinstance(refused.value, InvalidRequest)  # a client sees a 422 with the reason


def test_an_external_reference_inside_a_function_body_is_refused() -> None:
    body = [
        helper.make_node("Constant", [], ["c"], value=make_external(weight())),
        helper.make_node("Add", ["a", "c"], ["b"]),
    ]
    function = helper.make_function("custom", "AddHidden", ["a"], ["b"], body, OPSET)
    graph = helper.make_graph(
        [helper.make_node("AddHidden", ["x"], ["y"], domain="custom")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(
        graph, opset_imports=[*OPSET, helper.make_opsetid("custom", 1)], functions=[function], ir_version=8
    )
    with pytest.raises(UnsafeOnnxModel, match="function custom:AddHidden"):
        verify_self_contained_onnx(model.SerializeToString())


def test_a_location_entry_alone_counts_as_external() -> None:
    tensor = weight()
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"  # data_location left DEFAULT
    with pytest.raises(UnsafeOnnxModel, match="initializer 'w'"):
        verify_self_contained_onnx(add_model(tensor).SerializeToString())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01\xff garbage", "not an ONNX model"),
        (b"\x08\x07", "no graph"),  # a valid ModelProto (ir_version 7) with nothing in it
    ],
)
def test_bytes_that_are_not_a_model_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(UnsafeOnnxModel, match=reason):
        verify_self_contained_onnx(data)


def test_a_model_the_checker_rejects_is_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "missing"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    with pytest.raises(UnsafeOnnxModel, match=r"invalid ONNX model: .*missing"):
        verify_self_contained_onnx(model.SerializeToString())
