"""Untrusted ONNX files: parse, refuse external data, check, and only then hand the bytes on.

Every model file is untrusted input. ONNX's external-data loader has had path-traversal holes
again and again, and ONNX Runtime has read the external data of sparse tensors outside the model
folder, so the only safe rule is to allow none: a model whose tensors reference external data is
refused before anything loads it. Load the returned model's *bytes* (`InferenceSession(data)`),
never a path, so no runtime has a folder to resolve references against.

`onnx` is imported lazily: services without it can still import `gallery_common`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest

if TYPE_CHECKING:
    import onnx

__all__ = ["UnsafeOnnxModel", "external_data_references", "verify_self_contained_onnx"]


class UnsafeOnnxModel(InvalidRequest):
    """An ONNX file that must not be loaded: unparseable, invalid, or referencing external data."""


def verify_self_contained_onnx(data: bytes) -> onnx.ModelProto:
    """Parse `data` as one self-contained ONNX model and return it, or raise UnsafeOnnxModel saying why.

    Refused: bytes that are not an ONNX model; any tensor stored as external data (initializers,
    sparse initializers, tensors in node attributes such as Constant's `value` / `sparse_value`),
    in the main graph, in subgraphs (If / Loop / Scan bodies), in function bodies and in training
    info; and a model `onnx.checker.check_model` rejects.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise UnsafeOnnxModel("the ONNX file is empty")
    try:
        model = onnx.load(io.BytesIO(data), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UnsafeOnnxModel(f"not an ONNX model: {exc}") from None
    if not model.HasField("graph"):
        raise UnsafeOnnxModel("not an ONNX model: it has no graph")
    references = list(external_data_references(model))
    if references:
        shown = ", ".join(references[:5]) + (f" and {len(references) - 5} more" if len(references) > 5 else "")
        raise UnsafeOnnxModel(f"the ONNX model references external data ({shown}); only self-contained models load")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeOnnxModel(f"invalid ONNX model: {first_line}") from None
    return model


def external_data_references(model: onnx.ModelProto) -> Iterator[str]:
    """Where `model` refers to external data, one readable location per tensor (empty if none)."""
    yield from _graph_references(model.graph, "graph")
    for function in model.functions:
        yield from _nodes_references(function.node, f"function {function.domain}:{function.name}")
    for index, info in enumerate(model.training_info):
        yield from _graph_references(info.initialization, f"training_info[{index}].initialization")
        yield from _graph_references(info.algorithm, f"training_info[{index}].algorithm")


def _is_external(tensor: onnx.TensorProto) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _sparse_is_external(sparse: onnx.SparseTensorProto) -> bool:
    return _is_external(sparse.values) or _is_external(sparse.indices)


def _graph_references(graph: onnx.GraphProto, where: str) -> Iterator[str]:
    for tensor in graph.initializer:
        if _is_external(tensor):
            yield f"initializer {tensor.name!r} in {where}"
    for sparse in graph.sparse_initializer:
        if _sparse_is_external(sparse):
            yield f"sparse initializer {sparse.values.name!r} in {where}"
    yield from _nodes_references(graph.node, where)


def _nodes_references(nodes: Any, where: str) -> Iterator[str]:
    for node in nodes:
        label = f"node {node.name or node.op_type!r} ({node.op_type}) in {where}"
        for attribute in node.attribute:
            if attribute.HasField("t") and _is_external(attribute.t):
                yield f"attribute {attribute.name!r} of {label}"
            if any(_is_external(t) for t in attribute.tensors):
                yield f"attribute {attribute.name!r} of {label}"
            if attribute.HasField("sparse_tensor") and _sparse_is_external(attribute.sparse_tensor):
                yield f"attribute {attribute.name!r} of {label}"
            if any(_sparse_is_external(s) for s in attribute.sparse_tensors):
                yield f"attribute {attribute.name!r} of {label}"
            if attribute.HasField("g"):
                yield from _graph_references(attribute.g, f"subgraph {attribute.name!r} of {label}")
            for index, subgraph in enumerate(attribute.graphs):
                yield from _graph_references(subgraph, f"subgraph {attribute.name}[{index}] of {label}")
