"""A text model served: a real model server process with a text classifier (one BYTES input `text` [-1],
the vectorizer inside the graph) and the gateway in front; raw strings in over REST (JSON and the binary
tensor extension) and gRPC, from tritonclient unmodified, and the right classes out."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from test_serving_grpc import AUTH, GrpcServer, gateway_process, put_route, start_grpc_server
from test_serving_modelserver import put_artifact, wait_ready
from text_models import CLASS_NAMES, corpus, text_classifier

MODEL = "topics"
Texts = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def model() -> bytes:
    return text_classifier().onnx


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model: bytes) -> Iterator[GrpcServer]:
    home = tmp_path_factory.mktemp("gallery")
    running = start_grpc_server(put_artifact(home, "topics/1/model.onnx", model), "--model", MODEL)
    try:
        wait_ready(running.server)
        yield running
    finally:
        assert running.server.stop() == 0


@pytest.fixture(scope="module")
def texts(model: bytes) -> Texts:
    """Held-out texts, their labels and the logits ONNX Runtime gives for them in this process."""
    x, y = corpus(32, seed=77)  # the server runs at most 32 rows at once
    x[3] = "Der Ball ist rund: goal, goal!"  # words outside the vocabulary count for nothing
    x[5] = "Pluie à verse: rain ☔ and storm?"  # non-ASCII text travels as UTF-8
    y[3], y[5] = CLASS_NAMES.index("sports"), CLASS_NAMES.index("weather")
    (logits,) = ort.InferenceSession(model).run(["logits"], {"text": x})
    return x, y, logits


def test_metadata_says_the_model_takes_texts(server: GrpcServer) -> None:
    metadata = httpx.get(f"{server.server.url}/v2/models/{MODEL}", headers=AUTH).json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, len(CLASS_NAMES)]}]


def test_rest_json_texts_get_the_classes_onnx_runtime_gives(server: GrpcServer, texts: Texts) -> None:
    x, y, logits = texts
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(x)], "data": x.tolist()}]}
    answer = httpx.post(f"{server.server.url}/v2/models/{MODEL}/infer", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [len(x), len(CLASS_NAMES)]
    served = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(served, logits, rtol=1e-5, atol=1e-5)
    assert (served.argmax(axis=1) == y).mean() > 0.8
    assert served[3].argmax() == y[3] and served[5].argmax() == y[5]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json"])
def test_tritonclient_http_sends_texts(server: GrpcServer, texts: Texts, binary: bool) -> None:
    x, _, logits = texts
    client = triton_http.InferenceServerClient(server.server.url.removeprefix("http://"))
    tensor = triton_http.InferInput("text", [len(x)], "BYTES")
    tensor.set_data_from_numpy(np.array(x.tolist(), dtype=object), binary_data=binary)
    output = triton_http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[output], headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    client.close()


def grpc_texts(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("text", [len(x)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in x], dtype=object))
    return tensor


def test_tritonclient_grpc_sends_texts(server: GrpcServer, texts: Texts) -> None:
    x, _, logits = texts
    client = triton_grpc.InferenceServerClient(server.grpc)
    for rows in (1, len(x)):
        result = client.infer(MODEL, [grpc_texts(x[:rows])], headers=AUTH)
        np.testing.assert_allclose(result.as_numpy("logits"), logits[:rows], rtol=1e-5, atol=1e-5)
    client.close()


def test_a_number_where_a_text_belongs_is_a_clear_400(server: GrpcServer) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["rain", 7]}]}
    answer = httpx.post(f"{server.server.url}/v2/models/{MODEL}/infer", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"] == "input 'text': value 1 is int; a BYTES tensor carries strings (texts)"
    wrong_type = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    answer = httpx.post(f"{server.server.url}/v2/models/{MODEL}/infer", json=wrong_type, headers=AUTH)
    assert answer.status_code == 400 and "BYTES" in answer.json()["error"]


def test_an_explain_request_for_a_text_model_says_what_is_available_instead(server: GrpcServer) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["rain and storm"]}]}
    answer = httpx.post(f"{server.server.url}/v2/models/{MODEL}/explain", json=body, headers=AUTH)
    assert answer.status_code == 404
    assert answer.json()["error"] == (
        f"model {MODEL!r} takes texts: per-request explanations are not available for text models; the validation "
        "gate's word importance is in the version's evaluation report"
    )


@pytest.mark.parametrize("native", [True, False], ids=["backend-over-grpc", "backend-over-rest"])
def test_the_gateway_serves_texts_over_rest_and_grpc(
    server: GrpcServer, texts: Texts, tmp_path_factory: pytest.TempPathFactory, native: bool
) -> None:
    x, _, logits = texts
    with gateway_process(tmp_path_factory.mktemp("gateway"), grpc_forward="grpc") as (base, address):
        put_route(base, MODEL, server, grpc_address=server.grpc if native else None)
        client = triton_grpc.InferenceServerClient(address)
        through = client.infer(MODEL, [grpc_texts(x)], headers=AUTH)
        np.testing.assert_allclose(through.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
        client.close()
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(x)], "data": x.tolist()}]}
        answer = httpx.post(f"{base}/v2/models/{MODEL}/infer", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        served = np.array(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_allclose(served, logits, rtol=1e-5, atol=1e-5)
