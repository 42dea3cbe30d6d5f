"""The gateway's traffic samples for the monitor, whatever way a request came: JSON, the binary tensor extension
(what tritonclient sends by default) and gRPC (forwarded natively or over REST). A real model server serves a
text classifier; each sample on `inference.sample.<model>` holds the texts sent and the logits served."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from test_serving_grpc import ADMIN, AUTH, TOKEN, GrpcServer, start_grpc_server
from test_serving_modelserver import put_artifact, wait_ready
from text_models import corpus, text_classifier
from uvicorn_thread import running

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings

MODEL = "topics"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    home = tmp_path_factory.mktemp("gallery")
    running_server = start_grpc_server(
        put_artifact(home, "topics/1/model.onnx", text_classifier().onnx), "--model", MODEL
    )
    try:
        wait_ready(running_server.server)
        yield running_server
    finally:
        assert running_server.server.stop() == 0


def samples_of(nats_url: str, send: object, expected: int) -> list[dict[str, object]]:
    """The samples the gateway publishes while `send()` runs and after, decoded: `expected` of them, then one
    more second for any extra; fewer when none came for 10 s."""

    async def collect() -> list[dict[str, object]]:
        connection = await nats.connect(nats_url)
        subscription = await connection.subscribe(f"inference.sample.{MODEL}")
        await asyncio.to_thread(send)  # type: ignore[arg-type]
        received: list[dict[str, object]] = []
        try:
            while True:
                message = await subscription.next_msg(timeout=1.0 if len(received) >= expected else 10.0)
                received.append(orjson.loads(message.data))
        except nats.errors.TimeoutError:
            pass
        await connection.close()
        return received

    return asyncio.run(collect())


def test_binary_json_and_grpc_requests_are_all_sampled_with_their_texts(
    tmp_path: Path, nats_server: EmbeddedNats, server: GrpcServer
) -> None:
    texts, _ = corpus(3, seed=5)
    texts[1] = "Pluie à verse ☔"
    settings = GatewaySettings(
        home=tmp_path,
        port=free_port(),
        grpc_port=free_port(),
        api_tokens=f"{TOKEN}:inference,{ADMIN}:admin",  # type: ignore[arg-type]
        model_server_token=TOKEN,  # type: ignore[arg-type]
        sample_rate=1.0,
        nats_url=nats_server.url,
        grpc_forward="grpc",
    )
    with running(create_app_for(settings, with_bus=True), settings.port):
        base = f"http://127.0.0.1:{settings.port}"
        for backend_grpc, name in ((server.grpc, "native"), (None, "rest")):
            backend = {"id": name, "url": server.server.url, "grpc": backend_grpc, "version": "1"}
            put = httpx.put(
                f"{base}/admin/routes/{MODEL}",
                json={"backends": [backend]},
                headers={"authorization": f"Bearer {ADMIN}"},
            )
            assert put.status_code == 200, put.text

            def send() -> None:
                rest = triton_http.InferenceServerClient(base.removeprefix("http://"))
                for binary in (True, False):
                    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
                    tensor.set_data_from_numpy(np.array(texts.tolist(), dtype=object), binary_data=binary)
                    wanted = triton_http.InferRequestedOutput("logits", binary_data=binary)
                    rest.infer(MODEL, [tensor], outputs=[wanted], headers=dict(AUTH))
                rest.close()
                remote = triton_grpc.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}")
                tensor = triton_grpc.InferInput("text", [len(texts)], "BYTES")
                tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
                remote.infer(MODEL, [tensor], headers=AUTH)
                remote.close()

            samples = samples_of(nats_server.url, send, 3)
            assert len(samples) == 3, (name, samples)
            for sample in samples:
                (sent,) = sample["inputs"]  # type: ignore[misc]
                assert sent["datatype"] == "BYTES" and sent["data"] == texts.tolist(), (name, sent)
                (served,) = sample["outputs"]  # type: ignore[misc]
                assert served["name"] == "logits" and len(served["data"]) == len(texts) * served["shape"][1]
