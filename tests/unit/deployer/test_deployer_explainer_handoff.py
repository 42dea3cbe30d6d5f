"""The deployer hands each version's explainer artifact to the model servers it starts: taken from
`model.validated` or, for a deploy by hand, from the registry; kept on the deployment record (a database
at revision 0001 gains the column with its rows kept); set as GALLERY_EXPLAINER_URI and
GALLERY_EXPLAINER_SHA256 in the replicas' environment, which the Kubernetes manifests carry too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from registry_fakes import InMemoryRegistry
from sqlalchemy import inspect, text
from test_deployer_controller import FakeGateway, FakeRuntime

from gallery_common.artifacts import open_store
from gallery_common.auth import Caller
from gallery_common.db import make_engine
from gallery_common.events import ArtifactRef, ModelValidated, Payload, make_event
from gallery_common.settings import Role
from gallery_deployer.deployer import api
from gallery_deployer.deployer.consumer import rollout_events
from gallery_deployer.deployer.controller import Controller, explainer_env
from gallery_deployer.deployer.migrations import MIGRATIONS, current_revision, upgrade
from gallery_deployer.deployer.records import DeploymentStore
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.manifests import KubernetesOptions, deployment_manifest

ONNX = {v: ArtifactRef(uri=f"file:///models/m/{v}/model.onnx", sha256=f"{v}" * 64) for v in (1, 2)}
EXPLAINER = ArtifactRef(uri="file:///models/m/1/explainer.npz", sha256="e" * 64)
EXPLAINER_ENV = {"GALLERY_EXPLAINER_URI": EXPLAINER.uri, "GALLERY_EXPLAINER_SHA256": EXPLAINER.sha256}


ADMIN = Caller(name="admin-test", role=Role.admin)  # who deploys by hand, for the audit trail


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    """The rollout tests' controller, reading a registry where m:1 has an explainer and m:2 none."""
    settings = DeployerSettings(home=tmp_path, canary_window_s=3600)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    registry = InMemoryRegistry()
    registry.add_version("m", 1, {"onnx": ONNX[1], "explainer": EXPLAINER})
    registry.add_version("m", 2, {"onnx": ONNX[2]})  # validated before explanations existed

    async def publish(payload: Payload, event_id: str) -> None:
        pass

    artifacts = open_store((tmp_path / "artifacts").as_uri(), settings)
    runtime, gateway = FakeRuntime(), FakeGateway()
    built = Controller(settings, DeploymentStore(engine), runtime, gateway, registry, artifacts, publish)  # type: ignore[arg-type]
    yield built
    await built.close()


def spec_of(controller: Controller, deployment_id: str) -> ServerSpec:
    return controller.runtime.specs[deployment_id]  # type: ignore[attr-defined,no-any-return]


async def test_model_validated_hands_its_explainer_to_the_model_servers(controller: Controller) -> None:
    validated = ModelValidated(model="m", version=1, artifacts={"onnx": ONNX[1], "explainer": EXPLAINER})
    await rollout_events(controller).dispatch(make_event(validated, "/tests/gate"))

    record = controller.store.get("m-v1")
    assert record is not None and record.explainer == EXPLAINER.model_dump(mode="json")
    assert spec_of(controller, "m-v1").env == EXPLAINER_ENV


async def test_a_deploy_by_hand_takes_the_explainer_the_registry_holds(controller: Controller) -> None:
    view = await api.deploy(
        api.DeployRequest(model="m", version=1), controller, ADMIN, controller.settings.project_directory()
    )

    assert view.explainer == EXPLAINER
    assert spec_of(controller, view.id).env == EXPLAINER_ENV


async def test_a_version_without_an_explainer_starts_servers_without_one(controller: Controller) -> None:
    view = await api.deploy(
        api.DeployRequest(model="m", version=2), controller, ADMIN, controller.settings.project_directory()
    )

    assert view.explainer is None
    assert spec_of(controller, view.id).env == {}  # its servers answer explain requests with 404


def test_the_kubernetes_manifest_gives_the_model_server_the_explainer() -> None:
    spec = ServerSpec(
        deployment_id="m-v1",
        model="m",
        version=1,
        variant="fp32",
        artifact_uri=ONNX[1].uri,
        artifact_sha256=ONNX[1].sha256,
        env=explainer_env(EXPLAINER.model_dump(mode="json")),
    )
    (container,) = deployment_manifest(spec, KubernetesOptions())["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert {name: env[name] for name in EXPLAINER_ENV} == EXPLAINER_ENV


def test_a_database_at_0001_gains_the_explainer_column_and_keeps_its_deployments(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    MIGRATIONS.upgrade(engine, "0001")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deployer_deployment (id, model, version, variant, artifact_uri, artifact_sha256, stage, "
                "traffic_percent, replicas, state, created_at, updated_at) VALUES ('m-v1', 'm', 1, 'fp32', :uri, "
                ":sha, 'production', 100.0, 1, 'ready', :now, :now)"
            ),
            {"uri": ONNX[1].uri, "sha": ONNX[1].sha256, "now": now},
        )
    assert "explainer" not in {c["name"] for c in inspect(engine).get_columns("deployer_deployment")}

    MIGRATIONS.upgrade(engine, "0002")

    assert current_revision(engine) == "0002"
    MIGRATIONS.upgrade(engine, "head")  # the store's records have the later columns too (0004: project)
    store = DeploymentStore(engine)
    kept = store.get("m-v1")
    assert kept is not None and (kept.stage, kept.explainer, kept.project) == ("production", None, "default")
    kept.explainer = EXPLAINER.model_dump(mode="json")
    store.save(kept)
    assert store.get("m-v1").explainer == EXPLAINER.model_dump(mode="json")  # type: ignore[union-attr]
