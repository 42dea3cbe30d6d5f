"""The data plane's access checks: the gateway and the model server refuse before reading a body.

The gateway's routing table decides where a model's traffic, and the model-server token with it,
go, and `wake_url` is POSTed with the deployer's token: only an admin may set it. The model server
checks the token (the `inference` role) and the body's size before a byte of the body is read.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from raw_http import chunked, read_answer, request_head, send_first_chunk
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn_thread import served

from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings
from gallery_deployer.modelserver.app import create_app as create_model_server
from gallery_deployer.modelserver.model import load_model
from gallery_deployer.modelserver.settings import ModelServerSettings

FOUR_GB = 4 * 1024**3
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


@dataclass
class Recorder:
    """A host a writer would like the gateway to call: it records who called it with which token."""

    calls: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def steal(request: Request) -> Response:
            self.calls.append(request.headers.get("authorization", ""))
            return Response(status_code=204)

        return Starlette(routes=[Route("/steal", steal, methods=["POST"])])


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    recording = Recorder()
    with served(recording.app()) as port:
        yield recording, f"http://127.0.0.1:{port}/steal"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    settings = GatewaySettings(
        home=tmp_path,
        api_tokens="itok:inference,wtok:writer,atok:admin",  # type: ignore[arg-type]
        deployer_token="deployer-secret",  # type: ignore[arg-type]
        cold_start_timeout_s=1.0,
        sample_rate=0.0,
    )
    with served(create_app_for(settings, with_bus=False)) as port:
        yield f"http://127.0.0.1:{port}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def infer_body(rows: list[list[float]]) -> bytes:
    tensor = {"name": "features", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}
    return orjson.dumps({"inputs": [tensor]})


def test_a_writer_cannot_make_the_gateway_post_the_deployers_token_to_its_host(
    gateway: str, recorder: tuple[Recorder, str]
) -> None:
    recording, steal_url = recorder
    asleep = {"backends": [], "policy": {"asleep": True, "wake_url": steal_url}}
    refused = httpx.put(f"{gateway}/admin/routes/m", json=asleep, headers=bearer("wtok"))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this request needs the admin role; your token has writer"}
    answer = httpx.post(f"{gateway}/v2/models/m/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer("itok"))
    assert answer.status_code == 404 and recording.calls == []

    # what the role keeps from a writer: with the route set, the next request POSTs the deployer's token
    assert httpx.put(f"{gateway}/admin/routes/m", json=asleep, headers=bearer("atok")).status_code == 200
    httpx.post(f"{gateway}/v2/models/m/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer("itok"))
    assert recording.calls == ["Bearer deployer-secret"]


def test_the_gateway_refuses_a_4gb_inference_without_a_token_before_reading_it(gateway: str) -> None:
    port = int(gateway.rsplit(":", 1)[1])
    head = request_head("POST", "/v2/models/m/infer", length=FOUR_GB)
    answer = send_first_chunk(port, head, b'{"inputs": [' + b"0," * 30_000)
    assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert answer.seconds < 5
    too_big = send_first_chunk(port, request_head("POST", "/v2/models/m/infer", token="itok", length=FOUR_GB), b"{")
    assert too_big.status == 413 and "67108864 bytes" in too_big.body["error"]


def tiny_model() -> bytes:
    """logits = features @ W (FP32 [-1, 4] → [-1, 3])."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[int]:
    data = tiny_model()
    path = tmp_path / "artifacts" / "tiny.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    settings = ModelServerSettings(
        home=tmp_path,
        model_name="tiny",
        model_version="1",
        artifact_uri=path.as_uri(),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        api_tokens="itok:inference,rtok:reader",  # type: ignore[arg-type]
        serve_nats=False,
        max_body_bytes=10_000,
        intra_op_threads=1,
    )
    with served(create_model_server(settings, load_model(settings), CollectorRegistry())) as port:
        yield port


def test_the_model_server_checks_the_token_before_the_body(model_server: int) -> None:
    head = request_head("POST", "/v2/models/tiny/infer", length=FOUR_GB)
    anonymous = send_first_chunk(model_server, head, b'{"inputs": [' + b"0," * 4_000)
    assert anonymous.status == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.body == {"error": "missing bearer token: send 'Authorization: Bearer <token>'"}
    assert anonymous.seconds < 5
    wrong = send_first_chunk(model_server, request_head("POST", "/v2/models/tiny/infer", token="nope", length=9), b"{")
    assert wrong.status == 401 and wrong.body == {"error": "unknown bearer token"}


def test_the_model_server_limits_the_body_declared_or_streamed(model_server: int) -> None:
    declared = send_first_chunk(
        model_server, request_head("POST", "/v2/models/tiny/infer", token="itok", length=FOUR_GB), b"{"
    )
    assert declared.status == 413
    assert declared.body == {
        "error": "the request body is over this service's limit of 10000 bytes (GALLERY_MAX_BODY_BYTES)"
    }
    head = request_head("POST", "/v2/models/tiny/infer", token="itok")
    with socket.create_connection(("127.0.0.1", model_server), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + b"\r\n" + chunked(b" " * 6_000, b" " * 6_000))
        streamed = read_answer(sock, started)
    assert streamed.status == 413 and "10000 bytes" in streamed.body["error"]


def test_an_inference_token_infers_and_reads_the_model_and_probes_need_none(model_server: int) -> None:
    base = f"http://127.0.0.1:{model_server}"
    answer = httpx.post(f"{base}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer("itok"))
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], (np.array([[1, 2, 3, 4]]) @ W).ravel(), rtol=1e-6)
    metadata = httpx.get(f"{base}/v2/models/tiny", headers=bearer("itok"))
    assert metadata.json()["inputs"][0]["name"] == "features"
    assert httpx.get(f"{base}/v2/models/tiny").status_code == 401
    assert httpx.post(f"{base}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]])).status_code == 401
    for probe in ("/v2/health/live", "/v2/health/ready", "/healthz", "/readyz", "/metrics", "/v2"):
        assert httpx.get(base + probe).status_code == 200, probe


def test_the_gateway_cuts_off_a_streamed_inference_body_over_the_limit_before_forwarding_it(tmp_path: Path) -> None:
    forwarded: list[bytes] = []

    async def infer(request: Request) -> Response:
        forwarded.append(await request.body())
        return Response(b'{"outputs": []}', media_type="application/json")

    backend = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"])])
    settings = GatewaySettings(
        home=tmp_path,
        api_tokens="itok:inference,atok:admin",  # type: ignore[arg-type]
        max_body_bytes=10_000,
        sample_rate=0.0,
    )
    with served(backend) as backend_port, served(create_app_for(settings, with_bus=False)) as port:
        route = {"backends": [{"id": "a", "url": f"http://127.0.0.1:{backend_port}"}]}
        gateway = f"http://127.0.0.1:{port}"
        assert httpx.put(f"{gateway}/admin/routes/m", json=route, headers=bearer("atok")).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            head = request_head("POST", "/v2/models/m/infer", token="itok")
            sock.sendall(head.encode() + b"\r\n" + chunked(b" " * 6_000, b" " * 6_000))
            streamed = read_answer(sock, started)
        small = httpx.post(f"{gateway}/v2/models/m/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer("itok"))
    assert streamed.status == 413
    assert streamed.body == {
        "error": "the request body is over this service's limit of 10000 bytes (GALLERY_MAX_BODY_BYTES)"
    }
    assert small.status_code == 200
    assert forwarded == [infer_body([[1, 2, 3, 4]])]  # the cut-off body never reached the backend
