"""The Open Inference Protocol (v2) codec: infer requests and responses, as JSON and as binary tensors.

The model server parses requests and encodes responses with it; the gateway, the deployer's canary
replay and the monitor decode responses and samples with it. Triton's binary tensor extension (what
`tritonclient` sends by default) is understood both ways: the `Inference-Header-Content-Length`
header splits a body into its JSON header and the raw tensors after it, each tensor naming its
`binary_data_size`; BYTES elements are length-prefixed (4 bytes, little-endian).

Pydantic on tensor data costs up to 3x at batch 32, so bodies are checked field by field here (orjson
straight to numpy), and every refusal names the tensor and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gallery_common.errors import BadRequest

INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
# A model server's infer answer says what the request cost, for the gateway's usage metering: the rows of
# the request (the first input's batch dimension) and its seconds in the server (arrival to answer)
USAGE_ROWS_HEADER = "x-gallery-rows"
USAGE_SECONDS_HEADER = "x-gallery-compute-seconds"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""Each OIP datatype and the numpy dtype its tensors decode to (BYTES: an object array of str)."""

_DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}
_INTEGER_KINDS = "iub"


class ProtocolError(ValueError):
    """A body or header that does not follow the Open Inference Protocol; the message says where."""


class InferRequestError(BadRequest):
    """An infer request the model cannot run (400); the message says which input and why."""


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype of a numpy dtype (str and bytes arrays travel as BYTES)."""
    if dtype.kind in "USO":
        return "BYTES"
    datatype = _DATATYPE_OF.get(dtype.newbyteorder("="))
    if datatype is None:
        raise ProtocolError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return datatype


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, OIP datatype and shape (-1 for a dimension of any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    @property
    def batched(self) -> bool:
        """True when the first dimension is free, so requests can be stacked along it."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def metadata(self) -> dict[str, object]:
        """The tensor as the model metadata endpoint describes it."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def parse_header_length(value: str | int | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` of a body of `body_size` bytes (None: a JSON-only body).

    The header's value comes as sent (a string) or already a number; ProtocolError when it is not
    a whole number or points outside the body.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ProtocolError(f"{INFERENCE_HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 <= value <= body_size:
        raise ProtocolError(f"{INFERENCE_HEADER_LENGTH} {value} is outside the body ({body_size} bytes)")
    return value


class _BinaryPart:
    """The raw tensor bytes after the JSON header, handed out tensor by tensor."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: object, label: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{label}: 'binary_data_size' must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise ProtocolError(f"{label}: the body holds fewer binary bytes than its binary_data_size")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def check_used_up(self, kind: str) -> None:
        if self.offset != len(self.data):
            unclaimed = len(self.data) - self.offset
            raise ProtocolError(f"{unclaimed} binary bytes after the last {kind} are unclaimed")


def _read_document(
    body: bytes, header_length: str | int | None, what: str
) -> tuple[dict[str, Any], _BinaryPart | None]:
    """The JSON header of a body as an object, and the binary part after it when there is one."""
    length = parse_header_length(header_length, len(body))
    binary = None
    if length is not None:
        binary = _BinaryPart(memoryview(body)[length:])
        body = body[:length]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the {what} body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"the {what} body must be a JSON object")
    return document, binary


def _shape_of(raw: Mapping[str, Any], label: str) -> list[int]:
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{label} needs 'shape' as a list of non-negative integers")
    return shape


def _tensor_array(
    raw: Mapping[str, Any], label: str, datatype: str, dtype: np.dtype, shape: list[int], binary: _BinaryPart | None
) -> np.ndarray:
    """A tensor's values as an array of `shape`: its binary bytes or its JSON `data`, flat or nested."""
    parameters = raw.get("parameters")
    if isinstance(parameters, dict) and parameters.get("binary_data_size") is not None:
        if binary is None:
            raise ProtocolError(f"{label} has binary_data_size but no {INFERENCE_HEADER_LENGTH}")
        return _binary_tensor(binary.take(parameters["binary_data_size"], label), label, datatype, dtype, shape)
    if "data" not in raw:
        raise ProtocolError(f"{label} has no 'data'")
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    _check_element_type(data, label, datatype, dtype)
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"{label}: 'data' is not a {datatype} tensor: {exc}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise ProtocolError(f"{label} has {array.size} values; shape {shape} needs {expected}")
    if dtype.kind == "O" and array.size:
        _check_texts(array, label, datatype)
    return array.reshape(shape)


