"""The real model server process on a free port, serving a small ONNX model from a file:// store."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper

from gallery_common.contracts.serving_metrics import BATCH_SIZE, REQUESTS
from gallery_common.netutil import free_port

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -0.5, 0.0], np.float32)


def tiny_model() -> bytes:
    """logits = features @ W + B (FP32 [-1, 4] → [-1, 3]) and probabilities = softmax(logits)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["z"]),
            helper.make_node("Add", ["z", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@dataclass
class Artifact:
    home: Path
    uri: str
    sha256: str


def put_artifact(home: Path, name: str, data: bytes) -> Artifact:
    path = home / "artifacts" / "models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Artifact(home, path.as_uri(), hashlib.sha256(data).hexdigest())


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


def start_server(
    artifact: Artifact, *extra: str, sha256: str | None = None, settings: dict[str, str] | None = None
) -> Server:
    """The model server on a free port; `settings` are GALLERY_* variables on top of the test's (no tokens)."""
    port = free_port()
    log = artifact.home / f"server-{port}.log"
    env = {**os.environ, "GALLERY_HOME": str(artifact.home), "GALLERY_API_TOKENS": "", **(settings or {})}
    command = [
        sys.executable, "-m", "gallery_deployer.modelserver", "--model", "tiny", "--version", "1.0.0",
        "--artifact", artifact.uri, "--sha256", sha256 or artifact.sha256, "--port", str(port),
        "--intra-op-threads", "1", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(process, port, log)


def wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"model server exited {server.process.returncode}: {server.log.read_text()}")
        try:
            if httpx.get(server.url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"model server not ready after {timeout}s: {server.log.read_text()}")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return put_artifact(tmp_path_factory.mktemp("gallery"), "tiny/1.0.0/model.onnx", tiny_model())


@pytest.fixture(scope="module")
def server(artifact: Artifact) -> Iterator[Server]:
    running = start_server(artifact, "--max-queue-delay-ms", "20", "--no-eager-batching")
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0


def expected_logits(x: np.ndarray) -> np.ndarray:
    return x @ W + B


def test_tritonclient_health_metadata_and_infer(server: Server) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1.0.0")
    assert client.get_server_metadata()["name"] == "modelgallery-modelserver"
    metadata = client.get_model_metadata("tiny", "1.0.0")
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probabilities"]

    for rows in (1, 32):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        features = triton.InferInput("features", [rows, 4], "FP32")
        features.set_data_from_numpy(x, binary_data=False)
        result = client.infer(
            "tiny", [features], outputs=[triton.InferRequestedOutput("logits", binary_data=False)], request_id="r-7"
        )
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
        assert result.as_numpy("probabilities") is None  # only the selected output came back
        assert result.get_response()["id"] == "r-7"
    client.close()


def test_tritonclient_defaults_use_binary_tensors(server: Server) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    features = triton.InferInput("features", [32, 4], "FP32")
    features.set_data_from_numpy(x)

    result = client.infer("tiny", [features], model_version="1.0.0")

    np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), np.ones(32), rtol=1e-5)
    client.close()


def test_nested_and_flat_data_give_the_same_answer(server: Server) -> None:
    x = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]
    answers = []
    for data in (x, [v for row in x for v in row]):
        response = httpx.post(
            server.url + "/v2/models/tiny/infer",
            json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": data}]},
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    # the same answer, each naming its own request
    assert answers[0].pop("id") != answers[1].pop("id") and answers[0] == answers[1]
    logits = answers[0]["outputs"][0]
    assert (logits["name"], logits["datatype"], logits["shape"]) == ("logits", "FP32", [2, 3])
    np.testing.assert_allclose(np.reshape(logits["data"], (2, 3)), expected_logits(np.array(x)), rtol=1e-5)
    probabilities = np.reshape(answers[0]["outputs"][1]["data"], (2, 3))
    np.testing.assert_allclose(probabilities.sum(axis=1), [1, 1], rtol=1e-5)


GOOD = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/other/infer", {"inputs": [GOOD]}, 404, "model 'other' is not served here"),
        ("/v2/models/tiny/versions/9.9.9/infer", {"inputs": [GOOD]}, 404, "no version '9.9.9'"),
        ("/v2/models/tiny/infer", {"inputs": [{**GOOD, "shape": [1, 5]}]}, 400, "'features' has shape [1, 5]"),
        ("/v2/models/tiny/infer", {"inputs": [{**GOOD, "datatype": "INT64"}]}, 400, "expects FP32"),
        ("/v2/models/tiny/infer", {"inputs": [{**GOOD, "shape": [2, 4]}]}, 400, "has 4 values; shape [2, 4] needs 8"),
        ("/v2/models/tiny/infer", {"inputs": [{**GOOD, "name": "pixels"}]}, 400, "'pixels' is not an input"),
        ("/v2/models/tiny/infer", b'{"inputs": [', 400, "not valid JSON"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
    server: Server, path: str, body: object, status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    response = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]

    after = httpx.post(server.url + "/v2/models/tiny/infer", json={"inputs": [GOOD]})
    assert after.status_code == 200


def test_unknown_model_metadata_and_unknown_paths_are_404(server: Server) -> None:
    response = httpx.get(server.url + "/v2/models/other")
    assert response.status_code == 404
    assert "not served here" in response.json()["error"]
    assert httpx.get(server.url + "/v2/models/tiny/versions/2").status_code == 404
    assert httpx.get(server.url + "/v2/nothing").json() == {"error": "Not Found"}


def test_the_infer_path_answers_by_version_and_only_to_post(server: Server) -> None:
    versioned = httpx.post(server.url + "/v2/models/tiny/versions/1.0.0/infer", json={"inputs": [GOOD], "id": "r-7"})
    assert versioned.status_code == 200
    assert versioned.json()["id"] == "r-7" and versioned.json()["model_version"] == "1.0.0"

    wrong_version = httpx.post(server.url + "/v2/models/tiny/versions/2/infer", json={"inputs": [GOOD]})
    assert wrong_version.status_code == 404 and "no version '2'" in wrong_version.json()["error"]
    other_model = httpx.post(server.url + "/v2/models/other/infer", json={"inputs": [GOOD]})
    assert other_model.status_code == 404 and "not served here" in other_model.json()["error"]

    fetched = httpx.get(server.url + "/v2/models/tiny/infer")
    assert fetched.status_code == 405 and fetched.headers["allow"] == "POST"
    assert fetched.json() == {"error": "Method Not Allowed"}


def metric_total(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def post_many(url: str, count: int) -> list[httpx.Response]:
    body = {"inputs": [GOOD]}
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url + "/v2/models/tiny/infer", json=body) for _ in range(count)))


