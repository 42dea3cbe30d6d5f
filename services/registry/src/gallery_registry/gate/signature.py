"""The signature a `model.trained` event declares, checked against the ONNX graph it points to."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from gallery_common.events import Signature, TensorSpec

# Open Inference Protocol datatype names, the ones signatures use.
_OIP_DATATYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}
# Spellings producers use for the same types (numpy dtype names).
_ALIASES = {
    "FLOAT32": "FP32",
    "FLOAT": "FP32",
    "FLOAT64": "FP64",
    "DOUBLE": "FP64",
    "FLOAT16": "FP16",
    "HALF": "FP16",
    "BFLOAT16": "BF16",
    "STRING": "BYTES",
}


@dataclass(frozen=True)
class GraphTensor:
    """An input or output of the graph: name, OIP datatype, dimensions (-1 where not fixed)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def normalize_datatype(datatype: str) -> str:
    """The OIP name of a datatype spelled either way (`FP32`, `float32`)."""
    upper = datatype.strip().upper()
    return _ALIASES.get(upper, upper)


def graph_tensors(model: onnx.ModelProto) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's real inputs (initializers excluded) and its outputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_tensor(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(v) for v in model.graph.output]
    return inputs, outputs


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    tensor_type = value.type.tensor_type
    datatype = _OIP_DATATYPES.get(tensor_type.elem_type, onnx.TensorProto.DataType.Name(tensor_type.elem_type))
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return GraphTensor(value.name, datatype, dims)


def signature_mismatches(signature: Signature, model: onnx.ModelProto) -> list[str]:
    """Every way the declared signature disagrees with the graph: names, datatypes, ranks, fixed sizes."""
    inputs, outputs = graph_tensors(model)
    return _compare("input", signature.inputs, inputs) + _compare("output", signature.outputs, outputs)


def _compare(kind: str, declared: list[TensorSpec], actual: list[GraphTensor]) -> list[str]:
    problems: list[str] = []
    by_name = {t.name: t for t in actual}
    for spec in declared:
        tensor = by_name.get(spec.name)
        if tensor is None:
            have = ", ".join(repr(t.name) for t in actual) or "none"
            problems.append(f"signature {kind} {spec.name!r} is not in the ONNX graph (its {kind}s: {have})")
            continue
        want_type = normalize_datatype(spec.datatype)
        if want_type != tensor.datatype:
            problems.append(f"signature {kind} {spec.name!r} is {want_type} but the ONNX graph has {tensor.datatype}")
        if len(spec.shape) != len(tensor.shape):
            problems.append(
                f"signature {kind} {spec.name!r} has rank {len(spec.shape)} but the ONNX graph has rank "
                f"{len(tensor.shape)} {list(tensor.shape)}"
            )
            continue
        for axis, (want_size, have_size) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
            if want_size >= 0 and have_size >= 0 and want_size != have_size:
                problems.append(
                    f"signature {kind} {spec.name!r} has size {want_size} on axis {axis} but the ONNX graph has "
                    f"{have_size}"
                )
    declared_names = {s.name for s in declared}
    for tensor in actual:
        if kind == "input" and tensor.name not in declared_names:
            problems.append(f"ONNX graph input {tensor.name!r} is not in the signature")
    return problems
