"""The OIP v2 codec: infer requests parsed and checked against a model signature, responses encoded and
decoded, as JSON and as Triton's binary tensors, and the top class a response names."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from gallery_common.contracts.oip import (
    INFERENCE_HEADER_LENGTH,
    InferRequestError,
    ProtocolError,
    TensorSpec,
    decode_infer_response,
    decode_tensor,
    encode_infer_request,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    response_top_classes,
    top_classes,
)

INPUTS = (TensorSpec("features", "FP32", (-1, 3)), TensorSpec("ids", "INT64", (-1, 2)))
OUTPUTS = (TensorSpec("logits", "FP32", (-1, 2)), TensorSpec("label", "INT64", (-1,)))


def body(**overrides: object) -> bytes:
    document: dict[str, object] = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6.5]},
            {"name": "ids", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
        ]
    }
    document.update(overrides)
    return orjson.dumps(document)


def test_flat_and_nested_data_give_the_same_arrays_with_the_model_dtypes() -> None:
    request = parse_infer_request(body(id="r1", parameters={"trace": "x"}), INPUTS, OUTPUTS)

    assert request.inputs["features"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["features"], [[1, 2, 3], [4, 5, 6.5]])
    assert request.inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(request.inputs["ids"], [[1, 2], [3, 4]])
    assert (request.rows, request.id, request.parameters, request.outputs) == (2, "r1", {"trace": "x"}, None)


def test_all_datatypes_map_to_numpy() -> None:
    expected = {
        "BOOL": (True, np.bool_),
        "UINT8": (200, np.uint8),
        "INT8": (-3, np.int8),
        "INT16": (-300, np.int16),
        "INT32": (7, np.int32),
        "UINT64": (2**63, np.uint64),
        "FP16": (0.5, np.float16),
        "FP64": (0.25, np.float64),
        "BYTES": ("hello", np.object_),
    }
    for datatype, (value, dtype) in expected.items():
        spec = TensorSpec("x", datatype, (-1,))
        raw = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [value]}]})
        array = parse_infer_request(raw, (spec,), OUTPUTS).inputs["x"]
        assert array.dtype == dtype, datatype
        assert array[0] == value, datatype


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the request body is not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (orjson.dumps({"inputs": []}), "non-empty list"),
        (body(inputs=[{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]}]), "'nope' is not an input"),
        (
            body(inputs=[{"name": "features", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]),
            "'features' has datatype 'FP64'; the model expects FP32",
        ),
        (
            body(inputs=[{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]),
            "'features' has shape [1, 4]; the model expects [-1, 3]",
        ),
        (
            body(inputs=[{"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3]}]),
            "'features' has 3 values; shape [2, 3] needs 6",
        ),
        (
            body(inputs=[{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": ["a", "b", "c"]}]),
            "str values in a FP32 tensor",
        ),
        (
            body(inputs=[{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [[1, 2], [3]]}]),
            "'features': 'data' is not a FP32 tensor",
        ),
        (
            body(inputs=[{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]),
            "missing input(s) 'ids'",
        ),
        (body(outputs=[{"name": "probabilities"}]), "output 'probabilities' is not an output"),
        (body(id=5), "'id' must be a string"),
    ],
)
def test_bad_requests_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InferRequestError) as caught:
        parse_infer_request(raw, INPUTS, OUTPUTS)
    assert message in caught.value.message
    assert caught.value.status_code == 400


def test_inputs_must_agree_on_the_batch_size() -> None:
    raw = body(
        inputs=[
            {"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
            {"name": "ids", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]},
        ]
    )
    with pytest.raises(InferRequestError, match="disagree on the batch size"):
        parse_infer_request(raw, INPUTS, OUTPUTS)


def test_integer_overflow_is_refused() -> None:
    spec = TensorSpec("x", "UINT8", (-1,))
    raw = orjson.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}]})
    with pytest.raises(InferRequestError, match="not a UINT8 tensor"):
        parse_infer_request(raw, (spec,), OUTPUTS)


def test_response_carries_selected_outputs_id_and_parameters() -> None:
    request = parse_infer_request(body(id="abc", outputs=[{"name": "label"}], parameters={"p": 1}), INPUTS, OUTPUTS)
    results = {"logits": np.ones((2, 2), np.float32), "label": np.array([1, 0], np.int64)}

    payload, header_length = encode_infer_response("digits", "1.0.0", request, results, OUTPUTS)
    answer = orjson.loads(payload)

    assert header_length is None
    assert answer == {
        "model_name": "digits",
        "model_version": "1.0.0",
        "id": "abc",
        "parameters": {"p": 1},
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}],
    }


def binary_request(document: dict[str, object], *blobs: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(document)
    return header + b"".join(blobs), len(header)


def test_binary_extension_inputs_and_outputs_round_trip() -> None:
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, 2], [3, 4]], np.int64)
    raw, header_length = binary_request(
        {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                {"name": "ids", "datatype": "INT64", "shape": [2, 2], "parameters": {"binary_data_size": 32}},
            ],
            "parameters": {"binary_data_output": True},
        },
        features.tobytes(),
        ids.tobytes(),
    )

    request = parse_infer_request(raw, INPUTS, OUTPUTS, header_length)

    np.testing.assert_array_equal(request.inputs["features"], features)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.binary_outputs == {"logits", "label"}
    assert request.parameters == {}
    logits = np.array([[0.5, 1.5], [2.5, 3.5]], np.float32)
    payload, json_length = encode_infer_response(
        "m", "1", request, {"logits": logits, "label": np.array([1, 0], np.int64)}, OUTPUTS
    )
    assert json_length is not None
    header = orjson.loads(payload[:json_length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [16, 16]
    np.testing.assert_array_equal(np.frombuffer(payload[json_length : json_length + 16], np.float32), logits.ravel())


@pytest.mark.parametrize(
    ("size", "blob", "message"),
    [
        (24, b"\0" * 20, "fewer binary bytes"),
        (20, b"\0" * 20, "has 20 binary bytes; shape [2, 3] of FP32 needs 24"),
        (24, b"\0" * 28, "4 binary bytes after the last input are unclaimed"),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_refused(size: int, blob: bytes, message: str) -> None:
    spec = (TensorSpec("features", "FP32", (-1, 3)),)
    raw, header_length = binary_request(
        {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": size}}
            ]
        },
        blob,
    )
    with pytest.raises(InferRequestError) as caught:
        parse_infer_request(raw, spec, OUTPUTS, header_length)
    assert message in caught.value.message


def test_binary_bytes_tensors_are_length_prefixed() -> None:
    spec = (TensorSpec("text", "BYTES", (-1,)),)
    blob = b"".join(len(w).to_bytes(4, "little") + w for w in (b"hi", b"there"))
    raw, header_length = binary_request(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}}
            ]
        },
        blob,
    )
    assert parse_infer_request(raw, spec, OUTPUTS, header_length).inputs["text"].tolist() == ["hi", "there"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("twelve", f"{INFERENCE_HEADER_LENGTH} must be an integer, got 'twelve'"),
        ("1.5", f"{INFERENCE_HEADER_LENGTH} must be an integer, got '1.5'"),
        ("-1", f"{INFERENCE_HEADER_LENGTH} -1 is outside the body"),
        ("100000", f"{INFERENCE_HEADER_LENGTH} 100000 is outside the body"),
    ],
)
def test_a_header_length_that_is_no_length_of_the_body_is_a_400_that_says_so(value: str, message: str) -> None:
    with pytest.raises(InferRequestError) as caught:
        parse_infer_request(body(), INPUTS, OUTPUTS, value)
    assert caught.value.status_code == 400
    assert message in caught.value.message
    with pytest.raises(ProtocolError) as raw:
        parse_header_length(value, 100)
    assert message.split(" ", 1)[1].split(",")[0] in str(raw.value)


def test_the_header_length_as_sent_splits_the_body() -> None:
    raw, header_length = binary_request(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
        np.array([7], np.int32).tobytes(),
    )
    assert parse_header_length(None, len(raw)) is None
    assert parse_header_length(str(header_length), len(raw)) == header_length
    parsed = parse_infer_request(raw, (TensorSpec("x", "INT32", (-1,)),), OUTPUTS, str(header_length))
    assert parsed.inputs["x"].tolist() == [7]


@pytest.mark.parametrize("binary", [False, True])
def test_a_client_request_the_server_answers_decodes_back_to_the_same_arrays(binary: bool) -> None:
    features = np.array([[0.25, 1.5, -2.0], [3.0, 4.0, 5.0]], np.float32)
    ids = np.array([[1, 2], [3, 4]], np.int64)
    raw, header_length = encode_infer_request(
        {"features": features, "ids": ids}, binary=binary, binary_outputs=binary, request_id="r7"
    )
    assert (header_length is not None) is binary

    request = parse_infer_request(raw, INPUTS, OUTPUTS, header_length)
    np.testing.assert_array_equal(request.inputs["features"], features)
    np.testing.assert_array_equal(request.inputs["ids"], ids)

    logits = np.array([[0.1, 0.9], [0.7, 0.3]], np.float32)
    results = {"logits": logits, "label": np.array([1, 0], np.int64)}
    payload, json_length = encode_infer_response("m", "2", request, results, OUTPUTS)
    assert (json_length is not None) is binary

    answer = decode_infer_response(payload, json_length)
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "2", "r7")
    assert list(answer.outputs) == ["logits", "label"]
    np.testing.assert_array_equal(answer.outputs["logits"], logits)
    assert answer.outputs["logits"].dtype == np.float32
    np.testing.assert_array_equal(answer.outputs["label"], [1, 0])
    np.testing.assert_array_equal(response_top_classes(payload, json_length), [1, 0])


def test_bytes_tensors_round_trip_as_json_and_as_binary() -> None:
    spec = (TensorSpec("text", "BYTES", (-1,)),)
    words = np.array(["hi", "thére"], dtype=object)
    for binary in (False, True):
        raw, header_length = encode_infer_request({"text": words}, binary=binary)
        assert parse_infer_request(raw, spec, OUTPUTS, header_length).inputs["text"].tolist() == ["hi", "thére"]


def test_top_classes_are_the_argmax_per_row_or_a_label_output_itself() -> None:
    np.testing.assert_array_equal(top_classes(np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])), [1, 0])
    np.testing.assert_array_equal(top_classes(np.array([2, 0, 1])), [2, 0, 1])


@pytest.mark.parametrize(
    ("raw", "header_length", "message"),
    [
        (b"<html>", None, "the response body is not valid JSON"),
        (orjson.dumps({"error": "model not ready"}), None, "'outputs' must be a list"),
        (orjson.dumps({"outputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}), None, "needs a string 'name'"),
        (
            orjson.dumps({"outputs": [{"name": "y", "datatype": "FP99", "shape": [1], "data": [1]}]}),
            None,
            "tensor 'y' has datatype 'FP99', which is not an OIP datatype",
        ),
        (
            orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1]}]}),
            None,
            "tensor 'y' has 1 values; shape [2] needs 2",
        ),
        (orjson.dumps({"outputs": []}), None, "the response has no outputs"),
        (b"{}", "x", "must be an integer"),
    ],
)
def test_a_response_that_breaks_the_protocol_says_how(raw: bytes, header_length: str | None, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        response_top_classes(raw, header_length)
    assert message in str(caught.value)


def test_a_sampled_tensor_decodes_as_the_type_asked_for() -> None:
    tensor = {"name": "features", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}
    array = decode_tensor(tensor, np.dtype(np.float32))
    assert array.dtype == np.float32 and array.shape == (2, 2)
    assert decode_tensor(tensor).dtype == np.int64
    with pytest.raises(ProtocolError, match="str values in a FP32 tensor"):
        decode_tensor({"shape": [1], "data": ["a"]}, np.dtype(np.float32))
    with pytest.raises(ProtocolError, match="a tensor must be an object"):
        decode_tensor([1, 2], np.dtype(np.float32))  # type: ignore[arg-type]
