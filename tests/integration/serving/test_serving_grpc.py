"""OIP v2 over gRPC, driven by tritonclient.grpc unmodified: a real model server process serving gRPC
beside REST, and the gateway's gRPC front in front of it (natively over gRPC, and over REST to a
backend without a gRPC address)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from threading import Barrier

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from onnx import TensorProto, helper, numpy_helper
from test_serving_modelserver import (
    Artifact,
    Server,
    expected_logits,
    put_artifact,
    start_server,
    tiny_model,
    wait_ready,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from uvicorn_thread import running

from gallery_common.contracts.serving_metrics import REQUESTS
from gallery_common.netutil import free_port
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings

TOKEN = "grpc-infer-token"
ADMIN = "grpc-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024


def kinds_model() -> bytes:
    """doubled = ids * 2 (INT64 [-1, 2]) and echo = words (BYTES [-1, 1])."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["ids", "two"], ["doubled"]), helper.make_node("Identity", ["words"], ["echo"])],
        "kinds",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("words", TensorProto.STRING, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1]),
        ],
        initializer=[numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


class GrpcServer:
    def __init__(self, server: Server, grpc_port: int) -> None:
        self.server = server
        self.grpc = f"127.0.0.1:{grpc_port}"


def start_grpc_server(artifact: Artifact, *extra: str) -> GrpcServer:
    grpc_port = free_port()
    settings = {"GALLERY_API_TOKENS": f"{TOKEN}:inference", "GALLERY_MAX_BODY_BYTES": str(MAX_BODY)}
    server = start_server(artifact, "--grpc-port", str(grpc_port), "--no-nats", *extra, settings=settings)
    return GrpcServer(server, grpc_port)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GrpcServer]]:
    home = tmp_path_factory.mktemp("gallery")
    tiny = start_grpc_server(put_artifact(home, "tiny/1.0.0/model.onnx", tiny_model()))
    # one request waits 300 ms for company and a second one finds the queue full: the overload test's server
    overload = ("--max-queue", "1", "--max-queue-delay-ms", "300", "--no-eager-batching")
    kinds = start_grpc_server(put_artifact(home, "kinds/1/model.onnx", kinds_model()), "--model", "kinds", *overload)
    try:
        wait_ready(tiny.server)
        wait_ready(kinds.server)
        yield {"tiny": tiny, "kinds": kinds}
    finally:
        assert tiny.server.stop() == 0
        assert kinds.server.stop() == 0


@contextmanager
def gateway_process(home: Path, **overrides: object) -> Iterator[tuple[str, str]]:
    """A gateway (REST base URL, gRPC address) with every token the test uses."""
    settings = GatewaySettings(
        home=home,
        port=free_port(),
        grpc_port=free_port(),
        api_tokens=f"{TOKEN}:inference,{ADMIN}:admin",  # type: ignore[arg-type]
        model_server_token=TOKEN,  # type: ignore[arg-type]
        sample_rate=0.0,
        **overrides,  # type: ignore[arg-type]
    )
    with running(create_app_for(settings, with_bus=False), settings.port):
        yield f"http://127.0.0.1:{settings.port}", f"127.0.0.1:{settings.grpc_port}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, GrpcServer]) -> Iterator[tuple[str, str]]:
    """The gateway forwarding gRPC natively to a backend's gRPC address where the route gives one."""
    with gateway_process(tmp_path_factory.mktemp("gateway"), grpc_forward="grpc") as addresses:
        yield addresses


