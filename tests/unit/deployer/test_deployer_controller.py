"""The rollout state machine against a fake runtime and gateway: stages, weights, aliases and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from gallery_common.artifacts import open_store
from gallery_common.db import as_utc, make_engine
from gallery_common.errors import Conflict, NotFound
from gallery_common.events import ArtifactRef, ModelDegraded, ModelOptimized, Payload, VariantResult
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.policy import DeploymentPolicy
from gallery_deployer.deployer.records import DeploymentStore, Stage
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.experiments.controller import ExperimentPlan, Experiments
from gallery_deployer.experiments.records import ExperimentStore
from gallery_deployer.gateway.routes import ModelRoute
from gallery_deployer.runtime.base import DeploymentStatus, RuntimeState, ServerSpec


class FakeRuntime:
    """Replicas that are ready at once, unless the artifact's sha256 starts with 'bad'."""

    name = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, ServerSpec] = {}
        self.deleted: list[str] = []

    def _status(self, spec: ServerSpec) -> DeploymentStatus:
        if spec.artifact_sha256.startswith("bad"):
            return DeploymentStatus(spec.deployment_id, RuntimeState.failed, spec.replicas, 0, detail="exit code 1")
        if spec.replicas == 0:
            return DeploymentStatus(spec.deployment_id, RuntimeState.scaled_to_zero, 0, 0)
        urls = tuple(f"http://{spec.deployment_id}-{i}:8500" for i in range(spec.replicas))
        # the first replica serves OIP over gRPC too, the others REST alone
        grpc = {urls[0]: f"{spec.deployment_id}-0:8501"}
        return DeploymentStatus(
            spec.deployment_id, RuntimeState.ready, spec.replicas, spec.replicas, urls, grpc_endpoints=grpc
        )

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        self.specs[spec.deployment_id] = spec
        return self._status(spec)

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        return await self.status(deployment_id)

    async def status(self, deployment_id: str) -> DeploymentStatus:
        if deployment_id not in self.specs:
            raise NotFound(deployment_id)
        return self._status(self.specs[deployment_id])

    async def scale(self, deployment_id: str, replicas: int) -> DeploymentStatus:
        spec = self.specs[deployment_id]
        self.specs[deployment_id] = ServerSpec(**{**vars(spec), "replicas": replicas})
        return await self.status(deployment_id)

    async def delete(self, deployment_id: str) -> None:
        self.specs.pop(deployment_id, None)
        self.deleted.append(deployment_id)

    async def close(self) -> None:
        pass


class FakeGateway:
    def __init__(self) -> None:
        self.routes: dict[str, ModelRoute] = {}

    async def put(self, model: str, route: ModelRoute) -> None:
        self.routes[model] = route

    async def delete(self, model: str) -> None:
        self.routes.pop(model, None)

    async def close(self) -> None:
        pass


class FakeRegistry:
    def __init__(self) -> None:
        self.moves: list[tuple[str, str, int, str | None]] = []
        self.tasks: dict[tuple[str, int], str] = {}  # what get_version says a version is (else a classifier)

    def get_version(self, model: str, version: int) -> SimpleNamespace:
        onnx = artifact(version)  # the version's own file, as the gate validated it
        return SimpleNamespace(
            task=self.tasks.get((model, version), "classification"),
            artifact=lambda role: onnx if role == "onnx" else None,
        )

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> dict[str, object]:
        self.moves.append((model, alias, version, reason))
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    settings = DeployerSettings(home=tmp_path, canary_percent=10, drain_s=0, canary_window_s=3600)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    events: list[tuple[Payload, str]] = []

    async def publish(payload: Payload, event_id: str) -> None:
        events.append((payload, event_id))

    built = Controller(
        settings,
        DeploymentStore(engine),
        FakeRuntime(),  # type: ignore[arg-type]
        FakeGateway(),  # type: ignore[arg-type]
        FakeRegistry(),  # type: ignore[arg-type]
        open_store((tmp_path / "artifacts").as_uri(), settings),
        publish,
    )
    built.events = events  # type: ignore[attr-defined]
    yield built
    await built.close()


def artifact(version: int, prefix: str = "") -> ArtifactRef:
    return ArtifactRef(uri=f"file:///models/m/{version}/model.onnx", sha256=(prefix + f"{version:064d}")[:64])


def weights(controller: Controller, model: str = "m") -> dict[str, float]:
    route = controller.routes.routes[model]  # type: ignore[attr-defined]
    return {b.id: b.weight for b in route.backends}


