"""Real model-server processes choosing their execution provider: one out of `.venv-openvino` serving on
OpenVINO, one here asked for CUDA and TensorRT serving on the CPU, and what each says about it over REST,
gRPC and its readiness answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_serving_modelserver import Artifact, Server, expected_logits, put_artifact, tiny_model, wait_ready

from gallery_common.netutil import free_port
from gallery_common.oip_grpc import codec
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[3]
OPENVINO_PYTHON = REPO / ".venv-openvino" / "bin" / "python"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def openvino_python() -> Path:
    if not OPENVINO_PYTHON.exists():
        pytest.fail(f"{OPENVINO_PYTHON} is missing: `make .venv-openvino/.installed` makes it (`make test` does)")
    return OPENVINO_PYTHON


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return put_artifact(tmp_path_factory.mktemp("gallery"), "tiny/1.0.0/model.onnx", tiny_model())


def launch(python: Path | str, artifact: Artifact, providers: str, grpc_port: int = 0) -> Server:
    """The model server run by `python`, asked for `providers` (comma-separated) on the command line."""
    port = free_port()
    log = artifact.home / f"server-{port}.log"
    env = {**os.environ, "GALLERY_HOME": str(artifact.home), "GALLERY_API_TOKENS": "", "GALLERY_SERVE_NATS": "false"}
    command = [
        str(python), "-m", "gallery_deployer.modelserver", "--model", "tiny", "--version", "1.0.0",
        "--artifact", artifact.uri, "--sha256", artifact.sha256, "--port", str(port),
        "--intra-op-threads", "1", "--execution-providers", providers, "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(process, port, log)


@pytest.fixture
def serve() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def infer(server: Server, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    logits = next(o for o in response.json()["outputs"] if o["name"] == "logits")
    return np.asarray(logits["data"], np.float32).reshape(logits["shape"])


def grpc_parameters(port: int) -> dict[str, object]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), timeout=10)
    return codec.parameters_of(answer.parameters)


def test_a_server_out_of_the_openvino_venv_serves_on_openvino_and_says_so(
    openvino_python: Path, artifact: Artifact, serve: list[Server]
) -> None:
    grpc_port = free_port()
    server = launch(openvino_python, artifact, "openvino,cpu", grpc_port)
    serve.append(server)
    wait_ready(server, timeout=60)

    for rows in (1, 32):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        np.testing.assert_allclose(infer(server, x), expected_logits(x), rtol=1e-4, atol=1e-4)
    metadata = httpx.get(f"{server.url}/v2/models/tiny", timeout=10).json()
    assert metadata["parameters"] == {"variant": "fp32", "execution_provider": OPENVINO}
    assert grpc_parameters(grpc_port) == {"variant": "fp32", "execution_provider": OPENVINO}
    ready = httpx.get(f"{server.url}/v2/health/ready", timeout=10).json()
    assert ready == {"ready": True, "execution_provider": OPENVINO}
    logged = [json.loads(line) for line in server.log.read_text().splitlines() if '"model_ready"' in line]
    assert logged[0]["execution_provider"] == OPENVINO


def test_asked_for_tensorrt_and_cuda_here_the_server_serves_on_the_cpu_and_says_why(
    artifact: Artifact, serve: list[Server]
) -> None:
    grpc_port = free_port()
    server = launch(sys.executable, artifact, "tensorrt,cuda", grpc_port)
    serve.append(server)
    wait_ready(server)

    x = np.random.default_rng(7).normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_allclose(infer(server, x), expected_logits(x), rtol=1e-5, atol=1e-5)
    parameters = httpx.get(f"{server.url}/v2/models/tiny", timeout=10).json()["parameters"]
    assert parameters["execution_provider"] == CPU
    reasons = parameters["provider_fallback"].split("; ")
    assert [reason.split(":")[0] for reason in reasons] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert all("not in this ONNX Runtime build" in reason for reason in reasons)
    assert grpc_parameters(grpc_port) == parameters
    assert (
        httpx.get(f"{server.url}/v2/health/ready", timeout=10).json()["provider_fallback"]
        == (parameters["provider_fallback"])
    )
    lines = server.log.read_text().splitlines()
    warnings = [json.loads(line) for line in lines if "execution_provider_fallback" in line]
    assert warnings and warnings[0]["reason"] == parameters["provider_fallback"]


def ir14_model() -> bytes:
    """y = x @ I, saved with ONNX IR version 14 (what onnx 1.23's helper writes by default)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "ir14",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 14
    return model.SerializeToString()


def test_a_model_the_openvino_build_cannot_read_ends_the_server_with_the_reason(
    openvino_python: Path, tmp_path: Path
) -> None:
    artifact = put_artifact(tmp_path, "ir14/1/model.onnx", ir14_model())
    server = launch(openvino_python, artifact, "openvino,cpu")
    # exit code 1: the model cannot load here (the local runtime then starts it with its own interpreter)
    assert server.process.wait(60) == 1
    failures = [json.loads(line) for line in server.log.read_text().splitlines() if '"model_load_failed"' in line]
    reason = failures[0]["reason"]
    assert reason.startswith("no execution provider could load the model: OpenVINOExecutionProvider:")
    assert "Unsupported model IR version: 14, max supported IR version: 13" in reason