def put_route(base: str, model: str, server: GrpcServer, *, grpc_address: str | None) -> None:
    backend = {"id": "only", "url": server.server.url, "grpc": grpc_address, "version": "1.0.0"}
    response = httpx.put(
        f"{base}/admin/routes/{model}", json={"backends": [backend]}, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 200, response.text


def features(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def rest_answer(server: GrpcServer, model: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = triton_http.InferenceServerClient(server.server.url.removeprefix("http://"))
    inputs = []
    for name, array in tensors.items():
        tensor = triton_http.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
        if array.dtype == np.float32:
            tensor = triton_http.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, headers=dict(AUTH))  # tritonclient.http adds its own headers to it
    client.close()
    return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}


def grpc_error(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def test_health_and_metadata_over_grpc(servers: dict[str, GrpcServer]) -> None:
    client = triton_grpc.InferenceServerClient(servers["tiny"].grpc)
    assert client.is_server_live() and client.is_server_ready()  # probes need no token, as over REST
    assert client.get_server_metadata().name == "modelgallery-modelserver"
    assert client.is_model_ready("tiny", headers=AUTH) and client.is_model_ready("tiny", "1.0.0", headers=AUTH)
    metadata = client.get_model_metadata("tiny", headers=AUTH, as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1.0.0"]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [tensor["name"] for tensor in metadata["outputs"]] == ["logits", "probabilities"]
    client.close()


def test_fp32_infer_equals_rest_and_counts_in_the_same_metrics(servers: dict[str, GrpcServer]) -> None:
    server = servers["tiny"]
    client = triton_grpc.InferenceServerClient(server.grpc)
    before = _ok_requests(server)
    for rows in (1, 32):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        result = client.infer("tiny", [features(x)], request_id=f"r-{rows}", headers=AUTH)
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
        assert result.get_response().id == f"r-{rows}"
        rest = rest_answer(server, "tiny", {"features": x})
        assert np.array_equal(result.as_numpy("logits"), rest["logits"])
        assert np.array_equal(result.as_numpy("probabilities"), rest["probabilities"])
    only = client.infer(
        "tiny", [features(np.ones((2, 4), np.float32))], outputs=[triton_grpc.InferRequestedOutput("probabilities")],
        headers=AUTH,
    )  # fmt: skip
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").shape == (2, 3)
    assert _ok_requests(server) - before == 5  # 3 over gRPC, 2 over REST: one serving core, one series
    client.close()


def _ok_requests(server: GrpcServer) -> float:
    text = httpx.get(server.server.url + "/metrics").text
    prefix = f"{REQUESTS}{{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and 'outcome="ok"' in line
    )


def test_typed_contents_are_read_as_raw_contents_are(servers: dict[str, GrpcServer]) -> None:
    """tritonclient sends raw_input_contents; other clients send the typed `contents` fields."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(servers["tiny"].grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3)
        np.testing.assert_allclose(logits, expected_logits(x), rtol=1e-5, atol=1e-5)

        mixed = service_pb2.ModelInferRequest()
        mixed.CopyFrom(request)
        mixed.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(mixed, metadata=tuple(AUTH.items()))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "has contents although the request uses raw_input_contents" in (caught.value.details() or "")


def test_int64_and_bytes_tensors_equal_rest(servers: dict[str, GrpcServer]) -> None:
    server = servers["kinds"]
    ids = np.array([[1, -2], [3, 2**40]], np.int64)
    words = np.array([["héllo"], [""]], dtype=object)
    client = triton_grpc.InferenceServerClient(server.grpc)
    id_input = triton_grpc.InferInput("ids", [2, 2], "INT64")
    id_input.set_data_from_numpy(ids)
    word_input = triton_grpc.InferInput("words", [2, 1], "BYTES")
    word_input.set_data_from_numpy(words)
    result = client.infer("kinds", [id_input, word_input], headers=AUTH)
    assert np.array_equal(result.as_numpy("doubled"), ids * 2)
    assert result.as_numpy("echo").reshape(-1).tolist() == ["héllo".encode(), b""]
    rest = rest_answer(server, "kinds", {"ids": ids, "words": words})
    assert np.array_equal(result.as_numpy("doubled"), rest["doubled"])
    assert result.as_numpy("echo").tolist() == rest["echo"].tolist()
    client.close()


def test_refusals_carry_the_grpc_code_and_the_reason(servers: dict[str, GrpcServer]) -> None:
    client = triton_grpc.InferenceServerClient(servers["tiny"].grpc)
    x = np.ones((1, 4), np.float32)

    missing = grpc_error(client.infer, "tiny", [features(x)])
    assert missing.status() == "StatusCode.UNAUTHENTICATED" and "missing bearer token" in missing.message()
    unknown = grpc_error(client.infer, "tiny", [features(x)], headers={"authorization": "Bearer nope"})
    assert unknown.status() == "StatusCode.UNAUTHENTICATED" and "unknown bearer token" in unknown.message()
    assert grpc_error(client.get_model_metadata, "tiny").status() == "StatusCode.UNAUTHENTICATED"

    other = grpc_error(client.infer, "other", [features(x)], headers=AUTH)
    assert other.status() == "StatusCode.NOT_FOUND" and "model 'other' is not served here" in other.message()
    version = grpc_error(client.infer, "tiny", [features(x)], model_version="9", headers=AUTH)
    assert version.status() == "StatusCode.NOT_FOUND" and "no version '9'" in version.message()
    assert grpc_error(client.is_model_ready, "other", headers=AUTH).status() == "StatusCode.NOT_FOUND"

    bad_shape = grpc_error(client.infer, "tiny", [features(np.ones((1, 5), np.float32))], headers=AUTH)
    assert bad_shape.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'features' has shape [1, 5]; the model expects [-1, 4]" in bad_shape.message()
    wrong_type = triton_grpc.InferInput("features", [1, 4], "INT64")
    wrong_type.set_data_from_numpy(np.ones((1, 4), np.int64))
    assert "expects FP32" in grpc_error(client.infer, "tiny", [wrong_type], headers=AUTH).message()
    too_many = grpc_error(client.infer, "tiny", [features(np.ones((64, 4), np.float32))], headers=AUTH)
    assert too_many.status() == "StatusCode.INVALID_ARGUMENT" and "at most 32 at once" in too_many.message()

    big = grpc_error(client.infer, "tiny", [features(np.ones((MAX_BODY // 16 + 1, 4), np.float32))], headers=AUTH)
    assert big.status() == "StatusCode.RESOURCE_EXHAUSTED"  # over GALLERY_MAX_BODY_BYTES: refused unread

    assert np.allclose(client.infer("tiny", [features(x)], headers=AUTH).as_numpy("logits"), expected_logits(x))
    client.close()


@pytest.mark.parametrize("native", [True, False], ids=["backend-over-grpc", "backend-over-rest"])
def test_the_gateway_routes_grpc_to_the_model_server(
    servers: dict[str, GrpcServer], gateway: tuple[str, str], native: bool
) -> None:
    base, address = gateway
    for model in ("tiny", "kinds"):
        put_route(base, model, servers[model], grpc_address=servers[model].grpc if native else None)
    client = triton_grpc.InferenceServerClient(address)
    direct = triton_grpc.InferenceServerClient(servers["tiny"].grpc)
    assert client.is_server_live(headers=AUTH) and client.is_server_ready(headers=AUTH)
    assert client.get_server_metadata(headers=AUTH).name == "modelgallery-gateway"
    assert client.is_model_ready("tiny", headers=AUTH)
    # read with our own messages: tritonclient's know no `parameters` (field 6), and a map kept as unknown
    # bytes compares equal only when both sides happened to write its entries in the same order
    via, own = client.get_model_metadata("tiny", headers=AUTH), direct.get_model_metadata("tiny", headers=AUTH)
    assert pb.ModelMetadataResponse.FromString(via.SerializeToString()) == pb.ModelMetadataResponse.FromString(
        own.SerializeToString()
    )

    for rows in (1, 32):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        through = client.infer("tiny", [features(x)], request_id="g-1", headers=AUTH)
        straight = direct.infer("tiny", [features(x)], request_id="g-1", headers=AUTH)
        assert np.array_equal(through.as_numpy("logits"), straight.as_numpy("logits"))
        assert np.array_equal(through.as_numpy("probabilities"), straight.as_numpy("probabilities"))
        assert through.get_response().id == "g-1" and through.get_response().model_version == "1.0.0"

    ids = np.array([[7, 8]], np.int64)
    id_input = triton_grpc.InferInput("ids", [1, 2], "INT64")
    id_input.set_data_from_numpy(ids)
    word_input = triton_grpc.InferInput("words", [1, 1], "BYTES")
    word_input.set_data_from_numpy(np.array([["grpc"]], dtype=object))
    kinds = client.infer("kinds", [id_input, word_input], headers=AUTH)
    assert kinds.as_numpy("doubled").tolist() == [[14, 16]] and kinds.as_numpy("echo").tolist() == [[b"grpc"]]
    # a request without an id is given one by the gateway (natively: appended to the forwarded bytes), which
    # the answer names and the trailing metadata carries
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[1.0] * 4)
    )
    with grpc.insecure_channel(address) as channel:
        named, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            pb.ModelInferRequest(model_name="tiny", inputs=[tensor]), metadata=tuple(AUTH.items()), timeout=10
        )
    assert re.fullmatch(r"[0-9a-f]{32}", named.id)
    assert dict(call.trailing_metadata() or ())["x-gallery-request-id"] == named.id

    x = np.ones((1, 4), np.float32)
    missing = grpc_error(client.infer, "tiny", [features(x)])
    assert missing.status() == "StatusCode.UNAUTHENTICATED"
    unrouted = grpc_error(client.infer, "nowhere", [features(x)], headers=AUTH)
    assert unrouted.status() == "StatusCode.NOT_FOUND" and "has no route in the gateway" in unrouted.message()
    bad = grpc_error(client.infer, "tiny", [features(np.ones((1, 5), np.float32))], headers=AUTH)
    assert bad.status() == "StatusCode.INVALID_ARGUMENT" and "has shape [1, 5]" in bad.message()
    client.close()
    direct.close()


def test_the_gateway_falls_back_and_says_why_no_backend_answered(
    servers: dict[str, GrpcServer], gateway: tuple[str, str], tmp_path: Path
) -> None:
    base, address = gateway
    dead = f"127.0.0.1:{free_port()}"
    backends = [
        {"id": "dead", "url": f"http://{dead}", "grpc": dead, "weight": 1.0},
        {"id": "live", "url": servers["tiny"].server.url, "grpc": servers["tiny"].grpc, "weight": 0.0},
    ]
    headers = {"authorization": f"Bearer {ADMIN}"}
    response = httpx.put(f"{base}/admin/routes/tiny", json={"backends": backends}, headers=headers)
    assert response.status_code == 200, response.text
    client = triton_grpc.InferenceServerClient(address)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(
        client.infer("tiny", [features(x)], headers=AUTH).as_numpy("logits"), expected_logits(x), rtol=1e-5
    )
    response = httpx.put(f"{base}/admin/routes/tiny", json={"backends": backends[:1]}, headers=headers)
    assert response.status_code == 200, response.text
    down = grpc_error(client.infer, "tiny", [features(x)], headers=AUTH)
    assert (
        down.status() == "StatusCode.UNAVAILABLE" and "no backend of model 'tiny' could answer: dead:" in down.message()
    )
    client.close()


def test_by_default_the_gateway_reaches_backends_over_rest(servers: dict[str, GrpcServer], tmp_path: Path) -> None:
    """GALLERY_GRPC_FORWARD=rest (the default) leaves a route's gRPC address unused: here a dead one."""
    dead = f"127.0.0.1:{free_port()}"
    with gateway_process(tmp_path) as (base, address):
        backend = {"id": "only", "url": servers["tiny"].server.url, "grpc": dead}
        headers = {"authorization": f"Bearer {ADMIN}"}
        response = httpx.put(f"{base}/admin/routes/tiny", json={"backends": [backend]}, headers=headers)
        assert response.status_code == 200, response.text
        client = triton_grpc.InferenceServerClient(address)
        x = np.ones((1, 4), np.float32)
        result = client.infer("tiny", [features(x)], request_id="d-1", headers=AUTH)
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5)
        assert result.get_response().id == "d-1"
        client.close()


def test_a_full_queue_answers_unavailable_with_the_reason(servers: dict[str, GrpcServer]) -> None:
    """The kinds server queues one request at most; the others of a burst are refused, not held."""
    burst = 6
    clients = [triton_grpc.InferenceServerClient(servers["kinds"].grpc) for _ in range(burst)]
    ids = triton_grpc.InferInput("ids", [1, 2], "INT64")
    ids.set_data_from_numpy(np.array([[1, 2]], np.int64))
    words = triton_grpc.InferInput("words", [1, 1], "BYTES")
    words.set_data_from_numpy(np.array([["w"]], dtype=object))
    start = Barrier(burst)

    def one(client: triton_grpc.InferenceServerClient) -> str:
        start.wait()  # all at once, within the first request's 300 ms wait
        try:
            client.infer("kinds", [ids, words], headers=AUTH)
            return "ok"
        except InferenceServerException as exc:
            return f"{exc.status()}: {exc.message()}"

    with ThreadPoolExecutor(burst) as pool:
        outcomes = list(pool.map(one, clients))
    for client in clients:
        client.close()
    refused = [o for o in outcomes if o != "ok"]
    assert "ok" in outcomes and refused, outcomes
    assert all(o.startswith("StatusCode.UNAVAILABLE") and "already waiting; retry later" in o for o in refused)
