"""The deployer's changes in the audit trail on a real nats-server: promotions by a person through the
REST API (who, why), the deployer's own deployments, rollbacks and experiment decisions
(`service:deployer`, the reason on record), each recorded once however often its event is published."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import SQLModel, create_engine

from gallery_common.app import ServiceResources, create_app
from gallery_common.artifacts import open_store
from gallery_common.audit import AuditAction, AuditRecord
from gallery_common.audit_log import AuditLog
from gallery_common.audit_trail import AuditTrail
from gallery_common.bus import EventBus
from gallery_common.db import make_engine
from gallery_common.errors import NotFound
from gallery_common.events import ArtifactRef, ModelDeployed, ModelExperimentConcluded, ModelRolledBack, Payload
from gallery_common.nats_server import EmbeddedNats
from gallery_deployer.deployer import api
from gallery_deployer.deployer.audit import DeployerAudit, acting_as
from gallery_deployer.deployer.controller import Controller as RolloutController
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.policy import DeploymentPolicy, PolicyStore
from gallery_deployer.deployer.records import DeploymentRecord, DeploymentStore, Stage
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.experiments.api import router as experiments_router
from gallery_deployer.experiments.controller import Experiments
from gallery_deployer.experiments.records import ExperimentStore
from gallery_deployer.runtime.base import DeploymentStatus, RuntimeState, ServerSpec

ADMIN = "admin-tok"


def _record(version: int, stage: Stage, reason: str | None = None, traffic: float = 0.0) -> DeploymentRecord:
    return DeploymentRecord(
        id=f"iris-{version}", model="iris", version=version, artifact_uri=f"file:///iris-{version}.onnx",
        artifact_sha256="c" * 64, stage=stage, reason=reason, traffic_percent=traffic,
    )  # fmt: skip


def _deployed(version: int, stage: str = "production") -> ModelDeployed:
    traffic = 100.0 if stage == "production" else 10.0
    return ModelDeployed(
        model="iris", version=version, deployment_id=f"iris-{version}", stage=stage, traffic_percent=traffic
    )  # type: ignore[arg-type]


def _store(tmp_path: Path) -> DeploymentStore:
    engine = create_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    SQLModel.metadata.create_all(engine)
    return DeploymentStore(engine)


async def _records(url: str) -> list[AuditRecord]:
    async with EventBus(url, "auditor") as bus:
        audit = AuditLog(bus)
        assert (await audit.verify("default")).ok
        return await audit.records("default")


async def test_the_deployers_own_changes_are_recorded_once(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_record(1, Stage.previous))
    store.save(_record(2, Stage.production, reason="canary passed: error rate 0.1 % vs 0.2 %", traffic=100))
    async with EventBus(nats_server.url, "deployer") as bus:
        audit = DeployerAudit(AuditTrail(AuditLog(bus), tmp_path / "outbox.jsonl", service="deployer"), store)
        await audit.published(_deployed(2), "deployed:iris:2:fp32:production")
        await audit.published(_deployed(2), "deployed:iris:2:fp32:production")  # the trigger redelivered
        rolled = ModelRolledBack(model="iris", version=2, to_version=1, reason="p99 420 ms above the SLO of 250 ms")
        await audit.published(rolled, "rolled_back:iris:2")
        decided = ModelExperimentConcluded(
            model="iris", experiment_id="exp-1", outcome="winner", winner=3, control=1, versions=[1, 3],
            metric="accuracy", effect=0.04, interval=(0.01, 0.07), p_value=0.003, samples={"1": 900, "3": 910},
            traffic_moved=True, reason="v3 more accurate by 4 points (p=0.003)",
        )  # fmt: skip
        await audit.published(decided, "experiment_concluded:exp-1")
        await audit.published(decided, "experiment_concluded:exp-1")
    promoted, rollback, decision = await _records(nats_server.url)
    assert (promoted.action, promoted.actor, promoted.target) == ("promotion", "service:deployer", "iris/2")
    assert promoted.before == {"production": 1} and promoted.after["traffic_percent"] == 100.0
    assert promoted.reason == "canary passed: error rate 0.1 % vs 0.2 %"
    assert (rollback.action, rollback.before, rollback.after) == ("rollback", {"production": 2}, {"production": 1})
    assert rollback.reason == "p99 420 ms above the SLO of 250 ms"
    assert (decision.action, decision.version, decision.after["winner"]) == ("experiment_decision", 3, 3)


async def test_a_change_to_a_model_of_another_project_is_recorded_in_that_projects_chain(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    alpha = _record(1, Stage.production, traffic=100)
    alpha.project = "alpha"
    store.save(alpha)
    async with EventBus(nats_server.url, "deployer") as bus:
        log = AuditLog(bus)
        audit = DeployerAudit(AuditTrail(log, tmp_path / "outbox.jsonl", service="deployer"), store)
        default_before = len(await log.records("default"))
        deployed = ModelDeployed(
            model="iris", project="alpha", version=1, deployment_id="iris-1", stage="production", traffic_percent=100
        )
        await audit.published(deployed, "deployed:iris:1:fp32:production:alpha")
        # a route's own change (no event): the project comes from the model's deployments
        await audit.record(AuditAction.policy_change, "iris/policy", model="iris", after={"canary_percent": 5})
        in_alpha = await log.records("alpha")
        assert [r.action for r in in_alpha] == ["deployment", "policy_change"]
        assert len(await log.records("default")) == default_before
        assert (await log.verify("alpha")).ok


class Controller:
    """The REST API's view of the controller: a promotion publishes model.deployed, as the real one does."""

    def __init__(self, settings: DeployerSettings, store: DeploymentStore, policies: PolicyStore) -> None:
        self.settings, self.store, self.policies = settings, store, policies
        self.publish: Any = None
        self.runtime = self

    async def status(self, deployment_id: str) -> None:
        return None

    async def promote(self, model: str, reason: str) -> DeploymentRecord:
        self.store.save(_record(1, Stage.previous))
        record = self.store.save(_record(2, Stage.production, reason=reason, traffic=100))
        await self.publish(_deployed(2), "deployed:iris:2:fp32:production")
        return record

    async def scale(self, model: str, version: int, replicas: int) -> None:
        record = self.store.get(f"iris-{version}")
        assert record is not None
        record.replicas = replicas
        self.store.save(record)

    async def set_canary_weight(self, model: str, percent: float) -> None:
        canary = self.store.get("iris-3") or _record(3, Stage.canary)
        canary.traffic_percent = percent
        self.store.save(canary)