def announced(controller: Controller) -> list[str]:
    return [event_id for _, event_id in controller.events]  # type: ignore[attr-defined]


def changed_ms(controller: Controller, deployment: str) -> int:
    """When the deployment's record last changed, in epoch milliseconds (as a variant change's event id has it)."""
    record = controller.store.get(deployment)
    assert record is not None
    return int(as_utc(record.updated_at).timestamp() * 1000)


async def test_the_first_version_takes_all_traffic_and_the_production_alias(controller: Controller) -> None:
    record = await controller.deploy("m", 1, artifact(1))

    assert (record.stage, record.traffic_percent) == (Stage.production, 100.0)
    assert weights(controller) == {"m-v1-0": 100.0}
    assert controller.registry.moves == [("m", "production", 1, "first version deployed (model.validated)")]  # type: ignore[union-attr]
    assert announced(controller) == ["deployed:m:1:fp32:production"]


async def test_a_route_gives_each_backend_its_grpc_address_where_it_has_one(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.scale("m", 1, 2)

    route = controller.routes.routes["m"]  # type: ignore[attr-defined]
    assert {b.url: b.grpc for b in route.backends} == {"http://m-v1-0:8500": "m-v1-0:8501", "http://m-v1-1:8500": None}


async def test_a_new_version_is_a_canary_then_promotion_moves_traffic_alias_and_drains_the_old(
    controller: Controller,
) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))
    assert weights(controller) == {"m-v1-0": 90.0, "m-v2-0": 10.0}
    assert controller.routes.routes["m"].backends[1].role == "canary"  # type: ignore[attr-defined]

    await controller.promote("m", "canary analysis passed")

    assert weights(controller) == {"m-v2-0": 100.0, "m-v1-0": 0.0}  # the old version: a fallback link
    assert controller.registry.moves[-1] == ("m", "production", 2, "promoted: canary analysis passed")  # type: ignore[union-attr]
    await controller.retire_drained()  # drain_s=0
    assert weights(controller) == {"m-v2-0": 100.0}
    assert controller.runtime.deleted == ["m-v1"]  # type: ignore[attr-defined]
    assert announced(controller)[-1] == "deployed:m:2:fp32:production"


async def test_rolling_back_a_canary_restores_production_and_announces_it(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))

    good = await controller.rollback("m", "canary analysis failed: error rate")

    assert good.version == 1 and weights(controller) == {"m-v1-0": 100.0}
    assert controller.runtime.deleted == ["m-v2"]  # type: ignore[attr-defined]
    payload, event_id = controller.events[-1]  # type: ignore[attr-defined]
    assert event_id == "rolled_back:m:2"
    assert (payload.version, payload.to_version, payload.reason) == (2, 1, "canary analysis failed: error rate")
    assert [m[2] for m in controller.registry.moves] == [1]  # type: ignore[union-attr]  # the alias never left v1


async def test_a_degraded_production_version_rolls_back_to_the_retired_one(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))
    await controller.promote("m", "passed")
    await controller.retire_drained()

    good = await controller.rollback("m", "drift: psi 0.4", version=2)

    assert (good.version, good.stage) == (1, Stage.production)
    assert weights(controller) == {"m-v1-0": 100.0}  # started again before it took traffic
    assert controller.registry.moves[-1] == ("m", "production", 1, "rolled back from 2: drift: psi 0.4")  # type: ignore[union-attr]
    again = await controller.rollback("m", "again", version=2)  # a redelivered degradation changes nothing
    assert again.version == 1 and weights(controller) == {"m-v1-0": 100.0}
    assert {event_id for event_id in announced(controller) if event_id.startswith("rolled_back")} == {"rolled_back:m:2"}


async def test_rollback_without_an_earlier_version_is_refused(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    with pytest.raises(Conflict, match="no earlier good version"):
        await controller.rollback("m", "slo: p99")


async def test_a_version_that_never_becomes_ready_fails_and_traffic_stays(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))

    record = await controller.deploy("m", 2, artifact(2, prefix="bad"))

    assert (record.stage, record.reason) == (Stage.failed, "exit code 1")
    assert weights(controller) == {"m-v1-0": 100.0}
    payload, event_id = controller.events[-1]  # type: ignore[attr-defined]
    assert event_id == "deployment_failed:m:2:fp32" and payload.reason == "exit code 1"


