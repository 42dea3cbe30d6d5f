"""The deployer with its local runtime starting real model servers by the policy's execution providers:
OpenVINO out of `.venv-openvino`, CUDA/TensorRT asked for on a machine without them, and a model the
OpenVINO build cannot read; what `model.deployed` on the real bus says about each."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from gallery_common.artifacts import open_store
from gallery_common.bus import EventBus
from gallery_common.db import make_engine
from gallery_common.events import ArtifactRef, ModelDeployed, Payload
from gallery_common.nats_server import EmbeddedNats
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.policy import DeploymentPolicy
from gallery_deployer.deployer.records import DeploymentStore, Stage
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.gateway.routes import ModelRoute
from gallery_deployer.runtime.local import LocalOptions, LocalRuntime

REPO = Path(__file__).resolve().parents[3]
OPENVINO_PYTHON = REPO / ".venv-openvino" / "bin" / "python"
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], np.float32)


def classifier(ir_version: int) -> bytes:
    """logits = features @ W, FP32 [-1, 4] → [-1, 3], saved with `ir_version`."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    return model.SerializeToString()


class Routes:
    """The gateway's routes, kept here: the test calls the model servers directly."""

    def __init__(self) -> None:
        self.routes: dict[str, ModelRoute] = {}

    async def put(self, model: str, route: ModelRoute) -> None:
        self.routes[model] = route

    async def delete(self, model: str) -> None:
        self.routes.pop(model, None)

    async def close(self) -> None:
        pass


class Registry:
    def get_version(self, model: str, version: int) -> SimpleNamespace:
        return SimpleNamespace(task="classification")

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


@dataclass
class Deployer:
    controller: Controller
    runtime: LocalRuntime
    bus: EventBus
    home: Path

    def artifact(self, model: str, data: bytes) -> ArtifactRef:
        path = self.home / "artifacts" / model / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return ArtifactRef(uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest())

    async def deploy(self, model: str, data: bytes, **policy: object) -> ModelDeployed:
        """Deploy version 1 of `model` under `policy`; returns its model.deployed as the bus stored it."""
        self.controller.policies.put(model, DeploymentPolicy.model_validate(policy))
        record = await self.controller.deploy(model, 1, self.artifact(model, data))
        assert record.stage == Stage.production, record.reason
        stored = [e.data for e in await self.bus.stored_events() if e.event == "deployed"]
        (event,) = [ModelDeployed.model_validate(d) for d in stored if ModelDeployed.model_validate(d).model == model]
        return event

    def endpoint(self, model: str) -> str:
        (backend,) = self.controller.routes.routes[model].backends  # type: ignore[attr-defined]
        return str(backend.url)


@pytest.fixture
def openvino_python() -> Path:
    if not OPENVINO_PYTHON.exists():
        pytest.fail(f"{OPENVINO_PYTHON} is missing: `make .venv-openvino/.installed` makes it (`make test` does)")
    return OPENVINO_PYTHON


@pytest.fixture
async def deployer(tmp_path: Path, openvino_python: Path) -> AsyncIterator[Deployer]:
    nats = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    bus = await EventBus(nats.url, source="/tests/deployer").connect()
    home = tmp_path / "home"
    settings = DeployerSettings(home=home, drain_s=0, canary_window_s=3600, ready_timeout_s=90)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    options = LocalOptions(
        log_dir=tmp_path / "logs", health_interval_s=0.1, ready_timeout_s=60, openvino_python=openvino_python
    )
    env = {"GALLERY_HOME": str(home), "GALLERY_SERVE_NATS": "false", "GALLERY_API_TOKENS": ""}
    runtime = LocalRuntime(options, env)

    async def publish(payload: Payload, event_id: str) -> None:
        await bus.publish(payload, event_id=event_id)

    controller = Controller(
        settings,
        DeploymentStore(engine),
        runtime,
        Routes(),  # type: ignore[arg-type]
        Registry(),  # type: ignore[arg-type]
        open_store((home / "artifacts").as_uri(), settings),
        publish,
    )
    try:
        yield Deployer(controller, runtime, bus, home)
    finally:
        await controller.close()
        await runtime.close()
        await bus.close()
        nats.stop()


def interpreter_of(deployer: Deployer, model: str) -> str:
    (pid,) = deployer.runtime.pids(f"{model}-v1").values()
    return str(psutil.Process(pid).cmdline()[0])


def answers(deployer: Deployer, model: str) -> np.ndarray:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]}
    response = httpx.post(f"{deployer.endpoint(model)}/v2/models/{model}/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def metadata_parameters(deployer: Deployer, model: str) -> dict[str, str]:
    response = httpx.get(f"{deployer.endpoint(model)}/v2/models/{model}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json()["parameters"])


async def test_a_policy_asking_for_openvino_is_served_by_the_openvino_venv(
    deployer: Deployer, openvino_python: Path
) -> None:
    event = await deployer.deploy("ov", classifier(ir_version=9), execution_providers=["openvino", "cpu"])

    assert (event.execution_provider, event.fallback) == ("OpenVINOExecutionProvider", None)
    assert interpreter_of(deployer, "ov") == str(openvino_python)
    np.testing.assert_allclose(answers(deployer, "ov"), X @ W, rtol=1e-4, atol=1e-4)
    assert metadata_parameters(deployer, "ov")["execution_provider"] == "OpenVINOExecutionProvider"


async def test_cuda_and_tensorrt_asked_for_here_fall_back_to_the_cpu_with_the_reason(deployer: Deployer) -> None:
    event = await deployer.deploy("gpu", classifier(ir_version=9), execution_providers=["tensorrt", "cuda", "cpu"])

    assert event.execution_provider == "CPUExecutionProvider"
    assert event.fallback is not None
    reasons = event.fallback.split("; ")
    assert [r.split(":")[0] for r in reasons] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert all("not in this ONNX Runtime build" in r for r in reasons)
    np.testing.assert_allclose(answers(deployer, "gpu"), X @ W, rtol=1e-5, atol=1e-5)
    assert metadata_parameters(deployer, "gpu")["provider_fallback"] == event.fallback


async def test_a_model_the_openvino_build_cannot_read_is_served_by_the_cpu_venv_with_the_reason(
    deployer: Deployer, openvino_python: Path
) -> None:
    event = await deployer.deploy("ir14", classifier(ir_version=14), execution_providers=["openvino", "cpu"])

    # served, not failed: the deployer's own interpreter (ONNX Runtime 1.32 reads IR 14) took over
    assert event.execution_provider == "CPUExecutionProvider"
    assert interpreter_of(deployer, "ir14") != str(openvino_python)
    assert event.fallback is not None
    assert event.fallback.startswith(f"{openvino_python} could not load the model (no execution provider could")
    assert "Unsupported model IR version: 14, max supported IR version: 13" in event.fallback
    # and the server that took over says it has no OpenVINO
    assert "OpenVINOExecutionProvider: not in this ONNX Runtime build" in event.fallback
    np.testing.assert_allclose(answers(deployer, "ir14"), X @ W, rtol=1e-5, atol=1e-5)