@pytest.fixture
def deployer(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[tuple[TestClient, Controller]]:
    settings = DeployerSettings(home=tmp_path, nats_url=nats_server.url, api_tokens=f"{ADMIN}:admin")  # type: ignore[arg-type]
    store = _store(tmp_path)
    store.save(_record(3, Stage.canary, traffic=10))
    controller = Controller(settings, store, PolicyStore(store.engine))

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Controller:
        assert resources.bus is not None
        trail = AuditTrail(AuditLog(resources.bus), tmp_path / "outbox.jsonl", service="deployer")
        audit = DeployerAudit(trail, store)

        async def publish(payload: Payload, event_id: str) -> None:
            await resources.bus.publish(payload, event_id=event_id)  # type: ignore[union-attr]
            await audit.published(payload, event_id)

        controller.publish = publish
        app.state.audit = audit
        return controller

    app = create_app(settings, title="deployer", routers=[api.router], startup=startup)
    app.dependency_overrides[api.get_controller] = lambda: controller
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client, controller


def test_a_promotion_by_a_person_is_theirs_with_their_reason(
    deployer: tuple[TestClient, Controller], nats_server: EmbeddedNats
) -> None:
    client, _ = deployer
    why = {"reason": "v2 won the A/B test on conversion"}
    assert client.post("/api/v1/deployments/iris/promote", json=why).status_code == 200
    assert client.put("/api/v1/deployments/iris/weights", json={"canary_percent": 25}).status_code == 200
    assert client.put("/api/v1/policies/iris", json={"replicas": 3}).status_code == 200
    for _ in range(2):  # the second sets what is already set: nothing to record
        assert client.post("/api/v1/deployments/iris/versions/3/scale", json={"replicas": 0}).status_code == 200
    promoted, weights, policy, scaled = asyncio.run(_records(nats_server.url))
    assert (scaled.action, scaled.target, scaled.before, scaled.after) == (
        "scaling",
        "iris/3",
        {"replicas": 1},
        {"replicas": 0},
    )
    assert scaled.actor == promoted.actor
    assert promoted.action == "promotion" and promoted.actor.startswith("admin-")
    assert promoted.reason == "v2 won the A/B test on conversion" and promoted.before == {"production": 1}
    assert (weights.action, weights.before, weights.after) == (
        "route_change",
        {"canary_percent": 10.0},
        {"canary_percent": 25.0},
    )
    assert policy.action == "policy_change" and policy.after["replicas"] == 3 and policy.actor == promoted.actor
    assert DeploymentPolicy.model_validate(policy.after).replicas == 3


class ReadyRuntime:
    """Replicas that are ready as soon as they are asked for."""

    name = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, ServerSpec] = {}

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        self.specs[spec.deployment_id] = spec
        return await self.status(spec.deployment_id)

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        return await self.status(deployment_id)

    async def status(self, deployment_id: str) -> DeploymentStatus:
        if deployment_id not in self.specs:
            raise NotFound(deployment_id)
        urls = (f"http://{deployment_id}:8500",)
        return DeploymentStatus(deployment_id, RuntimeState.ready, 1, 1, urls)

    async def delete(self, deployment_id: str) -> None:
        self.specs.pop(deployment_id, None)

    async def close(self) -> None:
        pass


