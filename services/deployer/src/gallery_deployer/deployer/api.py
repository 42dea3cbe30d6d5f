"""The deployer's REST API: deployments with replicas, weights and health; deploy, promote, roll back, scale.

Everything that changes what serves (deploy, promote, roll back, weights, scale, policies) needs the
admin role; waking a model scaled to zero is part of serving a request, so the gateway's inference
token may do it. Only the leader of the deployers does any of that (see `gallery_common.leader`): a
follower answers it 503 naming the leader and its URL, and answers reads from the shared database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field

from gallery_common.audit import AuditAction
from gallery_common.auth import requires
from gallery_common.contracts.registry import VersionStatus
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ArtifactRef
from gallery_common.leader import require_leader
from gallery_common.settings import Role

from ..gateway.routes import check_model_name
from ..runtime.base import DeploymentStatus
from .audit import DeployerAudit, acting_as
from .controller import Controller
from .policy import DeploymentPolicy
from .records import SERVING, DeploymentRecord, Stage

router = APIRouter(prefix="/api/v1", tags=["deployments"])
ADMIN = [requires(Role.admin)]
# what makes the deployer act: only its leader does it, a follower answers 503 naming the leader
ADMIN_LEADER = [*ADMIN, Depends(require_leader)]


async def get_controller(request: Request) -> Controller:
    return get_resources(request).core_as(Controller)


ControllerDep = Annotated[Controller, Depends(get_controller)]


async def get_audit(request: Request) -> DeployerAudit | None:
    """The deployer's audit recorder; None in an app built without one (route tests), which records nothing."""
    found = getattr(request.app.state, "audit", None)
    return found if isinstance(found, DeployerAudit) else None


AuditDep = Annotated[DeployerAudit | None, Depends(get_audit)]


class ReplicaView(BaseModel):
    name: str
    url: str | None
    ready: bool
    restarts: int
    detail: str


class DeploymentView(BaseModel):
    """A deployment as people see it: the record, the traffic it takes and its replicas' health."""

    id: str
    model: str
    version: int
    variant: str
    stage: str
    traffic_percent: float
    state: str
    desired_replicas: int
    ready_replicas: int
    replicas: list[ReplicaView]
    endpoints: list[str]
    artifact: ArtifactRef
    explainer: ArtifactRef | None = Field(description="what its model servers explain predictions with")
    reason: str | None
    fallback: str | None
    analysis_due_at: datetime | None
    retire_at: datetime | None
    updated_at: datetime


def _view(record: DeploymentRecord, status: DeploymentStatus | None) -> DeploymentView:
    return DeploymentView(
        id=record.id,
        model=record.model,
        version=record.version,
        variant=record.variant,
        stage=record.stage,
        traffic_percent=record.traffic_percent,
        state=status.state.value if status else record.state,
        desired_replicas=status.desired if status else 0,
        ready_replicas=status.ready if status else 0,
        replicas=[ReplicaView(**vars(r)) for r in status.replicas] if status else [],
        endpoints=list(status.endpoints) if status else [],
        artifact=ArtifactRef(uri=record.artifact_uri, sha256=record.artifact_sha256),
        explainer=ArtifactRef.model_validate(record.explainer) if record.explainer else None,
        reason=record.reason,
        fallback=(status.fallback if status else None) or record.fallback,
        analysis_due_at=record.analysis_due_at,
        retire_at=record.retire_at,
        updated_at=record.updated_at,
    )


async def _views(controller: Controller, records: list[DeploymentRecord]) -> list[DeploymentView]:
    views = []
    for record in records:
        status = None
        if record.stage in SERVING:
            try:
                status = await controller.runtime.status(record.id)
            except NotFound:
                status = None
        views.append(_view(record, status))
    return views


@router.get("/deployments", summary="Every deployment that serves (all=true: with retired and failed ones)")
async def list_deployments(controller: ControllerDep, all: bool = False) -> list[DeploymentView]:
    records = await anyio.to_thread.run_sync(controller.store.all, None if all else SERVING)
    return await _views(controller, records)


@router.get("/deployments/{model}", summary="A model's deployments, newest version first")
async def model_deployments(model: str, controller: ControllerDep) -> list[DeploymentView]:
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, None)
    if not records:
        raise NotFound(f"model {model!r} has never been deployed")
    return await _views(controller, records)


class DeployRequest(BaseModel):
    model: str
    version: int = Field(ge=1)
    canary_percent: float | None = Field(default=None, gt=0, lt=100)


@router.post(
    "/deployments",
    status_code=201,
    summary="Deploy a registered version (a canary beside production)",
    dependencies=ADMIN_LEADER,
)
async def deploy(data: DeployRequest, controller: ControllerDep, caller: CallerDep) -> DeploymentView:
    """Only a version the validation gate passed (status `validated`) is deployed; anything else is 409."""
    if controller.registry is None:
        raise Unavailable("the deployer has no registry configured (GALLERY_REGISTRY_URL)")
    registry = controller.registry
    version = await anyio.to_thread.run_sync(registry.get_version, data.model, data.version)
    if version.status != VersionStatus.validated:
        raise Conflict(
            f"{data.model}:{data.version} is {version.status.value}, not validated: only versions the validation "
            "gate passed can be deployed"
        )
    onnx = version.artifact("onnx")
    if onnx is None:
        raise InvalidRequest(f"{data.model}:{data.version} has no onnx artifact in the registry")
    with acting_as(caller.name, "deployed by hand", AuditAction.deployment):
        record = await controller.deploy(
            data.model,
            data.version,
            onnx,
            validation_split=version.artifact("validation_split"),
            explainer=version.artifact("explainer"),
            canary_percent=data.canary_percent,
            reason="deployed by hand",
        )
    return (await _views(controller, [record]))[0]


