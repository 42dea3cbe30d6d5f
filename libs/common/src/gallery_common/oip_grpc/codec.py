"""OIP gRPC messages to and from the REST codec's forms (`gallery_common.contracts.oip`).

A `ModelInferRequest` becomes the JSON document and binary part a REST request with binary tensors
would have (`raw_input_contents` as the bytes each input's `binary_data_size` claims; typed `contents`
as `data`), so it is validated by the same code, with the same reasons. Answers go back as
`raw_output_contents`, as Triton answers and as tritonclient.grpc reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gallery_common.contracts.oip import (
    InferRequest,
    ProtocolError,
    TensorSpec,
    datatype_of,
    decode_infer_response,
    raw_tensor_bytes,
)

from . import grpc_predict_v2_pb2 as pb

# the field of InferTensorContents that carries each datatype (FP16 has none: it travels raw)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A message's `parameters` map as plain values."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _set_parameters(target: Any, parameters: Mapping[str, Any]) -> None:
    for key, value in parameters.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        else:
            parameter.string_param = value if isinstance(value, str) else str(value)


def _contents_data(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor, kind: str = "input"
) -> list[Any]:
    datatype = tensor.datatype
    if datatype == "FP16":
        raise ProtocolError(
            f"{kind} {tensor.name!r}: FP16 tensors travel in raw_{kind}_contents (they have no contents field)"
        )
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        return []  # the datatype check that follows names what is wrong
    values = list(getattr(tensor.contents, field))
    if datatype == "BYTES":
        return [value.decode("utf-8", "replace") for value in values]
    return values


def request_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes | None]:
    """The REST form of a gRPC infer request: its JSON document, and the raw tensor bytes when it has any.

    ProtocolError when the message mixes raw and typed contents or holds a different number of raw
    tensors than inputs.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    inputs: list[dict[str, Any]] = []
    for position, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"input {tensor.name!r} has contents although the request uses raw_input_contents")
            item["parameters"] = {"binary_data_size": len(raw[position])}
        else:
            item["data"] = _contents_data(tensor)
        inputs.append(item)
    document: dict[str, Any] = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.parameters:
        document["parameters"] = parameters_of(request.parameters)
    if request.outputs:
        document["outputs"] = [{"name": output.name} for output in request.outputs]
    return document, b"".join(raw) if raw else None


def response_document(response: pb.ModelInferResponse) -> tuple[dict[str, Any], bytes | None]:
    """The REST form of a gRPC infer answer: its JSON document (outputs only), and the raw tensor bytes when it
    has any. ProtocolError as for `request_document`."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ProtocolError(f"raw_output_contents holds {len(raw)} tensors for {len(response.outputs)} outputs")
    outputs: list[dict[str, Any]] = []
    for position, tensor in enumerate(response.outputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            item["parameters"] = {"binary_data_size": len(raw[position])}
        else:
            item["data"] = _contents_data(tensor, "output")
        outputs.append(item)
    return {"outputs": outputs}, b"".join(raw) if raw else None


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    parameters: Mapping[str, Any] | None,
    results: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
) -> pb.ModelInferResponse:
    """A `ModelInferResponse` with each result (in order) as raw output contents."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    if parameters:
        _set_parameters(response.parameters, parameters)
    for name, array in results.items():
        response.outputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        response.raw_output_contents.append(raw_tensor_bytes(array))
    return response


def served_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray],
    outputs: Sequence[TensorSpec],
) -> pb.ModelInferResponse:
    """The answer to `request`: the outputs it asked for (all when it named none), as the model declares them."""
    wanted = request.outputs if request.outputs is not None else tuple(spec.name for spec in outputs)
    datatypes = {spec.name: spec.datatype for spec in outputs}
    return infer_response(
        model_name, model_version, request.id, request.parameters, {name: results[name] for name in wanted}, datatypes
    )


def response_from_rest(body: bytes, header_length: str | None) -> pb.ModelInferResponse:
    """A REST infer answer (JSON or binary outputs) as a `ModelInferResponse`; ProtocolError if it is not OIP."""
    decoded = decode_infer_response(body, header_length)
    datatypes = {name: datatype_of(array.dtype) for name, array in decoded.outputs.items()}
    return infer_response(
        decoded.model_name or "",
        decoded.model_version or "",
        decoded.id,
        decoded.parameters,
        decoded.outputs,
        datatypes,
    )


def metadata_response(document: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """A model metadata document (the REST `GET /v2/models/{name}` JSON) as a `ModelMetadataResponse`."""
    response = pb.ModelMetadataResponse(
        name=document.get("name", ""), versions=document.get("versions", []), platform=document.get("platform", "")
    )
    for kind in ("inputs", "outputs"):
        for tensor in document.get(kind, []):
            getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    _set_parameters(response.parameters, document.get("parameters") or {})
    return response
