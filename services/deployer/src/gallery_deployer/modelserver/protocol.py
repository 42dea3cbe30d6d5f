"""The OIP v2 infer request and response bodies: orjson straight to numpy, validated by hand.

Triton's binary tensor extension is understood too (what `tritonclient` sends by default): the
`Inference-Header-Content-Length` header splits the body into the JSON header and raw tensors, each
input naming its `binary_data_size`, and outputs asked for with `binary_data` come back the same way.

Pydantic on tensor data costs up to 3x at batch 32 (see facts.md), so a request body is checked
field by field against the model's signature here, and every refusal names the input and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gallery_common.errors import BadRequest

from .tensors import TensorSpec


class InferRequestError(BadRequest):
    """An infer request the model cannot run; the message says which input and why."""


@dataclass(frozen=True)
class InferRequest:
    """A parsed, validated infer request: one array per model input."""

    inputs: dict[str, np.ndarray]
    rows: int
    outputs: tuple[str, ...] | None
    id: str | None
    parameters: dict[str, Any] | None
    binary_outputs: frozenset[str] = frozenset()


class _BinaryPart:
    """The raw tensor bytes after the JSON header, handed out input by input."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: object, name: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InferRequestError(f"input {name!r}: 'binary_data_size' must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise InferRequestError(f"input {name!r}: the body holds fewer binary bytes than its binary_data_size")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


_INTEGER_KINDS = "iub"


