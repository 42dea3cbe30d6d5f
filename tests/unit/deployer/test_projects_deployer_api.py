"""Projects at the deployer's REST API: deployments belong to their model's project.

The real routes, app factory, access middleware and deployment store (SQLite, migrated), in front of a
recording stand-in for the controller's operations (the rollout itself is tests/integration/deployer's).
Alpha's members cannot list, read, deploy, promote, roll back, reweigh or scale beta's models (they get
the answer of a model never deployed); a reader of alpha cannot change what serves in alpha.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from registry_fakes import InMemoryRegistry
from sqlmodel import Session

from gallery_common.app import create_app
from gallery_common.db import make_engine
from gallery_common.errors import NotFound
from gallery_common.events import ArtifactRef
from gallery_common.projects import ProjectRecord
from gallery_deployer.deployer import api, routes_api
from gallery_deployer.deployer.migrations import MIGRATIONS
from gallery_deployer.deployer.records import DeploymentRecord, DeploymentStore, Stage
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.experiments import api as experiments_api
from gallery_deployer.experiments.records import ExperimentRecord, ExperimentStore
from gallery_deployer.gateway.routes import Backend, ModelRoute

SHA = "d" * 64
ROOT, ALPHA_ADMIN, ALPHA_READER, BETA_ADMIN = "root-tok", "alpha-admin-tok", "alpha-reader-tok", "beta-admin-tok"
MIXED = "mixed-tok"  # reader in alpha, admin in beta
TOKENS = (
    f"{ROOT}:admin,{ALPHA_ADMIN}:alpha:admin,{ALPHA_READER}:alpha:reader,{BETA_ADMIN}:beta:admin,"
    f"{MIXED}:alpha:reader,{MIXED}:beta:admin"
)
MODELS = {"ours": "alpha", "theirs": "beta"}
BACKEND = Backend(id="b", url="http://10.0.0.1:8500", version="1")


class Runtime:
    async def status(self, deployment_id: str) -> None:
        raise NotFound(deployment_id)


@dataclass
class Routes:
    """The routes bucket as the deployer's routes API uses it."""

    held: dict[str, ModelRoute] = field(default_factory=dict)

    async def get(self, model: str) -> tuple[ModelRoute, int] | None:
        return (self.held[model], 1) if model in self.held else None

    async def put(self, model: str, route: ModelRoute) -> int:
        self.held[model] = route
        return 2

    async def delete(self, model: str) -> bool:
        return self.held.pop(model, None) is not None


@dataclass
class Controller:
    """The real store; the operations that would start or move servers are recorded."""

    settings: DeployerSettings
    store: DeploymentStore
    registry: InMemoryRegistry
    calls: list[str] = field(default_factory=list)
    runtime: Runtime = field(default_factory=Runtime)
    routes: Routes = field(default_factory=Routes)

    def lock(self, model: str) -> asyncio.Lock:
        return asyncio.Lock()

    def record(self, model: str, version: int) -> DeploymentRecord:
        found = self.store.get(f"{model}-v{version}")
        assert found is not None
        return found

    async def deploy(self, model: str, version: int, artifact: Any, *, project: str, **_: Any) -> DeploymentRecord:
        self.calls.append(f"deploy {model}:{version} in {project}")
        return self.store.save(stored(model, version, project))

    async def promote(self, model: str, reason: str) -> DeploymentRecord:
        self.calls.append(f"promote {model}")
        return self.record(model, 1)

    async def rollback(self, model: str, reason: str, version: int | None = None) -> DeploymentRecord:
        self.calls.append(f"rollback {model}")
        return self.record(model, 1)

    async def set_canary_weight(self, model: str, percent: float) -> None:
        self.calls.append(f"weights {model}")

    async def scale(self, model: str, version: int, replicas: int) -> None:
        self.calls.append(f"scale {model}")