def test_concurrent_requests_are_batched_and_metrics_show_it(server: Server) -> None:
    before = httpx.get(server.url + "/metrics").text

    responses = asyncio.run(post_many(server.url, 24))

    assert all(r.status_code == 200 for r in responses)
    after = httpx.get(server.url + "/metrics").text
    labels = 'model="tiny",variant="fp32",version="1.0.0"'
    batches = metric_total(after, f"{BATCH_SIZE}_count") - metric_total(before, f"{BATCH_SIZE}_count")
    single = metric_total(after, f'{BATCH_SIZE}_bucket{{le="1.0",{labels}}}') - (
        metric_total(before, f'{BATCH_SIZE}_bucket{{le="1.0",{labels}}}')
    )
    assert batches > single, "no batch held more than one request"
    ok = f'{REQUESTS}{{model="tiny",outcome="ok",variant="fp32",version="1.0.0"}}'
    assert metric_total(after, ok) - metric_total(before, ok) == 24
    assert "modelgallery_inference_queue_duration_seconds_bucket" in after
    assert "modelgallery_inference_compute_duration_seconds_bucket" in after


def test_overload_gives_503_with_retry_after_and_the_server_recovers(artifact: Artifact) -> None:
    server = start_server(
        artifact, "--max-queue", "2", "--max-queue-delay-ms", "300", "--max-batch-size", "64", "--no-eager-batching"
    )
    try:
        wait_ready(server)
        responses = asyncio.run(post_many(server.url, 20))
        statuses = [r.status_code for r in responses]
        assert 200 in statuses and 503 in statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1
        assert "retry later" in refused.json()["error"]

        assert httpx.post(server.url + "/v2/models/tiny/infer", json={"inputs": [GOOD]}).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        overloaded = f'{REQUESTS}{{model="tiny",outcome="overloaded"'
        assert metric_total(metrics, overloaded) == statuses.count(503)
    finally:
        assert server.stop() == 0


def test_sigterm_drains_a_request_waiting_for_its_batch(artifact: Artifact) -> None:
    server = start_server(artifact, "--max-queue-delay-ms", "1500", "--no-eager-batching")
    try:
        wait_ready(server)

        async def in_flight() -> httpx.Response:
            async with httpx.AsyncClient(timeout=30) as client:
                request = asyncio.ensure_future(
                    client.post(server.url + "/v2/models/tiny/infer", json={"inputs": [GOOD]})
                )
                await asyncio.sleep(0.5)
                server.process.send_signal(signal.SIGTERM)
                return await request

        response = asyncio.run(in_flight())
        assert response.status_code == 200
        assert response.json()["outputs"][0]["shape"] == [1, 3]
    finally:
        assert server.stop() == 0


def test_sha256_mismatch_refuses_to_start(artifact: Artifact) -> None:
    server = start_server(artifact, sha256="0" * 64)
    code = server.process.wait(30)
    assert code != 0
    assert "expected sha256 " + "0" * 64 in server.log.read_text()


def test_a_file_that_is_not_onnx_refuses_to_start(tmp_path: Path) -> None:
    server = start_server(put_artifact(tmp_path, "junk/model.onnx", b"not a model at all"))
    code = server.process.wait(30)
    assert code != 0
    assert "not an ONNX model" in server.log.read_text()
