"""Projects in the optimizer: a job belongs to its model's project, model.optimized carries it, and
the REST routes answer a caller only about the projects it holds a role in (a hidden model or job
answers as a missing one). Real registry and optimizer apps with tokens, real nats-server, a real
small trained model optimized once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from optimizer_service_harness import publish, serve, stored_events
from test_optimizer_service import QUICK_POLICY, trained  # noqa: F401  (the module's trained run)

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.audit import AuditRecord
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus
from gallery_common.events import ModelOptimized, ModelValidated
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.projects import ProjectRecord
from gallery_common.settings import GallerySettings
from gallery_optimizer.app import create
from gallery_optimizer.settings import OptimizerSettings
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings
from gallery_trainer.pipeline import JobOutputs

TOKENS = "root:admin,a:alpha:writer,aa:alpha:admin,b:beta:writer,bb:beta:admin"
ROLES = ("onnx", "weights", "spec", "train_split", "validation_split", "test_split")


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_projects(settings: GallerySettings) -> None:
    for name in ("alpha", "beta"):
        settings.project_directory().put(ProjectRecord.new(name, f"team {name}", "test", {}))


@dataclass
class Stack:
    nats_url: str
    registry: httpx.Client
    optimizer: httpx.Client
    store: ArtifactStore


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Stack]:
    artifact_root = (tmp_path / "artifacts").as_uri()
    registry_settings = RegistrySettings(home=tmp_path / "registry", artifact_root=artifact_root, api_tokens=TOKENS)
    with_projects(registry_settings)
    optimizer_port = free_port()
    with serve(create_app_for(registry_settings, with_bus=False), free_port()) as registry_url:
        settings = OptimizerSettings(
            home=tmp_path / "optimizer",
            nats_url=nats_server.url,
            artifact_root=artifact_root,
            registry_url=registry_url,
            registry_token="root",
            port=optimizer_port,
            progress_interval=0.1,
            api_tokens=TOKENS,
        )
        with_projects(settings)
        with (
            serve(create(settings), optimizer_port) as optimizer_url,
            httpx.Client(base_url=registry_url, timeout=30, headers=as_("root")) as registry,
            httpx.Client(base_url=optimizer_url, timeout=30) as optimizer,
        ):
            yield Stack(nats_server.url, registry, optimizer, open_store(artifact_root, GallerySettings()))


def audit_records(nats_url: str, project: str) -> list[AuditRecord]:
    async def read() -> list[AuditRecord]:
        async with EventBus(nats_url, "auditor") as bus:
            return await AuditLog(bus).records(project)

    return asyncio.run(read())


def test_an_optimization_belongs_to_its_models_project_and_is_hidden_from_other_projects(
    stack: Stack,
    trained: JobOutputs,  # noqa: F811
) -> None:
    refs = {role: stack.store.put(f"runs/iris-alpha/{trained.files[role].name}", trained.files[role]) for role in ROLES}
    stack.registry.post("/api/v1/models", json={"name": "iris-alpha", "project": "alpha"}).raise_for_status()
    body = {
        "artifacts": {role: ref.model_dump(mode="json") for role, ref in refs.items()},
        "class_names": trained.class_names,
        "task": "classification",
        "signature": trained.signature.model_dump(mode="json"),
    }
    stack.registry.post("/api/v1/models/iris-alpha/versions", json=body).raise_for_status()
    opt = stack.optimizer

    # policies: beta's admin cannot see alpha's model's policy (the answer of a missing model); alpha's
    # writer reads it but only alpha's admin sets it
    hidden = opt.get("/api/v1/policies/iris-alpha", headers=as_("bb"))
    missing = opt.get("/api/v1/policies/no-such-model", headers=as_("bb"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"].replace("iris-alpha", "X") == missing.json()["error"].replace("no-such-model", "X")
    assert opt.put("/api/v1/policies/iris-alpha", json=QUICK_POLICY, headers=as_("bb")).status_code == 404
    assert opt.get("/api/v1/policies/iris-alpha", headers=as_("a")).status_code == 200
    assert opt.put("/api/v1/policies/iris-alpha", json=QUICK_POLICY, headers=as_("a")).status_code == 403
    assert opt.put("/api/v1/policies/iris-alpha", json=QUICK_POLICY, headers=as_("aa")).status_code == 200
    # the change is in alpha's audit chain, with who made it and the policy before and after
    changes = audit_records(stack.nats_url, "alpha")
    [change] = [r for r in changes if r.target == "iris-alpha/optimization-policy"]
    assert change.action == "policy_change" and change.actor.startswith("token-") and change.after != change.before

    # by hand: beta cannot optimize alpha's version; a writer of alpha cannot override the policy
    request = {"model": "iris-alpha", "version": 1}
    refused = opt.post("/api/v1/optimize", json=request, headers=as_("bb"))
    assert refused.status_code == 404 and refused.json()["error"] == hidden.json()["error"]
    override = opt.post("/api/v1/optimize", json={**request, "policy": {"finetune_epochs": 2}}, headers=as_("a"))
    assert override.status_code == 403
    assert "admin role in project 'alpha'" in override.json()["error"]

    # the registry's announcement carries the model's project: the job and model.optimized do too
    validated = ModelValidated(model="iris-alpha", project="alpha", version=1, semver="1.0.0", artifacts=refs)
    publish(stack.nats_url, validated, "validated:iris-alpha:1")
    (event,) = stored_events(stack.nats_url, "model.optimized", timeout=240)
    optimized: ModelOptimized = event.data
    assert optimized.model == "iris-alpha" and optimized.project == "alpha"

    (job,) = opt.get("/api/v1/optimize", headers=as_("a")).json()
    assert job["project"] == "alpha" and job["status"] == "succeeded"
    assert opt.get("/api/v1/optimize", params={"project": "alpha"}, headers=as_("root")).json()[0]["id"] == job["id"]
    # beta sees no job of alpha's, and a job id of alpha's answers as an unknown one
    assert opt.get("/api/v1/optimize", headers=as_("b")).json() == []
    listed = opt.get("/api/v1/optimize", params={"project": "alpha"}, headers=as_("b"))
    assert listed.status_code == 404 and listed.json()["error"] == "project 'alpha' not found"
    unknown = opt.get("/api/v1/optimize/no-such-job", headers=as_("b")).json()["error"]
    for path in (f"/api/v1/optimize/{job['id']}", f"/api/v1/optimize/{job['id']}/report.md"):
        answer = opt.get(path, headers=as_("b"))
        assert answer.status_code == 404
        assert answer.json()["error"].replace(job["id"], "X") == unknown.replace("no-such-job", "X")
    assert opt.get(f"/api/v1/optimize/{job['id']}/report.md", headers=as_("a")).status_code == 200
    # alpha's writer may submit by hand (the version is optimized already: 409, not a refusal)
    again = opt.post("/api/v1/optimize", json=request, headers=as_("a"))
    assert again.status_code == 409, again.text