async def test_deploying_the_same_version_again_changes_nothing(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    before = announced(controller)
    await controller.deploy("m", 1, artifact(1))
    assert announced(controller) == before


async def test_an_optimized_variant_replaces_the_artifact_in_place(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    int8 = ArtifactRef(uri="file:///models/m/1/int8.onnx", sha256="f" * 64)

    record = await controller.roll_variant("m", 1, "int8_dynamic", int8)

    assert record is not None and record.variant == "int8_dynamic"
    assert controller.runtime.specs["m-v1"].artifact_sha256 == "f" * 64  # type: ignore[attr-defined]
    assert controller.routes.routes["m"].backends[0].variant == "int8_dynamic"  # type: ignore[attr-defined]
    # a changed file is announced with when it changed: serving a variant again is another event
    assert announced(controller)[-1] == f"deployed:m:1:int8_dynamic:production:{changed_ms(controller, 'm-v1')}"
    assert await controller.roll_variant("m", 9, "int8_dynamic", int8) is None  # a version not serving


async def test_a_serving_version_serves_another_of_its_variants_by_hand(controller: Controller) -> None:
    """Back to FP32 when the optimizer's variant answers worse online, and to a built variant again by name;
    a variant that was not built, or failed, is not offered, and one that never becomes ready changes nothing."""
    await controller.deploy("m", 1, artifact(1))
    int8 = ArtifactRef(uri="file:///models/m/1/int8.onnx", sha256="f" * 64)
    broken = ArtifactRef(uri="file:///models/m/1/pruned.onnx", sha256="bad" + "0" * 61)
    optimized = ModelOptimized(
        model="m",
        version=1,
        recommended="int8_dynamic",
        recommended_artifact=int8,
        variants=[
            VariantResult(name="fp32", artifact=artifact(1), metrics={"accuracy": 0.96}),
            VariantResult(name="int8_dynamic", artifact=int8, metrics={"accuracy": 0.95}),
            VariantResult(name="pruned_50", artifact=broken, metrics={"accuracy": 0.94}),
            VariantResult(name="fp16", error="needs a GPU"),
        ],
    )
    await controller.remember_variants(optimized)
    await controller.roll_variant("m", 1, "int8_dynamic", int8, "recommended")  # as model.optimized rolls it in

    fp32 = await controller.variant_artifact("m", 1, "fp32")
    assert fp32 == artifact(1), "FP32 is the registry's own file of the version"
    record = await controller.serve_variant("m", 1, "fp32", fp32, "int8 answers worse online")
    assert (record.variant, record.reason) == ("fp32", "int8 answers worse online")
    assert controller.runtime.specs["m-v1"].artifact_sha256 == artifact(1).sha256  # type: ignore[attr-defined]
    assert controller.routes.routes["m"].backends[0].variant == "fp32"  # type: ignore[attr-defined]
    fp32_again = f"deployed:m:1:fp32:production:{changed_ms(controller, 'm-v1')}"
    assert announced(controller)[-1] == fp32_again and fp32_again != announced(controller)[0]
    assert await controller.serve_variant("m", 1, "fp32", fp32, "again") == record  # already served: no change
    assert announced(controller)[-1] == fp32_again and len(announced(controller)) == 3

    again = await controller.serve_variant(
        "m", 1, "int8_dynamic", await controller.variant_artifact("m", 1, "int8_dynamic"), "ok"
    )
    assert again.variant == "int8_dynamic" and controller.runtime.specs["m-v1"].artifact_sha256 == "f" * 64  # type: ignore[attr-defined]

    with pytest.raises(NotFound, match=r"m:1 has no variant 'fp16'; it has fp32, int8_dynamic, pruned_50"):
        await controller.variant_artifact("m", 1, "fp16")
    with pytest.raises(Conflict, match="variant pruned_50 of m:1 did not become ready; it keeps serving int8_dynamic"):
        await controller.serve_variant("m", 1, "pruned_50", broken, "smaller")
    assert controller.store.get("m-v1").variant == "int8_dynamic"  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="m:2 does not serve"):
        await controller.serve_variant("m", 2, "fp32", artifact(2), "not deployed")

    # a newer model.optimized of the version replaces what it built
    await controller.remember_variants(optimized.model_copy(update={"variants": optimized.variants[:2]}))
    assert [v.name for v in controller.store.variants("m", 1)] == ["fp32", "int8_dynamic"]


async def test_canary_weights_move_by_hand(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2), canary_percent=25)
    assert weights(controller) == {"m-v1-0": 75.0, "m-v2-0": 25.0}

    await controller.set_canary_weight("m", 50)

    assert weights(controller) == {"m-v1-0": 50.0, "m-v2-0": 50.0}