def _binary_tensor(chunk: memoryview, label: str, datatype: str, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape)
    if dtype.kind == "O":
        values: list[str] = []
        offset = 0
        while offset < len(chunk):
            if offset + 4 > len(chunk):
                raise ProtocolError(f"{label}: a BYTES element is cut off in the binary data")
            size = int.from_bytes(chunk[offset : offset + 4], "little")
            values.append(bytes(chunk[offset + 4 : offset + 4 + size]).decode("utf-8", "replace"))
            offset += 4 + size
        if len(values) != expected:
            raise ProtocolError(f"{label} has {len(values)} values; shape {shape} needs {expected}")
        return np.array(values, dtype=object).reshape(shape)
    if len(chunk) != expected * dtype.itemsize:
        raise ProtocolError(
            f"{label} has {len(chunk)} binary bytes; shape {shape} of {datatype} needs {expected * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)


def _first_leaf(data: list[Any]) -> Any:
    value: Any = data
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value


def _check_element_type(data: list[Any], label: str, datatype: str, dtype: np.dtype) -> None:
    """Refuse the commonest wrong-type payloads numpy would otherwise convert silently ("1.5" into FP32)."""
    leaf = _first_leaf(data)
    if leaf is None:
        return
    kind = dtype.kind
    if kind == "O":
        ok = isinstance(leaf, str)
    elif kind == "b":
        ok = isinstance(leaf, bool)
    elif kind in _INTEGER_KINDS:
        ok = isinstance(leaf, int) and not isinstance(leaf, bool)
    else:
        ok = isinstance(leaf, int | float) and not isinstance(leaf, bool)
    if not ok:
        raise ProtocolError(f"{label}: {type(leaf).__name__} values in a {datatype} tensor")


def _check_texts(array: np.ndarray, label: str, datatype: str) -> None:
    """A BYTES tensor from JSON holds strings only: a number or a list among them (which the first-element
    check does not see) is refused, naming the input and where it is, before it reaches the model."""
    for position, value in enumerate(array.reshape(-1)):
        if not isinstance(value, str):
            raise ProtocolError(
                f"{label}: value {position} is {type(value).__name__}; a {datatype} tensor carries strings (texts)"
            )


def _binary_bytes(flat: np.ndarray) -> bytes:
    if flat.dtype.kind in "USO":
        parts = []
        for value in flat:
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(parts)
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<")).tobytes()


def _tensor_document(name: str, datatype: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One tensor of a body: flat row-major `data`, or a `binary_data_size` and the bytes to append."""
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    flat = array.reshape(-1)
    if binary:
        blob = _binary_bytes(flat)
        tensor["parameters"] = {"binary_data_size": len(blob)}
        return tensor, blob
    if flat.dtype.kind == "S":
        tensor["data"] = [value.decode("utf-8", "replace") for value in flat.tolist()]
    elif flat.dtype.kind in "UO":
        tensor["data"] = flat.tolist()
    else:  # orjson writes a contiguous numeric array itself, far faster than tolist()
        tensor["data"] = np.ascontiguousarray(flat)
    return tensor, None


def _assemble(document: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int | None]:
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


@dataclass(frozen=True)
class InferRequest:
    """A parsed, validated infer request: one array per model input."""

    inputs: dict[str, np.ndarray]
    rows: int
    outputs: tuple[str, ...] | None
    id: str | None
    parameters: dict[str, Any] | None
    binary_outputs: frozenset[str] = frozenset()


def parse_infer_request(
    body: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    header_length: str | int | None = None,
) -> InferRequest:
    """Parse and validate an infer request body against the model's inputs and outputs.

    `header_length` is the request's `Inference-Header-Content-Length`, as sent; InferRequestError
    (400) says what is wrong with the request.
    """
    try:
        return _parse_request(body, inputs, outputs, header_length)
    except ProtocolError as exc:
        raise InferRequestError(str(exc)) from None


def parse_infer_document(
    document: dict[str, Any],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    binary: bytes | None = None,
) -> InferRequest:
    """`parse_infer_request` for a request already in hand as its JSON object (the gRPC adapter builds one
    from a protobuf message); `binary` holds the raw tensor bytes its inputs' `binary_data_size` claim, in order.
    """
    try:
        return _parse_document(document, None if binary is None else _BinaryPart(memoryview(binary)), inputs, outputs)
    except ProtocolError as exc:
        raise InferRequestError(str(exc)) from None


def raw_tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's values as the binary tensor extension and gRPC's raw contents carry them: flat, row-major,
    little-endian; BYTES elements length-prefixed."""
    return _binary_bytes(array.reshape(-1))


def _parse_request(
    body: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], header_length: str | int | None
) -> InferRequest:
    document, binary = _read_document(body, header_length, "request")
    return _parse_document(document, binary, inputs, outputs)


def _parse_document(
    document: dict[str, Any], binary: _BinaryPart | None, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> InferRequest:
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")

    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    for position, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise ProtocolError(f"inputs[{position}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"inputs[{position}] needs a string 'name'")
        spec = specs.get(name)
        if spec is None:
            raise ProtocolError(f"input {name!r} is not an input of this model (inputs: {', '.join(specs)})")
        if name in arrays:
            raise ProtocolError(f"input {name!r} is given twice")
        arrays[name] = _parse_input(raw, spec, binary)
    if binary is not None:
        binary.check_used_up("input")
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise ProtocolError(f"missing input(s) {', '.join(repr(n) for n in missing)}")

    wanted, binary_outputs = _requested_outputs(document.get("outputs"), outputs, parameters or {})
    if parameters:
        parameters = {k: v for k, v in parameters.items() if k != "binary_data_output"}
    return InferRequest(
        inputs=arrays,
        rows=_batch_rows(arrays, inputs),
        outputs=wanted,
        id=request_id,
        parameters=parameters,
        binary_outputs=binary_outputs,
    )


def _parse_input(raw: Mapping[str, Any], spec: TensorSpec, binary: _BinaryPart | None) -> np.ndarray:
    label = f"input {spec.name!r}"
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise ProtocolError(f"{label} has datatype {datatype!r}; the model expects {spec.datatype}")
    shape = _shape_of(raw, label)
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise ProtocolError(f"{label} has shape {shape}; the model expects {list(spec.shape)} (-1: any)")
    return _tensor_array(raw, label, spec.datatype, spec.dtype, shape, binary)


def _batch_rows(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> int:
    """Rows along the batch dimension, the same for every batched input (1 for an unbatched model)."""
    rows = {arrays[spec.name].shape[0] for spec in inputs if spec.batched}
    if len(rows) > 1:
        raise ProtocolError(f"the inputs disagree on the batch size (first dimensions {sorted(rows)})")
    return rows.pop() if rows else 1


def _requested_outputs(
    raw: Any, outputs: Sequence[TensorSpec], parameters: Mapping[str, Any]
) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The outputs asked for (None: all) and which of them go back as binary data."""
    all_binary = parameters.get("binary_data_output") is True
    if raw is None:
        return None, frozenset(spec.name for spec in outputs) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects")
    known = {spec.name for spec in outputs}
    names: list[str] = []
    binary: set[str] = set()
    for position, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(f"outputs[{position}] needs a string 'name'")
        if name not in known:
            raise ProtocolError(f"output {name!r} is not an output of this model (outputs: {', '.join(known)})")
        output_parameters = item.get("parameters")
        flag = output_parameters.get("binary_data") if isinstance(output_parameters, dict) else None
        if flag is True or (flag is None and all_binary):
            binary.add(name)
        names.append(name)
    return tuple(names), frozenset(binary)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray],
    outputs: Sequence[TensorSpec],
    *,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when some outputs are binary, the length of its JSON header. Its `id` is the
    request's, else `request_id` (the server's name for the request).

    The requested outputs (all when none were named) carry flat row-major data, or, when asked for
    in binary, a `binary_data_size` and their raw bytes after the JSON header.
    """
    wanted = request.outputs if request.outputs is not None else tuple(spec.name for spec in outputs)
    by_name = {spec.name: spec for spec in outputs}
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    answer_id = request.id if request.id is not None else request_id
    if answer_id is not None:
        document["id"] = answer_id
    if request.parameters:
        document["parameters"] = request.parameters
    tensors = []
    blobs: list[bytes] = []
    for name in wanted:
        tensor, blob = _tensor_document(name, by_name[name].datatype, results[name], name in request.binary_outputs)
        tensors.append(tensor)
        if blob is not None:
            blobs.append(blob)
    document["outputs"] = tensors
    return _assemble(document, blobs)


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = False,
    binary_outputs: bool = False,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """An infer request body for `inputs` (each array's dtype gives its datatype), and its JSON header's
    length when the tensors go as binary data (`binary`); `binary_outputs` asks for binary outputs."""
    document: dict[str, Any] = {}
    if request_id is not None:
        document["id"] = request_id
    if binary_outputs:
        document["parameters"] = {"binary_data_output": True}
    tensors = []
    blobs: list[bytes] = []
    for name, array in inputs.items():
        tensor, blob = _tensor_document(name, datatype_of(array.dtype), np.asarray(array), binary)
        tensors.append(tensor)
        if blob is not None:
            blobs.append(blob)
    document["inputs"] = tensors
    return _assemble(document, blobs)


@dataclass(frozen=True)
class InferResponse:
    """A decoded infer response: one array per output, in the order the response lists them."""

    model_name: str | None
    model_version: str | None
    id: str | None
    parameters: dict[str, Any] | None
    outputs: dict[str, np.ndarray]


def decode_infer_response(body: bytes, header_length: str | int | None = None) -> InferResponse:
    """Decode a response body (JSON or binary outputs); ProtocolError says what does not follow the protocol."""
    document, binary = _read_document(body, header_length, "response")
    arrays = _decoded_tensors(document, binary, "output")
    parameters = document.get("parameters")
    return InferResponse(
        model_name=_text(document.get("model_name")),
        model_version=_text(document.get("model_version")),
        id=_text(document.get("id")),
        parameters=parameters if isinstance(parameters, dict) else None,
        outputs=arrays,
    )


def decode_infer_inputs(body: bytes, header_length: str | int | None = None) -> dict[str, np.ndarray]:
    """A request body's inputs (JSON or binary) by name, each read by its own datatype and shape: there is no
    model signature to check them against (the gateway reads requests this way to sample them for the
    monitor). ProtocolError says what does not follow the protocol."""
    document, binary = _read_document(body, header_length, "request")
    return _decoded_tensors(document, binary, "input")


def json_tensors(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Tensors as the JSON objects of a body (`name`, `datatype`, `shape`, flat `data`), none binary."""
    return [_tensor_document(name, datatype_of(array.dtype), array, binary=False)[0] for name, array in arrays.items()]


def _decoded_tensors(document: Mapping[str, Any], binary: _BinaryPart | None, kind: str) -> dict[str, np.ndarray]:
    raw_tensors = document.get(f"{kind}s")
    if not isinstance(raw_tensors, list):
        raise ProtocolError(f"'{kind}s' must be a list of tensors")
    arrays: dict[str, np.ndarray] = {}
    for position, raw in enumerate(raw_tensors):
        if not isinstance(raw, dict):
            raise ProtocolError(f"{kind}s[{position}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{kind}s[{position}] needs a string 'name'")
        arrays[name] = _decode_tensor(raw, None, binary)
    if binary is not None:
        binary.check_used_up(kind)
    return arrays


def decode_tensor(raw: Mapping[str, Any], dtype: np.dtype | None = None) -> np.ndarray:
    """A JSON tensor (`{"name", "datatype", "shape", "data"}`) as an array of its shape.

    `dtype` decodes it as that type whatever its datatype says (the monitor reads every sample as
    FP32); without it the tensor's own datatype decides. ProtocolError says what is wrong with it.
    """
    return _decode_tensor(raw, dtype, None)


def _decode_tensor(raw: Mapping[str, Any], dtype: np.dtype | None, binary: _BinaryPart | None) -> np.ndarray:
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"a tensor must be an object, got {type(raw).__name__}")
    name = raw.get("name")
    label = f"tensor {name!r}" if isinstance(name, str) else "tensor"
    if dtype is None:
        datatype = raw.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ProtocolError(f"{label} has datatype {datatype!r}, which is not an OIP datatype")
        dtype = DATATYPES[datatype]
    else:
        datatype = datatype_of(dtype)
    return _tensor_array(raw, label, datatype, dtype, _shape_of(raw, label), binary)


def top_classes(scores: np.ndarray) -> np.ndarray:
    """The class each row names: the argmax over the last axis, or the values themselves of a 1-D
    tensor (a model's label output)."""
    return scores.argmax(axis=-1) if scores.ndim > 1 else scores


def response_first_output(body: bytes, header_length: str | int | None = None) -> np.ndarray:
    """A response's first output as an array; ProtocolError when it has none."""
    outputs = decode_infer_response(body, header_length).outputs
    if not outputs:
        raise ProtocolError("the response has no outputs")
    return np.asarray(next(iter(outputs.values())))


def response_top_classes(body: bytes, header_length: str | int | None = None) -> np.ndarray:
    """The top class per row of a response's first output; ProtocolError when it has none."""
    return top_classes(response_first_output(body, header_length))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