class Reason(BaseModel):
    reason: str = Field(default="by hand", min_length=1, max_length=2000)
    version: int | None = Field(default=None, ge=1, description="rollback only: the version to take out")


@router.post(
    "/deployments/{model}/promote",
    summary="Give the canary all traffic and the production alias",
    dependencies=ADMIN_LEADER,
)
async def promote(
    model: str, controller: ControllerDep, caller: CallerDep, data: Annotated[Reason | None, Body()] = None
) -> DeploymentView:
    reason = (data or Reason()).reason
    with acting_as(caller.name, reason, AuditAction.promotion):
        record = await controller.promote(model, reason)
    return (await _views(controller, [record]))[0]


@router.post(
    "/deployments/{model}/rollback",
    summary="Take the canary, or else production, out of service",
    dependencies=ADMIN_LEADER,
)
async def rollback(
    model: str, controller: ControllerDep, caller: CallerDep, data: Annotated[Reason | None, Body()] = None
) -> DeploymentView:
    data = data or Reason()
    with acting_as(caller.name, data.reason, AuditAction.rollback):
        record = await controller.rollback(model, data.reason, version=data.version)
    return (await _views(controller, [record]))[0]


class Weights(BaseModel):
    canary_percent: float = Field(gt=0, lt=100)


@router.put("/deployments/{model}/weights", summary="Set the canary's share of traffic", dependencies=ADMIN_LEADER)
async def set_weights(
    model: str, data: Weights, controller: ControllerDep, caller: CallerDep, audit: AuditDep
) -> list[DeploymentView]:
    before = await anyio.to_thread.run_sync(controller.store.for_model, model, [Stage.canary])
    await controller.set_canary_weight(model, data.canary_percent)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, SERVING)
    if audit is None:
        return await _views(controller, records)
    with acting_as(caller.name):
        await audit.record(
            AuditAction.route_change,
            f"{model}/route",
            model=model,
            before={"canary_percent": before[0].traffic_percent if before else None},
            after={"canary_percent": data.canary_percent},
        )
    return await _views(controller, records)


class Scale(BaseModel):
    replicas: int = Field(ge=0, le=64)


@router.post(
    "/deployments/{model}/versions/{version}/scale",
    summary="Set a version's replica count (0 allowed)",
    dependencies=ADMIN_LEADER,
)
async def scale(model: str, version: int, data: Scale, controller: ControllerDep) -> DeploymentView:
    await controller.scale(model, version, data.replicas)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, SERVING)
    record = next((r for r in records if r.version == version), None)
    if record is None:
        raise NotFound(f"model {model!r} does not serve version {version}")
    return (await _views(controller, [record]))[0]


@router.post(
    "/deployments/{model}/wake",
    status_code=204,
    summary="Start a model scaled to zero (the gateway calls it)",
    dependencies=[requires(Role.inference), Depends(require_leader)],
)
async def wake(model: str, controller: ControllerDep) -> None:
    await controller.wake(model)


@router.get("/deployments/{model}/canary", summary="The canary against production over the window so far")
async def canary_analysis(model: str, controller: ControllerDep) -> dict[str, object]:
    verdict = await controller.analyse(model)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, [Stage.canary])
    due = records[0].analysis_due_at if records else None
    return {"model": model, "judged_at": due, **verdict.as_dict()}


@router.get("/policies/{model}", summary="A model's deployment policy, defaults filled in")
async def get_policy(model: str, controller: ControllerDep) -> DeploymentPolicy:
    policy = await anyio.to_thread.run_sync(controller.policies.get, model)
    return policy.resolved(controller.settings)


@router.put("/policies/{model}", summary="Set how a model's next versions are deployed", dependencies=ADMIN)
async def put_policy(
    model: str, policy: DeploymentPolicy, controller: ControllerDep, caller: CallerDep, audit: AuditDep
) -> DeploymentPolicy:
    """Applies to versions deployed from now on: canary share, replicas, resources, GPU, batching."""
    check_model_name(model)
    before = await anyio.to_thread.run_sync(controller.policies.get, model) if audit is not None else None
    await anyio.to_thread.run_sync(controller.policies.put, model, policy)
    if audit is None or before is None:
        return policy.resolved(controller.settings)
    with acting_as(caller.name):
        await audit.record(
            AuditAction.policy_change,
            f"{model}/deployment-policy",
            model=model,
            before=before.model_dump(mode="json", exclude_none=True),
            after=policy.model_dump(mode="json", exclude_none=True),
        )
    return policy.resolved(controller.settings)
