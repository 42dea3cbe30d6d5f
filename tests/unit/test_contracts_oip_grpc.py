"""The OIP gRPC codec: a ModelInferRequest read as the REST codec reads a body, answers as raw contents."""

from __future__ import annotations

import grpc
import numpy as np
import orjson
import pytest

from gallery_common.contracts.oip import (
    InferRequestError,
    ProtocolError,
    TensorSpec,
    encode_infer_response,
    parse_infer_document,
    parse_infer_request,
)
from gallery_common.errors import BadRequest, Forbidden, NotFound, Unauthorized, Unavailable
from gallery_common.oip_grpc import codec
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc.server import status_of


def typed_request(name: str, datatype: str, shape: list[int], field: str, values: list[object]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def read(request: pb.ModelInferRequest, spec: TensorSpec) -> np.ndarray:
    document, binary = codec.request_document(request)
    return parse_infer_document(document, [spec], [TensorSpec("y", "FP32", (-1, 1))], binary).inputs[spec.name]


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False]),
        ("INT8", "int_contents", [-128, 127]),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -1.25]),
        ("FP64", "fp64_contents", [1e300, -2.5]),
    ],
)
def test_typed_contents_and_raw_contents_read_alike(datatype: str, field: str, values: list[object]) -> None:
    spec = TensorSpec("x", datatype, (-1, 2))
    typed = read(typed_request("x", datatype, [1, 2], field, values), spec)
    assert typed.dtype == spec.dtype and typed.shape == (1, 2) and typed.reshape(-1).tolist() == values

    raw = pb.ModelInferRequest(
        model_name="m", raw_input_contents=[typed.astype(spec.dtype.newbyteorder("<")).tobytes()]
    )
    raw.inputs.add(name="x", datatype=datatype, shape=[1, 2])
    assert np.array_equal(read(raw, spec), typed)


def test_bytes_contents_are_text_as_over_rest() -> None:
    spec = TensorSpec("words", "BYTES", (-1,))
    words = read(typed_request("words", "BYTES", [2], "bytes_contents", ["héllo".encode(), b""]), spec)
    assert words.tolist() == ["héllo", ""]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (typed_request("x", "FP32", [1, 3], "fp32_contents", [1.0, 2.0, 3.0]), "has shape [1, 3]; the model expects"),
        (typed_request("x", "FP32", [1, 2], "fp32_contents", [1.0]), "has 1 values; shape [1, 2] needs 2"),
        (typed_request("x", "INT64", [1, 2], "int64_contents", [1, 2]), "has datatype 'INT64'; the model expects FP32"),
        (typed_request("z", "FP32", [1, 2], "fp32_contents", [1.0, 2.0]), "input 'z' is not an input of this model"),
        (typed_request("x", "FP16", [1, 2], "fp32_contents", [1.0, 2.0]), "FP16 tensors travel in raw_input_contents"),
    ],
)
def test_a_bad_tensor_is_refused_with_the_rest_codecs_reason(request_: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises((InferRequestError, ProtocolError), match=message.replace("[", r"\[").replace("]", r"\]")):
        read(request_, TensorSpec("x", "FP32", (-1, 2)))


def test_raw_contents_must_match_the_inputs_and_not_mix_with_typed_ones() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 8, b"\0" * 8])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    with pytest.raises(ProtocolError, match="raw_input_contents holds 2 tensors for 1 inputs"):
        codec.request_document(request)
    short = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 4])
    short.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    with pytest.raises(InferRequestError, match="has 4 binary bytes; shape \\[1, 2\\] of FP32 needs 8"):
        read(short, TensorSpec("x", "FP32", (-1, 2)))


def test_the_answer_echoes_id_and_parameters_and_carries_the_asked_outputs_raw() -> None:
    request = typed_request("x", "FP32", [2, 2], "fp32_contents", [1.0, 2.0, 3.0, 4.0])
    request.id = "r-1"
    request.parameters["tag"].string_param = "a"
    request.parameters["n"].int64_param = 3
    request.outputs.add(name="y")
    document, binary = codec.request_document(request)
    outputs = [TensorSpec("y", "FP32", (-1, 1)), TensorSpec("z", "INT64", (-1,))]
    parsed = parse_infer_document(document, [TensorSpec("x", "FP32", (-1, 2))], outputs, binary)
    results = {"y": np.array([[0.5], [1.5]], np.float32), "z": np.array([1, 2], np.int64)}

    answer = codec.served_response("m", "1", parsed, results, outputs)

    assert (answer.model_name, answer.model_version, answer.id) == ("m", "1", "r-1")
    assert codec.parameters_of(answer.parameters) == {"tag": "a", "n": 3}
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("y", "FP32", [2, 1])]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [0.5, 1.5]


def test_a_rest_answer_becomes_the_same_grpc_answer() -> None:
    """What the gateway does with a REST backend's answer: JSON or binary outputs alike."""
    outputs = [TensorSpec("y", "FP32", (-1, 1)), TensorSpec("w", "BYTES", (-1,))]
    results = {"y": np.array([[0.25], [2.0]], np.float32), "w": np.array(["a", "bé"], dtype=object)}
    for binary_output in (False, True):
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}]})
        if binary_output:
            body = orjson.dumps({**orjson.loads(body), "parameters": {"binary_data_output": True}})
        request = parse_infer_request(body, [TensorSpec("x", "FP32", (-1, 1))], outputs)
        payload, header_length = encode_infer_response("m", "1", request, results, outputs)
        assert (header_length is not None) is binary_output  # raw bytes after a JSON header, or JSON alone
        answer = codec.response_from_rest(payload, None if header_length is None else str(header_length))
        assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
            ("y", "FP32", [2, 1]),
            ("w", "BYTES", [2]),
        ]
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [0.25, 2.0]
        assert answer.raw_output_contents[1] == b"\x01\x00\x00\x00a\x03\x00\x00\x00b\xc3\xa9"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden("x"), grpc.StatusCode.PERMISSION_DENIED),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_errors_map_to_grpc_codes_by_their_http_status(error: Exception, code: grpc.StatusCode) -> None:
    assert status_of(error.status_code) is code  # type: ignore[attr-defined]
    assert status_of(500) is grpc.StatusCode.INTERNAL
