"""Real processes and apps for the monitor's integration tests: a model server, apps on uvicorn, NATS helpers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from uvicorn_thread import served

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent
from gallery_common.netutil import free_port

WEIGHTS = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [0.5, 0.5, 0.5]], np.float32)


def tiny_classifier() -> bytes:
    """logits = features @ WEIGHTS: FP32 [-1, 4] in, FP32 [-1, 3] out."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def put_file(home: Path, key: str, data: bytes) -> dict[str, str]:
    """Write an artifact into the file:// store under `home` and return its URI and sha256."""
    path = home / "artifacts" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"uri": path.as_uri(), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class ModelServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def infer(self, client: httpx.Client, rows: np.ndarray) -> httpx.Response:
        body = {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
            ]
        }
        return client.post(f"{self.url}/v2/models/iris/infer", json=body)


@contextmanager
def model_server(home: Path, *, model: str = "iris", version: str = "1") -> Iterator[ModelServer]:
    """The real model server process (gallery_deployer.modelserver) serving the tiny classifier."""
    ref = put_file(home, f"{model}/{version}/model.onnx", tiny_classifier())
    port = free_port()
    log = home / f"modelserver-{port}.log"
    env = {**os.environ, "GALLERY_HOME": str(home), "GALLERY_API_TOKENS": ""}
    command = [
        sys.executable, "-m", "gallery_deployer.modelserver", "--model", model, "--version", version,
        "--variant", "fp32", "--artifact", ref["uri"], "--sha256", ref["sha256"], "--port", str(port),
        "--intra-op-threads", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ModelServer(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model server did not become ready: {log.read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(20)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port until the block ends; yields its URL once /readyz answers 200."""
    with served(app, ready_path="/readyz") as port:
        yield f"http://127.0.0.1:{port}"


def publish_events(nats_url: str, events: list[CloudEvent[Any]]) -> None:
    async def go() -> None:
        async with EventBus(nats_url, "test") as bus:
            for event in events:
                await bus.publish_event(event)

    asyncio.run(go())


def publish_samples(nats_url: str, subject: str, messages: list[bytes]) -> None:
    """Publish on plain NATS, as the gateway does."""

    async def go() -> None:
        nc = await nats.connect(nats_url)
        try:
            for message in messages:
                await nc.publish(subject, message)
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(go())


def stored_events(nats_url: str, subject: str) -> list[CloudEvent[Any]]:
    """Every event `subject` names (`model.degraded`: that event of every project) stored so far.
    Matched on the event's name, so it reads either subject layout (`model.<event>[.<project>]`)."""
    event_name = subject.removeprefix("model.")

    async def go() -> list[CloudEvent[Any]]:
        await asyncio.sleep(0.5)  # what is being published now is stored too
        async with EventBus(nats_url, "test") as bus:
            return [e for e in await bus.stored_events() if e.event == event_name]

    return asyncio.run(go())
