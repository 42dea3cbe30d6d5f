"""ModelStreamInfer (Triton's streaming extension) from tritonclient.grpc unmodified (`start_stream`,
`async_stream_infer`), on a real model server and through the gateway (forwarding natively over gRPC and over
REST): every request of a stream gets its own answer, matched by id, equal to ModelInfer's; a bad request
gets its reason and the stream goes on; a stream without a token is refused."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from test_serving_grpc import AUTH, GrpcServer, features, gateway_process, put_route, start_grpc_server, tiny_model
from test_serving_modelserver import put_artifact, wait_ready
from tritonclient.utils import InferenceServerException

Results = dict[str, tuple[triton_grpc.InferResult | None, InferenceServerException | None]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    home = tmp_path_factory.mktemp("gallery")
    running = start_grpc_server(put_artifact(home, "tiny/1.0.0/model.onnx", tiny_model()))
    try:
        wait_ready(running.server)
        yield running
    finally:
        assert running.server.stop() == 0


def streamed(address: str, requests: list[tuple[str, list[triton_grpc.InferInput]]]) -> Results:
    """Send every (id, inputs) on one stream and wait for as many answers, by the id each names."""
    answers: queue.Queue[tuple[triton_grpc.InferResult | None, InferenceServerException | None]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=AUTH)
    try:
        for request_id, inputs in requests:
            client.async_stream_infer("tiny", inputs, request_id=request_id)
        got = [answers.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()
        client.close()
    results: Results = {}
    for result, error in got:
        key = result.get_response().id if result is not None else f"error-{len(results)}"
        results[key] = (result, error)
    return results


def check_stream(address: str, reference: str) -> None:
    rows = [np.random.default_rng(seed).normal(size=(1 + seed % 5, 4)).astype(np.float32) for seed in range(40)]
    bad = triton_grpc.InferInput("not-an-input", [1, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
    requests = [(f"s-{i}", [features(x)]) for i, x in enumerate(rows)]
    requests.insert(7, ("bad-1", [bad]))
    results = streamed(address, requests)

    errors = [error for _, error in results.values() if error is not None]
    assert len(errors) == 1 and "not-an-input" in str(errors[0])
    direct = triton_grpc.InferenceServerClient(reference)
    for i, x in enumerate(rows):
        result, error = results[f"s-{i}"]
        assert error is None and result is not None
        expected = direct.infer("tiny", [features(x)], headers=AUTH).as_numpy("probabilities")
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    direct.close()


def test_a_stream_to_the_model_server_answers_every_request_by_id(server: GrpcServer) -> None:
    check_stream(server.grpc, server.grpc)


@pytest.mark.parametrize("native", [True, False], ids=["backend-over-grpc", "backend-over-rest"])
def test_a_stream_through_the_gateway_answers_every_request_by_id(
    server: GrpcServer, tmp_path_factory: pytest.TempPathFactory, native: bool
) -> None:
    with gateway_process(tmp_path_factory.mktemp("gateway"), grpc_forward="grpc") as (base, address):
        put_route(base, "tiny", server, grpc_address=server.grpc if native else None)
        check_stream(address, server.grpc)


def test_a_stream_without_a_token_is_refused(server: GrpcServer) -> None:
    answers: queue.Queue[InferenceServerException | None] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc)
    client.start_stream(callback=lambda result, error: answers.put(error))
    x = np.zeros((1, 4), np.float32)
    # the refusal can end the stream before tritonclient queues the request, which then raises here;
    # either way the callback is given the stream's error
    with contextlib.suppress(InferenceServerException):
        client.async_stream_infer("tiny", [features(x)], request_id="anon")
    error = answers.get(timeout=30)
    client.stop_stream()
    client.close()
    assert error is not None and "UNAUTHENTICATED" in str(error.status())
