"""The deployer's REST API and its roles: what changes what serves needs admin; only validated versions deploy.

The real routes and the real app factory, in front of a recording stand-in for the controller (the
rollout itself is covered by tests/integration/deployer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from registry_fakes import InMemoryRegistry

from gallery_common.app import create_app
from gallery_common.contracts.registry import VersionStatus
from gallery_common.errors import NotFound
from gallery_common.events import ArtifactRef
from gallery_deployer.deployer import api
from gallery_deployer.deployer.policy import DeploymentPolicy
from gallery_deployer.deployer.records import DeploymentRecord, Stage
from gallery_deployer.deployer.settings import DeployerSettings

SHA = "c" * 64
ADMIN, WRITER, INFERENCE = "admin-tok", "writer-tok", "inference-tok"


def registry() -> InMemoryRegistry:
    """The registry as the deployer reads it: m:1 validated, m:2 rejected, m:3 pending, each with its ONNX."""
    fake = InMemoryRegistry()
    for version, status in ((1, VersionStatus.validated), (2, VersionStatus.rejected), (3, VersionStatus.pending)):
        onnx = ArtifactRef(uri=f"file:///a/m-{version}.onnx", sha256=SHA)
        fake.add_version("m", version, {"onnx": onnx}, status=status)
    return fake


class Runtime:
    async def status(self, deployment_id: str) -> None:
        raise NotFound(deployment_id)


@dataclass
class Policies:
    saved: dict[str, Any] = field(default_factory=dict)

    def put(self, model: str, policy: Any) -> None:
        self.saved[model] = policy

    def get(self, model: str) -> Any:
        return self.saved.get(model, DeploymentPolicy())


@dataclass
class Records:
    controller: Controller

    def for_model(self, model: str, stages: Any) -> list[DeploymentRecord]:
        return [self.controller.record(model, 1)]

    def all(self, stages: Any, projects: Any = None) -> list[DeploymentRecord]:
        return [self.controller.record("m", 1)]

    def project_of(self, model: str) -> str:
        return "default"


@dataclass
class Controller:
    """Records every operation the API asks of it."""

    settings: DeployerSettings
    registry: InMemoryRegistry
    calls: list[str] = field(default_factory=list)
    runtime: Runtime = field(default_factory=Runtime)
    policies: Policies = field(default_factory=Policies)

    def __post_init__(self) -> None:
        self.store = Records(self)

    def record(self, model: str, version: int) -> DeploymentRecord:
        return DeploymentRecord(
            id=f"{model}-{version}",
            model=model,
            version=version,
            artifact_uri=f"file:///a/{model}-{version}.onnx",
            artifact_sha256=SHA,
            stage=Stage.canary,
        )

    async def deploy(self, model: str, version: int, artifact: Any, **_: Any) -> DeploymentRecord:
        self.calls.append(f"deploy {model}:{version}")
        return self.record(model, version)

    async def reroute(self, model: str) -> None:
        self.calls.append(f"reroute {model}")

    async def promote(self, model: str, reason: str) -> DeploymentRecord:
        self.calls.append(f"promote {model}")
        return self.record(model, 1)

    async def rollback(self, model: str, reason: str, version: int | None = None) -> DeploymentRecord:
        self.calls.append(f"rollback {model}")
        return self.record(model, 1)

    async def set_canary_weight(self, model: str, percent: float) -> None:
        self.calls.append(f"weights {model} {percent:g}")

    async def scale(self, model: str, version: int, replicas: int) -> None:
        self.calls.append(f"scale {model}:{version} {replicas}")

    async def wake(self, model: str) -> None:
        self.calls.append(f"wake {model}")

    async def variant_artifact(self, model: str, version: int, variant: str) -> ArtifactRef:
        # fp32: the registry's own file; "forged": a file the registry never attached to the version
        name = f"{model}-{version}" if variant == "fp32" else f"{model}-{version}-{variant}"
        return ArtifactRef(uri=f"file:///a/{name}.onnx", sha256=SHA)

    async def serve_variant(
        self, model: str, version: int, variant: str, artifact: ArtifactRef, reason: str
    ) -> DeploymentRecord:
        self.calls.append(f"variant {model}:{version} {variant} ({reason})")
        return self.record(model, version)


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    settings = DeployerSettings(
        home=tmp_path,
        api_tokens=f"{ADMIN}:admin,{WRITER}:writer,{INFERENCE}:inference",  # type: ignore[arg-type]
    )
    return Controller(settings, registry())


@pytest.fixture
def client(controller: Controller) -> Iterator[TestClient]:
    app = create_app(controller.settings, title="deployer", routers=[api.router], use_bus=False)
    app.dependency_overrides[api.get_controller] = lambda: controller
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN_OPERATIONS = [
    ("POST", "/api/v1/deployments", {"model": "m", "version": 1}, "deploy m:1"),
    ("POST", "/api/v1/deployments/m/promote", None, "promote m"),
    ("POST", "/api/v1/deployments/m/rollback", None, "rollback m"),
    ("PUT", "/api/v1/deployments/m/weights", {"canary_percent": 50}, "weights m 50"),
    ("POST", "/api/v1/deployments/m/versions/1/scale", {"replicas": 0}, "scale m:1 0"),
    ("PUT", "/api/v1/policies/m", {"replicas": 3}, None),
    ("PUT", "/api/v1/policies/m", {"replicas": 3, "record_outcomes": True}, "reroute m"),  # the route changes now
    ("PATCH", "/api/v1/policies/m", {"replicas": 3}, None),
    (
        "PUT",
        "/api/v1/deployments/m/variant",
        {"version": 1, "variant": "fp32", "reason": "int8 answers worse"},
        f"variant m:1 fp32 (variant fp32 chosen by admin-{hashlib.sha256(ADMIN.encode()).hexdigest()[:8]}: "
        "int8 answers worse)",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "call"), ADMIN_OPERATIONS)
def test_what_changes_what_serves_needs_an_admin_token(
    client: TestClient, controller: Controller, method: str, path: str, body: Any, call: str | None
) -> None:
    refused = client.request(method, path, json=body, headers=bearer(WRITER))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this request needs the admin role; your token has writer"}
    assert controller.calls == [] and controller.policies.saved == {}

    done = client.request(method, path, json=body, headers=bearer(ADMIN))
    assert done.is_success, done.text
    assert controller.calls == ([call] if call else [])
    if path == "/api/v1/policies/m":
        assert controller.policies.saved["m"].replicas == 3


def test_a_policy_changes_field_by_field_and_a_bad_field_changes_nothing(
    client: TestClient, controller: Controller
) -> None:
    admin = bearer(ADMIN)
    put = client.put("/api/v1/policies/m", json={"replicas": 3, "canary_percent": 20}, headers=admin)
    assert put.status_code == 200
    patched = client.patch("/api/v1/policies/m", json={"record_outcomes": True}, headers=admin)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["replicas"], patched.json()["canary_percent"], patched.json()["record_outcomes"]) == (
        3, 20, True,
    )  # fmt: skip
    assert controller.calls == ["reroute m"], "keeping answers changes the serving route at once"
    back = client.patch("/api/v1/policies/m", json={"replicas": None}, headers=admin)
    assert back.status_code == 200 and controller.policies.saved["m"].replicas is None  # the settings' default
    assert controller.policies.saved["m"].record_outcomes is True and controller.calls == ["reroute m"]

    for bad, named in (({"colour": "red"}, "colour"), ({"replicas": 0}, "replicas"), ({"gpu": None}, "gpu")):
        refused = client.patch("/api/v1/policies/m", json=bad, headers=admin)
        assert refused.status_code == 422 and named in refused.json()["error"], refused.text
    assert controller.policies.saved["m"].canary_percent == 20, "a refused change changes nothing"


@pytest.mark.parametrize(("version", "status"), [(2, "rejected"), (3, "pending")])
def test_a_version_the_gate_did_not_pass_is_not_deployed(
    client: TestClient, controller: Controller, version: int, status: str
) -> None:
    refused = client.post("/api/v1/deployments", json={"model": "m", "version": version}, headers=bearer(ADMIN))
    assert refused.status_code == 409
    assert refused.json() == {
        "error": f"m:{version} is {status}, not validated: only versions the validation gate passed can be deployed"
    }
    assert controller.calls == []
    deployed = client.post("/api/v1/deployments", json={"model": "m", "version": 1}, headers=bearer(ADMIN))
    assert deployed.status_code == 201 and deployed.json()["version"] == 1
    assert controller.calls == ["deploy m:1"]


def test_the_gateway_wakes_a_model_with_an_inference_token_and_reads_need_a_reader(
    client: TestClient, controller: Controller
) -> None:
    assert client.post("/api/v1/deployments/m/wake", headers=bearer(INFERENCE)).status_code == 204
    assert controller.calls == ["wake m"]
    assert client.post("/api/v1/deployments/m/wake").status_code == 401
    assert client.get("/api/v1/deployments", headers=bearer(INFERENCE)).status_code == 403
    listed = client.get("/api/v1/deployments", headers=bearer(WRITER))
    assert [(d["model"], d["version"]) for d in listed.json()] == [("m", 1)]


def test_only_a_file_the_registry_holds_for_the_version_is_served_as_a_variant(
    client: TestClient, controller: Controller
) -> None:
    refused = client.put(
        "/api/v1/deployments/m/variant", json={"version": 1, "variant": "forged"}, headers=bearer(ADMIN)
    )
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("refused: file:///a/m-1-forged.onnx (sha256 cccccccccccc...) is not")
    assert controller.calls == []