def stored(model: str, version: int, project: str) -> DeploymentRecord:
    return DeploymentRecord(
        id=f"{model}-v{version}",
        model=model,
        project=project,
        version=version,
        artifact_uri=f"file:///a/{model}-{version}.onnx",
        artifact_sha256=SHA,
        stage=Stage.production,
        traffic_percent=100.0,
    )


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    settings = DeployerSettings(home=tmp_path, api_tokens=TOKENS)  # type: ignore[arg-type]
    for name in ("alpha", "beta"):
        settings.project_directory().put(ProjectRecord.new(name, "", "test", {}))
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    MIGRATIONS.upgrade(engine, "head")
    store = DeploymentStore(engine)
    registry = InMemoryRegistry()
    for model, project in MODELS.items():
        store.save(stored(model, 1, project))
        for version in (1, 2):
            onnx = ArtifactRef(uri=f"file:///a/{model}-{version}.onnx", sha256=SHA)
            added = registry.add_version(model, version, {"onnx": onnx})
            registry.versions[(model, version)] = added.model_copy(update={"project": project})
    controller = Controller(settings, store, registry)
    for model, project in MODELS.items():
        controller.routes.held[model] = ModelRoute(project=project, backends=[BACKEND])
    return controller


@pytest.fixture
def client(controller: Controller) -> Iterator[TestClient]:
    app = create_app(controller.settings, title="deployer", routers=[api.router, routes_api.router], use_bus=False)
    app.dependency_overrides[api.get_controller] = lambda: controller
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(model: str) -> list[tuple[str, str, Any]]:
    """Every request of the API that touches `model`."""
    return [
        ("GET", f"/api/v1/deployments/{model}", None),
        ("GET", f"/api/v1/deployments/{model}/canary", None),
        ("POST", "/api/v1/deployments", {"model": model, "version": 2}),
        ("POST", f"/api/v1/deployments/{model}/promote", None),
        ("POST", f"/api/v1/deployments/{model}/rollback", None),
        ("PUT", f"/api/v1/deployments/{model}/weights", {"canary_percent": 40}),
        ("POST", f"/api/v1/deployments/{model}/versions/1/scale", {"replicas": 0}),
        ("PUT", f"/api/v1/policies/{model}", {"replicas": 2}),
    ]


def test_deployments_are_listed_only_in_projects_the_caller_holds_a_role_in(client: TestClient) -> None:
    everything = client.get("/api/v1/deployments", headers=bearer(ROOT)).json()
    assert {(d["model"], d["project"]) for d in everything} == {("ours", "alpha"), ("theirs", "beta")}

    mine = client.get("/api/v1/deployments", headers=bearer(ALPHA_READER)).json()
    assert [(d["model"], d["project"]) for d in mine] == [("ours", "alpha")]
    assert [d["model"] for d in client.get("/api/v1/deployments?project=beta", headers=bearer(ROOT)).json()] == [
        "theirs"
    ]

    hidden = client.get("/api/v1/deployments?project=beta", headers=bearer(ALPHA_ADMIN))
    missing = client.get("/api/v1/deployments?project=gamma", headers=bearer(ALPHA_ADMIN))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"error": "project 'beta' not found"}


def test_another_projects_model_answers_every_request_as_a_model_that_does_not_exist(
    client: TestClient, controller: Controller
) -> None:
    for (method, path, body), (_, ghost_path, ghost_body) in zip(
        operations("theirs"), operations("nosuch"), strict=True
    ):
        hidden = client.request(method, path, json=body, headers=bearer(ALPHA_ADMIN))
        missing = client.request(method, ghost_path, json=ghost_body, headers=bearer(ALPHA_ADMIN))
        assert hidden.status_code == 404, (path, hidden.text)
        assert hidden.json()["error"] == missing.json()["error"].replace("nosuch", "theirs"), path
    assert controller.calls == []
    assert controller.store.for_model("theirs", None)[0].stage == Stage.production


def test_a_reader_of_a_project_reads_its_deployments_and_cannot_change_what_serves(
    client: TestClient, controller: Controller
) -> None:
    read = client.get("/api/v1/deployments/ours", headers=bearer(ALPHA_READER))
    assert read.status_code == 200 and read.json()[0]["project"] == "alpha"
    for method, path, body in operations("ours")[2:]:
        refused = client.request(method, path, json=body, headers=bearer(ALPHA_READER))
        assert refused.status_code == 403, (path, refused.text)
        # refused by the route's role before the project's (the caller holds admin nowhere): both named
        assert refused.json() == {"error": "this request needs the admin role; your token has reader in alpha"}
        # an admin elsewhere passes the route's check and is refused by the model's project
        mixed = client.request(method, path, json=body, headers=bearer(MIXED))
        assert mixed.status_code == 403, (path, mixed.text)
        assert mixed.json() == {
            "error": "this request needs the admin role in project 'alpha'; your token has reader there"
        }
    assert controller.calls == []


