"""The deployment policy's execution providers on their way to the model servers: the spec and its
environment, the Kubernetes image per pod, the local runtime's interpreter, and model.deployed."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_deployer_controller import FakeGateway, FakeRegistry, FakeRuntime, artifact

from gallery_common.artifacts import open_store
from gallery_common.db import make_engine
from gallery_common.events import ModelDeployed, Payload
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.policy import DeploymentPolicy
from gallery_deployer.deployer.records import DeploymentStore
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.runtime.base import DeploymentStatus, ServerSpec
from gallery_deployer.runtime.local import LocalOptions, LocalRuntime
from gallery_deployer.runtime.manifests import (
    KubernetesOptions,
    cpu_fallback_manifest,
    deployment_manifest,
    spec_annotation,
    spec_from_annotation,
)

REPO = Path(__file__).resolve().parents[3]
SPEC = ServerSpec(
    deployment_id="digits-v1-fp32",
    model="digits",
    version=1,
    variant="fp32",
    artifact_uri="s3://modelgallery/digits.onnx",
    artifact_sha256="0" * 64,
)


class ReportingRuntime(FakeRuntime):
    """Ready at once, serving on the provider `provider` with `fallback` as the reason, like the local runtime."""

    def __init__(self, provider: str, fallback: str | None) -> None:
        super().__init__()
        self.provider, self.fallback = provider, fallback

    def _status(self, spec: ServerSpec) -> DeploymentStatus:
        return replace(super()._status(spec), execution_provider=self.provider, fallback=self.fallback)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    settings = DeployerSettings(home=tmp_path, canary_percent=10, drain_s=0, canary_window_s=3600)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    events: list[Payload] = []

    async def publish(payload: Payload, event_id: str) -> None:
        events.append(payload)

    runtime = ReportingRuntime("CPUExecutionProvider", "CUDAExecutionProvider: not in this ONNX Runtime build")
    built = Controller(
        settings,
        DeploymentStore(engine),
        runtime,  # type: ignore[arg-type]
        FakeGateway(),  # type: ignore[arg-type]
        FakeRegistry(),  # type: ignore[arg-type]
        open_store((tmp_path / "artifacts").as_uri(), settings),
        publish,
    )
    built.events = events  # type: ignore[attr-defined]
    yield built
    await built.close()


def deployed(controller: Controller) -> list[ModelDeployed]:
    return [e for e in controller.events if isinstance(e, ModelDeployed)]  # type: ignore[attr-defined]


async def test_the_policys_providers_reach_the_spec_and_model_deployed_says_what_serves(controller: Controller) -> None:
    policy = DeploymentPolicy(execution_providers=["tensorrt", "cuda", "cpu"], tensorrt_fp16=False)
    controller.policies.put("m", policy)
    await controller.deploy("m", 1, artifact(1))

    spec = controller.runtime.specs["m-v1"]  # type: ignore[attr-defined]
    assert spec.execution_providers == ("tensorrt", "cuda", "cpu")
    assert spec.env["GALLERY_TENSORRT_FP16"] == "false"
    (event,) = deployed(controller)
    assert event.execution_provider == "CPUExecutionProvider"
    assert event.fallback == "CUDAExecutionProvider: not in this ONNX Runtime build"


async def test_a_promotion_announces_the_provider_too(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))
    await controller.promote("m", "canary passed")
    assert [(e.version, e.stage, e.execution_provider) for e in deployed(controller)] == [
        (1, "production", "CPUExecutionProvider"),
        (2, "canary", "CPUExecutionProvider"),
        (2, "production", "CPUExecutionProvider"),
    ]


def test_a_policy_names_only_providers_there_are() -> None:
    assert DeploymentPolicy().execution_providers == []  # the model server's default: CUDA where it has it, CPU
    with pytest.raises(ValidationError, match="execution_providers"):
        DeploymentPolicy.model_validate({"execution_providers": ["rocm"]})
    with pytest.raises(ValidationError, match="openvino_device_type"):
        DeploymentPolicy.model_validate({"openvino_device_type": "FPGA"})
    assert DeploymentPolicy(openvino_device_type="NPU").provider_env() == {"GALLERY_OPENVINO_DEVICE_TYPE": "NPU"}
    assert DeploymentPolicy().provider_env() == {}


def container(manifest: dict[str, object]) -> dict[str, object]:
    return manifest["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index,no-any-return]


def env_of(manifest: dict[str, object]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(manifest)["env"]}  # type: ignore[attr-defined]


def test_kubernetes_runs_openvino_pods_from_the_openvino_image_and_gpu_pods_from_the_gpu_one() -> None:
    options = KubernetesOptions()
    plain = deployment_manifest(SPEC, options)
    assert container(plain)["image"] == options.image
    assert "GALLERY_EXECUTION_PROVIDERS" not in env_of(plain)

    openvino = replace(SPEC, execution_providers=("openvino", "cpu"))
    cpu_pods = deployment_manifest(openvino, options)
    assert container(cpu_pods)["image"] == "modelgallery/modelserver-openvino:0.1.0" == options.openvino_image
    assert json.loads(env_of(cpu_pods)["GALLERY_EXECUTION_PROVIDERS"]) == ["openvino", "cpu"]

    gpu_first = replace(SPEC, gpu=True, execution_providers=("tensorrt", "cuda", "openvino", "cpu"))
    assert container(deployment_manifest(gpu_first, options))["image"] == options.gpu_image
    # the GPU deployment's CPU fallback serves on OpenVINO, next in the preference
    fallback = cpu_fallback_manifest(gpu_first, options, reason="no GPU node")
    assert container(fallback)["image"] == options.openvino_image
    assert json.loads(env_of(fallback)["GALLERY_EXECUTION_PROVIDERS"]) == ["tensorrt", "cuda", "openvino", "cpu"]

    cpu_first = replace(SPEC, execution_providers=("cpu", "openvino"))
    assert container(deployment_manifest(cpu_first, options))["image"] == options.image


def test_a_spec_read_back_from_its_annotation_is_the_same_spec() -> None:
    spec = replace(SPEC, execution_providers=("openvino", "cpu"))
    assert spec_from_annotation(spec_annotation(spec)) == spec


def test_the_local_runtime_starts_openvino_replicas_with_the_openvino_interpreter(tmp_path: Path) -> None:
    openvino = tmp_path / "venv-openvino" / "bin" / "python"
    openvino.parent.mkdir(parents=True)
    openvino.touch()
    runtime = LocalRuntime(LocalOptions(log_dir=tmp_path, openvino_python=openvino))
    without = LocalRuntime(LocalOptions(log_dir=tmp_path))
    gone = LocalRuntime(LocalOptions(log_dir=tmp_path, openvino_python=tmp_path / "removed" / "python"))
    prefers = replace(SPEC, execution_providers=("openvino", "cpu"))
    # OpenVINO's interpreter first; the deployer's own takes over when that one cannot load the model
    assert runtime._pythons(prefers, None) == [str(openvino), sys.executable]
    assert runtime._pythons(replace(SPEC, execution_providers=("cpu", "openvino")), None) == [sys.executable]
    assert runtime._pythons(SPEC, None) == [sys.executable]
    assert runtime._pythons(prefers, ("local", 0)) == [sys.executable]  # a replica with a GPU: CUDA's build
    assert without._pythons(prefers, None) == [sys.executable]
    assert gone._pythons(prefers, None) == [sys.executable]  # a venv removed since: no spawn of a missing file


def test_the_deployer_finds_the_openvino_venv_beside_its_own(tmp_path: Path) -> None:
    # make test builds .venv-openvino beside .venv, which runs these tests
    assert DeployerSettings(home=tmp_path).resolved_openvino_python == REPO / ".venv-openvino" / "bin" / "python"
    chosen = tmp_path / "python"
    assert DeployerSettings(home=tmp_path, openvino_python=chosen).resolved_openvino_python == chosen