async def test_scaling_to_zero_puts_the_route_to_sleep_and_wake_routes_again(controller: Controller) -> None:
    await controller.deploy("m", 1, artifact(1))

    await controller.scale("m", 1, 0)
    route = controller.routes.routes["m"]  # type: ignore[attr-defined]
    assert route.policy.asleep and route.policy.wake_url.endswith("/api/v1/deployments/m/wake")

    await controller.wake("m")
    assert weights(controller) == {"m-v1-0": 100.0}

    # a model scaled to zero changes its file asleep: the next request wakes it with that file
    int8 = ArtifactRef(uri="file:///models/m/1/int8.onnx", sha256="f" * 64)
    record = await controller.roll_variant("m", 1, "int8_dynamic", int8, "recommended")
    assert record is not None and record.variant == "int8_dynamic" and record.state == "scaled_to_zero"
    assert controller.routes.routes["m"].policy.asleep  # type: ignore[attr-defined]
    await controller.wake("m")
    assert controller.runtime.specs["m-v1"].artifact_sha256 == "f" * 64  # type: ignore[attr-defined]
    assert weights(controller) == {"m-v1-0": 100.0}


async def test_a_models_policy_sets_the_canary_share_replicas_and_gpu(controller: Controller) -> None:
    from gallery_deployer.deployer.policy import DeploymentPolicy

    controller.policies.put("m", DeploymentPolicy(canary_percent=30, replicas=2, gpu=True, gpu_memory_mb=2000))
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))

    assert weights(controller) == {"m-v1-0": 35.0, "m-v1-1": 35.0, "m-v2-0": 15.0, "m-v2-1": 15.0}
    spec = controller.runtime.specs["m-v2"]  # type: ignore[attr-defined]
    assert (spec.replicas, spec.gpu, spec.gpu_memory_mb) == (2, True, 2000)


async def test_recording_outcomes_is_a_policy_the_route_takes_at_once_and_keeps(controller: Controller) -> None:
    from gallery_deployer.deployer.policy import DeploymentPolicy

    await controller.deploy("m", 1, artifact(1))
    routes = controller.routes.routes  # type: ignore[attr-defined]
    assert not routes["m"].policy.record_outcomes  # answers are kept for feedback only when asked

    controller.policies.put("m", DeploymentPolicy(record_outcomes=True))
    await controller.reroute("m")
    assert routes["m"].policy.record_outcomes
    await controller.deploy("m", 2, artifact(2))  # a new version's route keeps recording
    assert routes["m"].policy.record_outcomes and len(routes["m"].backends) == 2

    controller.policies.put("other", DeploymentPolicy(record_outcomes=True))
    await controller.reroute("other")  # nothing serves it: no route is written
    assert "other" not in routes


async def test_a_rollback_cut_short_after_traffic_moved_is_finished_by_the_redelivery(controller: Controller) -> None:
    from gallery_common.errors import Unavailable

    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2))
    await controller.promote("m", "passed")
    registry = controller.registry
    calls = registry.moves  # type: ignore[union-attr]

    def unreachable(*_: object) -> dict[str, object]:
        raise Unavailable("registry unreachable")

    registry.set_alias = unreachable  # type: ignore[union-attr,method-assign]
    with pytest.raises(Unavailable):
        await controller.rollback("m", "drift: " + "feature PSI 0.9; " * 200, version=2)
    assert weights(controller) == {"m-v1-0": 100.0}  # traffic already moved
    assert "rolled_back:m:2" not in announced(controller)

    del registry.set_alias  # type: ignore[union-attr]
    good = await controller.rollback("m", "drift: again", version=2)  # the redelivered model.degraded

    assert good.version == 1
    assert calls[-1][:3] == ("m", "production", 1)
    assert len(calls[-1][3]) <= 400 and calls[-1][3].endswith("…")  # the long reason was cut for the registry
    assert announced(controller)[-1] == "rolled_back:m:2"