class Routes:
    async def put(self, model: str, route: object) -> None:
        pass

    async def delete(self, model: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Aliases:
    def get_version(self, model: str, version: int) -> SimpleNamespace:
        return SimpleNamespace(task="classification")

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


async def test_the_real_rollout_records_deployments_a_persons_promotion_and_a_rollback(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    settings = DeployerSettings(home=tmp_path, canary_percent=10, drain_s=3600, canary_window_s=3600)
    engine = make_engine(f"sqlite:///{tmp_path / 'rollout.db'}")
    upgrade(engine)
    store = DeploymentStore(engine)
    async with EventBus(nats_server.url, "deployer") as bus:
        audit = DeployerAudit(AuditTrail(AuditLog(bus), tmp_path / "outbox.jsonl", service="deployer"), store)

        async def publish(payload: Payload, event_id: str) -> None:
            await bus.publish(payload, event_id=event_id)
            await audit.published(payload, event_id)

        rollout = RolloutController(
            settings, store, ReadyRuntime(), Routes(), Aliases(),  # type: ignore[arg-type]
            open_store((tmp_path / "artifacts").as_uri(), settings), publish,
        )  # fmt: skip
        onnx = [ArtifactRef(uri=f"file:///m/{v}.onnx", sha256=f"{v:064d}") for v in (1, 2)]
        await rollout.deploy("iris", 1, onnx[0])  # the first version: straight to production
        await rollout.deploy("iris", 2, onnx[1])  # a canary beside it
        with acting_as("admin-5e5e5e5e", "v2 wins on recall", AuditAction.promotion):
            await rollout.promote("iris", "v2 wins on recall")
        await rollout.rollback("iris", "error rate 4 % above the SLO of 1 %")
        await rollout.close()
    records = await _records(nats_server.url)
    assert [(r.action, r.target, r.actor) for r in records] == [
        ("deployment", "iris/1", "service:deployer"),
        ("deployment", "iris/2", "service:deployer"),
        ("promotion", "iris/2", "admin-5e5e5e5e"),
        ("rollback", "iris/2", "service:deployer"),
    ]
    first, canary, promoted, rolled_back = records
    assert first.after["stage"] == "production" and canary.after == {
        "stage": "canary", "traffic_percent": 10.0, "variant": "fp32", "deployment_id": canary.after["deployment_id"],
    }  # fmt: skip
    assert (promoted.before, promoted.reason) == ({"production": 1}, "v2 wins on recall")
    assert (rolled_back.after, rolled_back.reason) == ({"production": 1}, "error rate 4 % above the SLO of 1 %")


def test_an_experiment_a_person_starts_and_stops_is_theirs(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    settings = DeployerSettings(
        home=tmp_path, nats_url=nats_server.url, api_tokens=f"{ADMIN}:admin",  # type: ignore[arg-type]
        canary_percent=10, drain_s=3600, canary_window_s=3600,
    )  # fmt: skip
    engine = make_engine(f"sqlite:///{tmp_path / 'experiments.db'}")
    upgrade(engine)
    store = DeploymentStore(engine)

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> object:
        bus = resources.bus
        assert bus is not None
        audit = DeployerAudit(AuditTrail(AuditLog(bus), tmp_path / "outbox.jsonl", service="deployer"), store)

        async def publish(payload: Payload, event_id: str) -> None:
            await bus.publish(payload, event_id=event_id)
            await audit.published(payload, event_id)

        rollout = RolloutController(
            settings, store, ReadyRuntime(), Routes(), Aliases(),  # type: ignore[arg-type]
            open_store((tmp_path / "artifacts").as_uri(), settings), publish,
        )  # fmt: skip
        stack.push_async_callback(rollout.close)
        for version in (1, 2):
            await rollout.deploy(
                "iris", version, ArtifactRef(uri=f"file:///m/{version}.onnx", sha256=f"{version:064d}")
            )
        app.state.experiments = Experiments(rollout, ExperimentStore(engine), publish)
        app.state.audit = audit
        return rollout

    app = create_app(settings, title="deployer", routers=[experiments_router], startup=startup)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        plan = {"model": "iris", "versions": [1, 2], "metric": "accuracy", "mde": 0.05}
        started = client.post("/api/v1/experiments", json=plan)
        assert started.status_code == 201, started.text
        ident = started.json()["id"]
        stopped = client.post(f"/api/v1/experiments/{ident}/stop", json={"reason": "the data set changed"})
        assert stopped.status_code == 200, stopped.text
    records = asyncio.run(_records(nats_server.url))
    start, stop = records[-2:]
    assert (start.action, start.target, start.after["split"]) == (
        "route_change",
        f"iris/experiments/{ident}",
        [50.0, 50.0],
    )
    assert (stop.action, stop.reason, stop.after["status"]) == (
        "experiment_decision",
        "the data set changed",
        "stopped",
    )
    assert start.actor == stop.actor and start.actor.startswith("admin-")
