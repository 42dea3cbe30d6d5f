"""Parsing and validating OIP v2 infer bodies against a model signature, and encoding the answer."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from gallery_deployer.modelserver.protocol import InferRequestError, encode_infer_response, parse_infer_request
from gallery_deployer.modelserver.tensors import TensorSpec, spec_from_ort

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
        (b"{not json", "not valid JSON"),
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


def test_symbolic_dimensions_become_minus_one() -> None:
    assert spec_from_ort("x", "tensor(float)", ["batch", 4, None]).shape == (-1, 4, -1)
    with pytest.raises(ValueError, match="cannot carry"):
        spec_from_ort("x", "seq(tensor(float))", [])


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