def test_a_projects_admin_changes_what_serves_in_its_project(client: TestClient, controller: Controller) -> None:
    deployed = client.post("/api/v1/deployments", json={"model": "ours", "version": 2}, headers=bearer(ALPHA_ADMIN))
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["project"] == "alpha"
    assert client.post("/api/v1/deployments/ours/promote", headers=bearer(ALPHA_ADMIN)).status_code == 200
    assert controller.calls == ["deploy ours:2 in alpha", "promote ours"]
    # beta's admin does the same in beta, and alpha's model is unknown to it
    assert client.post("/api/v1/deployments/theirs/promote", headers=bearer(BETA_ADMIN)).status_code == 200
    assert client.post("/api/v1/deployments/ours/promote", headers=bearer(BETA_ADMIN)).status_code == 404
    assert controller.calls[-1] == "promote theirs"


def test_the_routes_of_another_projects_model_answer_as_a_model_without_a_route(
    client: TestClient, controller: Controller
) -> None:
    route = {"project": "alpha", "backends": [BACKEND.model_dump(mode="json")]}
    for method, body in (("GET", None), ("PUT", route), ("DELETE", None)):
        hidden = client.request(method, "/api/v1/routes/theirs", json=body, headers=bearer(ALPHA_ADMIN))
        missing = client.request("GET", "/api/v1/routes/nosuch", headers=bearer(ALPHA_ADMIN))
        assert hidden.status_code == 404, (method, hidden.text)
        assert hidden.json()["error"] == missing.json()["error"].replace("nosuch", "theirs")
    assert controller.routes.held["theirs"].project == "beta"

    # a project's admin sets its own model's route, keeps it in its project, and places none in another
    assert client.put("/api/v1/routes/ours", json=route, headers=bearer(ALPHA_ADMIN)).status_code == 200
    moved = client.put("/api/v1/routes/ours", json={**route, "project": "beta"}, headers=bearer(ROOT))
    assert moved.status_code == 422 and "model 'ours' is in project 'alpha'" in moved.json()["error"]
    placed = client.put("/api/v1/routes/fresh", json={**route, "project": "beta"}, headers=bearer(ALPHA_ADMIN))
    assert placed.status_code == 404 and placed.json() == {"error": "project 'beta' not found"}
    assert set(controller.routes.held) == {"ours", "theirs"}
    refused = client.get("/api/v1/routes/ours", headers=bearer(MIXED))
    assert refused.status_code == 403 and "admin role in project 'alpha'" in refused.json()["error"]


@dataclass
class StoredExperiments:
    """The experiments API's view of the experiments: the real store, nothing running."""

    store: ExperimentStore
    controller: Controller

    async def all(self, model: str | None = None) -> list[ExperimentRecord]:
        return [r for r in self.store.all() if model is None or r.model == model]

    async def get(self, experiment_id: str) -> tuple[ExperimentRecord, list[Any]]:
        found = self.store.get(experiment_id)
        if found is None:
            raise NotFound(experiment_id)
        return found, []


def test_an_experiment_stays_in_its_project_after_its_model_stops_serving(controller: Controller) -> None:
    store = ExperimentStore(controller.store.engine)
    for model, project in MODELS.items():
        store.save(
            ExperimentRecord(
                id=f"exp-{model}", model=model, project=project, versions=[1, 2], split=[50, 50],
                metric="accuracy", mde=0.05, alpha=0.05, status="concluded",
            )
        )  # fmt: skip
    with Session(controller.store.engine) as session:  # "ours" is retired: no deployment of it is left
        session.delete(session.get(DeploymentRecord, "ours-v1"))
        session.commit()
    app = create_app(controller.settings, title="deployer", routers=[experiments_api.router], use_bus=False)
    app.dependency_overrides[experiments_api.get_experiments] = lambda: StoredExperiments(store, controller)
    with TestClient(app) as client:
        listed = client.get("/api/v1/experiments", headers=bearer(ALPHA_READER)).json()
        assert [(e["id"], e["project"]) for e in listed] == [("exp-ours", "alpha")]
        assert client.get("/api/v1/experiments/exp-ours", headers=bearer(ALPHA_READER)).json()["project"] == "alpha"
        hidden = client.get("/api/v1/experiments/exp-ours", headers=bearer(BETA_ADMIN))
        assert hidden.status_code == 404 and hidden.json()["error"] == "no experiment 'exp-ours'"
        assert [e["id"] for e in client.get("/api/v1/experiments", headers=bearer(BETA_ADMIN)).json()] == ["exp-theirs"]