def parse_infer_request(
    body: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], header_length: int | None = None
) -> InferRequest:
    """Parse and validate an OIP infer body against the model's inputs and outputs.

    `header_length` is the `Inference-Header-Content-Length` header of a binary-extension request.
    """
    binary: _BinaryPart | None = None
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise InferRequestError(f"Inference-Header-Content-Length {header_length} is outside the body")
        binary = _BinaryPart(memoryview(body)[header_length:])
        body = body[:header_length]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InferRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InferRequestError("the request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferRequestError("'id' must be a string")
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InferRequestError("'parameters' must be an object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InferRequestError("'inputs' must be a non-empty list of tensors")

    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    for position, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InferRequestError(f"inputs[{position}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InferRequestError(f"inputs[{position}] needs a string 'name'")
        spec = specs.get(name)
        if spec is None:
            raise InferRequestError(f"input {name!r} is not an input of this model (inputs: {', '.join(specs)})")
        if name in arrays:
            raise InferRequestError(f"input {name!r} is given twice")
        arrays[name] = _parse_tensor(raw, spec, binary)
    if binary is not None and binary.offset != len(binary.data):
        raise InferRequestError(f"{len(binary.data) - binary.offset} binary bytes after the last input are unclaimed")
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise InferRequestError(f"missing input(s) {', '.join(repr(n) for n in missing)}")

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


def _parse_tensor(raw: Mapping[str, Any], spec: TensorSpec, binary: _BinaryPart | None) -> np.ndarray:
    name = spec.name
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise InferRequestError(f"input {name!r} has datatype {datatype!r}; the model expects {spec.datatype}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InferRequestError(f"input {name!r} needs 'shape' as a list of non-negative integers")
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise InferRequestError(f"input {name!r} has shape {shape}; the model expects {list(spec.shape)} (-1: any)")
    parameters = raw.get("parameters")
    if isinstance(parameters, dict) and parameters.get("binary_data_size") is not None:
        if binary is None:
            raise InferRequestError(f"input {name!r} has binary_data_size but no Inference-Header-Content-Length")
        return _binary_tensor(binary.take(parameters["binary_data_size"], name), spec, shape)
    if "data" not in raw:
        raise InferRequestError(f"input {name!r} has no 'data'")
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    _check_element_type(data, spec)
    try:
        array = np.asarray(data, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InferRequestError(f"input {name!r}: 'data' is not a {spec.datatype} tensor: {exc}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise InferRequestError(f"input {name!r} has {array.size} values; shape {shape} needs {expected}")
    if spec.datatype == "BYTES":
        array = np.vectorize(_as_text, otypes=[object])(array) if array.size else array
    return array.reshape(shape)


def _binary_tensor(chunk: memoryview, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape)
    if spec.datatype == "BYTES":
        values: list[str] = []
        offset = 0
        while offset < len(chunk):
            if offset + 4 > len(chunk):
                raise InferRequestError(f"input {spec.name!r}: a BYTES element is cut off in the binary data")
            size = int.from_bytes(chunk[offset : offset + 4], "little")
            values.append(bytes(chunk[offset + 4 : offset + 4 + size]).decode("utf-8", "replace"))
            offset += 4 + size
        if len(values) != expected:
            raise InferRequestError(f"input {spec.name!r} has {len(values)} values; shape {shape} needs {expected}")
        return np.array(values, dtype=object).reshape(shape)
    itemsize = spec.dtype.itemsize
    if len(chunk) != expected * itemsize:
        raise InferRequestError(
            f"input {spec.name!r} has {len(chunk)} binary bytes; shape {shape} of {spec.datatype} needs "
            f"{expected * itemsize}"
        )
    return np.frombuffer(chunk, dtype=spec.dtype.newbyteorder("<")).reshape(shape)


def _first_leaf(data: list[Any]) -> Any:
    value: Any = data
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value


def _check_element_type(data: list[Any], spec: TensorSpec) -> None:
    """Refuse the commonest wrong-type payloads numpy would otherwise convert silently ("1.5" into FP32)."""
    leaf = _first_leaf(data)
    if leaf is None:
        return
    kind = spec.dtype.kind
    if kind == "O":
        ok = isinstance(leaf, str)
    elif kind == "b":
        ok = isinstance(leaf, bool)
    elif kind in _INTEGER_KINDS:
        ok = isinstance(leaf, int) and not isinstance(leaf, bool)
    else:
        ok = isinstance(leaf, int | float) and not isinstance(leaf, bool)
    if not ok:
        raise InferRequestError(f"input {spec.name!r}: {type(leaf).__name__} values in a {spec.datatype} tensor")


def _as_text(value: object) -> str:
    if not isinstance(value, str):
        raise InferRequestError("BYTES tensors carry strings")
    return value


def _batch_rows(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> int:
    """Rows along the batch dimension, the same for every batched input (1 for an unbatched model)."""
    rows = {arrays[spec.name].shape[0] for spec in inputs if spec.batched}
    if len(rows) > 1:
        raise InferRequestError(f"the inputs disagree on the batch size (first dimensions {sorted(rows)})")
    return rows.pop() if rows else 1


def _requested_outputs(
    raw: Any, outputs: Sequence[TensorSpec], parameters: Mapping[str, Any]
) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The outputs asked for (None: all) and which of them go back as binary data."""
    all_binary = parameters.get("binary_data_output") is True
    if raw is None:
        return None, frozenset(spec.name for spec in outputs) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise InferRequestError("'outputs' must be a list of {\"name\": ...} objects")
    known = {spec.name for spec in outputs}
    names: list[str] = []
    binary: set[str] = set()
    for position, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InferRequestError(f"outputs[{position}] needs a string 'name'")
        if name not in known:
            raise InferRequestError(f"output {name!r} is not an output of this model (outputs: {', '.join(known)})")
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
) -> tuple[bytes, int | None]:
    """The OIP response body and, when some outputs are binary, the length of its JSON header.

    The requested outputs (all when none were named) carry flat row-major data, or, when asked for
    in binary, a `binary_data_size` and their raw bytes after the JSON header.
    """
    wanted = request.outputs if request.outputs is not None else tuple(spec.name for spec in outputs)
    by_name = {spec.name: spec for spec in outputs}
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = request.parameters
    tensors = []
    blobs: list[bytes] = []
    for name in wanted:
        array = results[name]
        tensor: dict[str, Any] = {"name": name, "datatype": by_name[name].datatype, "shape": list(array.shape)}
        flat = array.reshape(-1)
        if name in request.binary_outputs:
            blob = _binary_bytes(flat)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = flat.tolist() if flat.dtype.kind == "O" else np.ascontiguousarray(flat)
        tensors.append(tensor)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def _binary_bytes(flat: np.ndarray) -> bytes:
    if flat.dtype.kind == "O":
        parts = []
        for value in flat:
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(parts)
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<")).tobytes()