async def test_a_validated_version_goes_to_production_first_then_each_newer_one_replaces_the_canary(
    controller: Controller,
) -> None:
    first = await controller.deploy_validated("m", 1, artifact(1))
    assert first is not None and (first.stage, first.reason) == (Stage.production, "model.validated")

    await controller.deploy_validated("m", 2, artifact(2))
    third = await controller.deploy_validated("m", 3, artifact(3))

    assert third is not None and third.stage == Stage.canary
    assert weights(controller) == {"m-v1-0": 90.0, "m-v3-0": 10.0}
    payload, event_id = next((p, e) for p, e in controller.events if e.startswith("rolled_back"))  # type: ignore[attr-defined]
    assert (event_id, payload.reason) == ("rolled_back:m:2", "superseded by version 3")


async def test_a_validated_version_that_is_not_newer_or_was_rolled_back_changes_nothing(controller: Controller) -> None:
    await controller.deploy_validated("m", 1, artifact(1))
    await controller.deploy_validated("m", 3, artifact(3))
    await controller.rollback("m", "canary analysis failed: error rate")
    before = announced(controller)

    assert await controller.deploy_validated("m", 3, artifact(3)) is None  # only a person brings it back
    assert await controller.deploy_validated("m", 1, artifact(1)) is None  # already serving
    assert announced(controller) == before and weights(controller) == {"m-v1-0": 100.0}


async def test_a_degraded_version_that_no_longer_serves_is_left_alone(controller: Controller) -> None:
    await controller.deploy_validated("m", 1, artifact(1))
    await controller.deploy_validated("m", 2, artifact(2))

    good = await controller.roll_back_degraded("m", 2, "slo: p99 250 ms")
    assert good is not None and good.version == 1
    assert await controller.roll_back_degraded("m", 7, "drift: psi 0.4") is None  # never served
    assert await controller.roll_back_degraded("m", 1, "slo: p99 250 ms") is None  # nothing to fall back to
    assert weights(controller) == {"m-v1-0": 100.0}


def variant_breach(version: int, variant: str) -> ModelDegraded:
    return ModelDegraded(
        model="m", version=version, kind="quality", variant=variant, reason="online accuracy 70.0% is 25.0 points below"
    )


async def test_an_optimized_variants_quality_breach_serves_fp32_and_fp32s_own_breach_rolls_back(
    controller: Controller,
) -> None:
    """INT8 answering worse than the optimizer measured: the version stays and serves its FP32 model (the file
    the registry confirms); a redelivery changes nothing; FP32 breaking the SLO too rolls the version back."""
    confirmed: list[tuple[str, int, ArtifactRef]] = []

    async def confirm(model: str, version: int, file: ArtifactRef) -> None:
        confirmed.append((model, version, file))

    int8 = ArtifactRef(uri="file:///models/m/2/int8.onnx", sha256="f" * 64)
    optimized = ModelOptimized(
        model="m", version=2, recommended="int8_dynamic", recommended_artifact=int8,
        variants=[VariantResult(name="int8_dynamic", artifact=int8, metrics={"accuracy": 0.95})],
    )  # fmt: skip
    await controller.deploy_validated("m", 1, artifact(1))
    await controller.deploy_validated("m", 2, artifact(2))
    await controller.remember_variants(optimized)
    assert not await controller.withdrawn("m", 2, "int8_dynamic")
    await controller.roll_variant("m", 2, "int8_dynamic", int8, "recommended")

    record = await controller.answer_degraded(variant_breach(2, "int8_dynamic"), confirm)
    assert record is not None and (record.version, record.stage, record.variant) == (2, Stage.canary, "fp32")
    assert record.reason == (
        "FP32 instead of int8_dynamic, whose answers broke the quality SLO: online accuracy 70.0% is 25.0 points below"
    )
    assert confirmed == [("m", 2, artifact(2))]
    assert controller.runtime.specs["m-v2"].artifact_sha256 == artifact(2).sha256  # type: ignore[attr-defined]
    assert [b.variant for b in controller.routes.routes["m"].backends] == ["fp32", "fp32"]  # type: ignore[attr-defined]
    before = announced(controller)
    assert not [e for e in before if e.startswith("rolled_back")]

    again = await controller.answer_degraded(variant_breach(2, "int8_dynamic"), confirm)  # INT8 no longer serves
    assert again is not None and again.variant == "fp32" and announced(controller) == before

    # INT8 is withdrawn: a later model.optimized of v2 keeps it out (the set it builds replaces the old one), a
    # person may serve it by hand, which ends the withdrawal
    await controller.remember_variants(optimized)
    assert await controller.withdrawn("m", 2, "int8_dynamic")
    [kept] = controller.store.variants("m", 2)
    assert kept.withdrawn == "quality: online accuracy 70.0% is 25.0 points below"
    assert not await controller.withdrawn("m", 2, "fp32") and not await controller.withdrawn("m", 1, "int8_dynamic")
    await controller.serve_variant("m", 2, "int8_dynamic", int8, "the labels were wrong")
    assert not await controller.withdrawn("m", 2, "int8_dynamic")
    await controller.answer_degraded(variant_breach(2, "int8_dynamic"), confirm)  # and breaks the SLO again
    assert controller.store.get("m-v2").variant == "fp32"  # type: ignore[union-attr]

    back = await controller.answer_degraded(variant_breach(2, ""), confirm)  # the version's own model breaks it
    assert back is not None and (back.version, back.stage) == (1, Stage.production)
    assert controller.store.get("m-v2").stage == Stage.rolled_back  # type: ignore[union-attr]


