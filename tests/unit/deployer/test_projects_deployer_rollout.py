"""Projects in the rollout: a deployment belongs to the project its model.validated names, and so do the
route every gateway follows and the events the deployer publishes about it.

The rollout tests' controller (real store on SQLite, the real consumer's handlers) with a fake runtime,
routes bucket and registry.
"""

from __future__ import annotations

from test_deployer_explainer_handoff import ONNX, controller

from gallery_common.events import ModelDeployed, ModelRolledBack, ModelValidated, Payload, make_event
from gallery_deployer.deployer.consumer import rollout_events
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.gateway.routes import ModelRoute

__all__ = ["controller"]  # the fixture, shared with the explainer hand-off tests


async def test_a_validated_version_deploys_into_its_events_project_with_its_route_and_events(
    controller: Controller,
) -> None:
    seen: list[Payload] = []

    async def publish(payload: Payload, event_id: str) -> None:
        seen.append(payload)

    controller.publish = publish
    events = rollout_events(controller)
    for version in (1, 2):
        validated = ModelValidated(project="alpha", model="m", version=version, artifacts={"onnx": ONNX[version]})
        await events.dispatch(make_event(validated, "/tests/gate"))

    records = controller.store.for_model("m")
    assert [(r.version, r.stage, r.project) for r in records] == [(2, "canary", "alpha"), (1, "production", "alpha")]
    route = controller.routes.routes["m"]  # type: ignore[attr-defined]
    assert route.project == "alpha"
    deployed = [p for p in seen if isinstance(p, ModelDeployed)]
    assert [(p.version, p.project) for p in deployed] == [(1, "alpha"), (2, "alpha")]

    await controller.rollback("m", "by hand")
    rolled_back = [p for p in seen if isinstance(p, ModelRolledBack)]
    assert [(p.version, p.project) for p in rolled_back] == [(2, "alpha")]
    assert controller.routes.routes["m"].project == "alpha"  # type: ignore[attr-defined]

    # scaled to zero, the sleeping route keeps the project the gateway checks callers against
    await controller.scale("m", 1, 0)
    asleep = controller.routes.routes["m"]  # type: ignore[attr-defined]
    assert asleep.policy.asleep and asleep.project == "alpha"


async def test_a_validated_version_without_a_project_is_in_default(controller: Controller) -> None:
    validated = ModelValidated(model="m", version=1, artifacts={"onnx": ONNX[1]})
    await rollout_events(controller).dispatch(make_event(validated, "/tests/gate"))

    assert [r.project for r in controller.store.for_model("m")] == ["default"]
    assert controller.routes.routes["m"].project == "default"  # type: ignore[attr-defined]


def test_a_route_written_before_projects_is_in_default() -> None:
    route = ModelRoute.model_validate_json('{"backends": [{"id": "b", "url": "http://10.0.0.1:8500"}]}')
    assert route.project == "default"
