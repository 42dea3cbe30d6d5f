"""Artifacts and a running registry + gateway + deployer for the deployer's end-to-end tests."""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
from onnx import TensorProto, helper, numpy_helper

from gallery_common.bus import EventBus
from gallery_common.events import ArtifactRef, ModelValidated, Payload

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from lifecycle_stack import LifecycleStack  # noqa: E402

FEATURES, CLASSES = 4, 3


def classifier(weights: np.ndarray) -> bytes:
    """features FP32 [-1, 4] → logits = features @ W, probabilities = softmax(logits)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [-1, FEATURES])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [-1, CLASSES]),
        ],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def put(home: Path, key: str, data: bytes) -> dict[str, str]:
    """Write `data` into the stack's file:// artifact store; returns its ArtifactRef as JSON."""
    path = home / "artifacts" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"uri": path.as_uri(), "sha256": hashlib.sha256(data).hexdigest()}


def validation_split(home: Path, rows: np.ndarray) -> dict[str, str]:
    buffer = io.BytesIO()
    np.savez(buffer, x=rows, y=np.zeros(len(rows), np.int64))
    return put(home, "iris/validation_split.npz", buffer.getvalue())


@dataclass
class Load:
    """Requests sent one after another through the gateway in a thread; every status is kept."""

    url: str
    body: bytes
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, content=self.body)
                    self.statuses.append(response.status_code)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.statuses.append(0)
                    self.failures.append(repr(exc))
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)


def infer_body(rows: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    )


async def publish(nats_url: str, payload: Payload, event_id: str) -> None:
    bus = EventBus(nats_url, source="/tests/deployer")
    await bus.connect()
    try:
        await bus.publish(payload, event_id=event_id)
    finally:
        await bus.close()


def register(
    registry: str, home: Path, version: int, weights: np.ndarray, *, rows: np.ndarray, validated: bool = True
) -> dict[str, dict[str, str]]:
    """A registered version with its ONNX file and the validation split, as the gate would announce it."""
    artifacts = {"onnx": put(home, f"iris/{version}/model.onnx", classifier(weights))}
    artifacts["validation_split"] = validation_split(home, rows)
    if version == 1:
        assert httpx.post(f"{registry}/api/v1/models", json={"name": "iris"}).status_code == 201
    created = httpx.post(f"{registry}/api/v1/models/iris/versions", json={"artifacts": artifacts})
    assert created.status_code == 201, created.text
    assert created.json()["version"] == version
    if not validated:
        return artifacts
    # what the gate would do: the deployer deploys only what the registry holds as validated
    for status in ("validating", "validated"):
        marked = httpx.patch(f"{registry}/api/v1/models/iris/versions/{version}", json={"status": status})
        assert marked.status_code == 200, marked.text
    return artifacts


def validated(version: int, artifacts: dict[str, dict[str, str]]) -> ModelValidated:
    return ModelValidated(model="iris", version=version, artifacts={k: ArtifactRef(**v) for k, v in artifacts.items()})


def start_stack(home: Path, nats_url: str, **deployer_settings: str) -> LifecycleStack:
    stack = LifecycleStack(home=home, nats_url=nats_url)
    try:
        stack.start("registry")
        stack.start("gateway", GALLERY_SAMPLE_RATE="0")
        stack.start("deployer", **deployer_settings)
        stack.start(
            "monitor",
            GALLERY_SCRAPE_INTERVAL_S="1",
            GALLERY_EVALUATE_INTERVAL_S="1",
            GALLERY_SLO_WINDOW_S="5",
            GALLERY_SLO_MIN_REQUESTS="5",
        )
    except Exception:
        stack.stop()
        raise
    return stack