async def test_a_policy_of_roll_back_or_an_fp32_that_cannot_serve_rolls_the_version_back(
    controller: Controller,
) -> None:
    async def confirm(model: str, version: int, file: ArtifactRef) -> None:
        pass

    async def refused(model: str, version: int, file: ArtifactRef) -> None:
        raise NotFound(f"the registry holds no {file.uri} for {model}:{version}")

    int8 = ArtifactRef(uri="file:///models/m/3/int8.onnx", sha256="f" * 64)
    await controller.deploy_validated("m", 1, artifact(1))
    for version in (2, 3):
        await controller.deploy_validated("m", version, artifact(version))
        await controller.promote("m", "passed")
    await controller.roll_variant("m", 3, "int8_dynamic", int8, "recommended")
    controller.policies.put("m", DeploymentPolicy(on_variant_breach="roll_back"))

    back = await controller.answer_degraded(variant_breach(3, "int8_dynamic"), confirm)
    assert back is not None and back.version == 2
    rolled = controller.store.get("m-v3")
    assert rolled is not None and (rolled.stage, rolled.variant) == (Stage.rolled_back, "int8_dynamic")

    controller.policies.put("m", DeploymentPolicy())
    await controller.roll_variant("m", 2, "int8_dynamic", int8, "recommended")
    back = await controller.answer_degraded(variant_breach(2, "int8_dynamic"), refused)
    assert back is not None and back.version == 1
    assert controller.store.get("m-v2").reason == (  # type: ignore[union-attr]
        "quality: online accuracy 70.0% is 25.0 points below; FP32 could not serve instead: the registry holds no "
        "file:///models/m/2/model.onnx for m:2"
    )


async def test_a_version_validated_during_an_experiment_is_held_until_it_ends(controller: Controller) -> None:
    """A new canary would replace one of the experiment's arms: the version waits (the newest one, with the
    variant the optimizer chose for it meanwhile) and is rolled out when the experiment ends."""
    await controller.deploy_validated("m", 1, artifact(1))
    await controller.deploy_validated("m", 2, artifact(2))
    experiments = Experiments(controller, ExperimentStore(controller.store.engine), controller.publish)
    started = await experiments.start(ExperimentPlan("m", [1, 2], [50.0, 50.0], "accuracy", mde=0.05))
    arms = weights(controller)

    held = await controller.deploy_validated("m", 3, artifact(3))
    assert held is not None and held.stage == Stage.held
    assert weights(controller) == arms and "m-v3" not in controller.runtime.specs  # type: ignore[attr-defined]
    int8 = ArtifactRef(uri="file:///models/m/3/model-int8.onnx", sha256="b" * 64)
    await controller.roll_variant("m", 3, "int8_dynamic", int8, "recommended")
    newer = await controller.deploy_validated("m", 4, artifact(4))
    assert newer is not None and newer.stage == Stage.held
    assert controller.store.get("m-v3").stage == Stage.rolled_back  # type: ignore[union-attr]
    await controller.roll_variant("m", 4, "int8_dynamic", int8, "recommended")

    await experiments.stop(started.id, "enough")

    released = controller.store.get("m-v4")
    assert released is not None and (released.stage, released.variant) == (Stage.canary, "int8_dynamic")
    assert controller.runtime.specs["m-v4"].artifact_sha256 == "b" * 64  # type: ignore[attr-defined]
    assert weights(controller) == {"m-v1-0": 90.0, "m-v4-0": 10.0}  # v2, the old canary, superseded
    assert controller.store.get("m-v2").stage == Stage.rolled_back  # type: ignore[union-attr]
