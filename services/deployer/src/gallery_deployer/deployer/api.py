"""The deployer's REST API: deployments with replicas, weights and health; deploy, promote, roll back, scale.

Everything that changes what serves (deploy, promote, roll back, weights, scale, policies) needs the
admin role; waking a model scaled to zero is part of serving a request, so the gateway's inference
token may do it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from gallery_common.auth import requires
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ArtifactRef
from gallery_common.settings import Role

from ..gateway.routes import check_model_name
from ..runtime.base import DeploymentStatus
from .controller import Controller
from .policy import DeploymentPolicy
from .records import SERVING, DeploymentRecord, Stage

CONTROLLER_KEY = "controller"
router = APIRouter(prefix="/api/v1", tags=["deployments"])
ADMIN = [requires(Role.admin)]


def _controller(request: Request) -> Controller:
    controller = request.app.state.resources.extras.get(CONTROLLER_KEY)
    if controller is None:
        raise Unavailable("the deployer is still starting")
    return controller  # type: ignore[no-any-return]


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
async def list_deployments(request: Request, all: bool = False) -> list[DeploymentView]:
    controller = _controller(request)
    records = await anyio.to_thread.run_sync(controller.store.all, None if all else SERVING)
    return await _views(controller, records)


@router.get("/deployments/{model}", summary="A model's deployments, newest version first")
async def model_deployments(model: str, request: Request) -> list[DeploymentView]:
    controller = _controller(request)
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
    dependencies=ADMIN,
)
async def deploy(data: DeployRequest, request: Request) -> DeploymentView:
    """Only a version the validation gate passed (status `validated`) is deployed; anything else is 409."""
    controller = _controller(request)
    if controller.registry is None:
        raise Unavailable("the deployer has no registry configured (GALLERY_REGISTRY_URL)")
    registry = controller.registry
    version = await anyio.to_thread.run_sync(registry.get_version, data.model, data.version)
    status = version.get("status")
    if status != "validated":
        raise Conflict(
            f"{data.model}:{data.version} is {status}, not validated: only versions the validation gate "
            "passed can be deployed"
        )
    artifacts: dict[str, Any] = version.get("artifacts") or {}
    if "onnx" not in artifacts:
        raise InvalidRequest(f"{data.model}:{data.version} has no onnx artifact in the registry")
    split = artifacts.get("validation_split")
    record = await controller.deploy(
        data.model,
        data.version,
        ArtifactRef(uri=artifacts["onnx"]["uri"], sha256=artifacts["onnx"]["sha256"]),
        validation_split=ArtifactRef(uri=split["uri"], sha256=split["sha256"]) if split else None,
        canary_percent=data.canary_percent,
        reason="deployed by hand",
    )
    return (await _views(controller, [record]))[0]


class Reason(BaseModel):
    reason: str = Field(default="by hand", min_length=1, max_length=2000)
    version: int | None = Field(default=None, ge=1, description="rollback only: the version to take out")


@router.post(
    "/deployments/{model}/promote", summary="Give the canary all traffic and the production alias", dependencies=ADMIN
)
async def promote(model: str, request: Request, data: Annotated[Reason | None, Body()] = None) -> DeploymentView:
    controller = _controller(request)
    record = await controller.promote(model, (data or Reason()).reason)
    return (await _views(controller, [record]))[0]


@router.post(
    "/deployments/{model}/rollback",
    summary="Take the canary, or else production, out of service",
    dependencies=ADMIN,
)
async def rollback(model: str, request: Request, data: Annotated[Reason | None, Body()] = None) -> DeploymentView:
    controller = _controller(request)
    data = data or Reason()
    record = await controller.rollback(model, data.reason, version=data.version)
    return (await _views(controller, [record]))[0]


class Weights(BaseModel):
    canary_percent: float = Field(gt=0, lt=100)


@router.put("/deployments/{model}/weights", summary="Set the canary's share of traffic", dependencies=ADMIN)
async def set_weights(model: str, data: Weights, request: Request) -> list[DeploymentView]:
    controller = _controller(request)
    await controller.set_canary_weight(model, data.canary_percent)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, SERVING)
    return await _views(controller, records)


class Scale(BaseModel):
    replicas: int = Field(ge=0, le=64)


@router.post(
    "/deployments/{model}/versions/{version}/scale",
    summary="Set a version's replica count (0 allowed)",
    dependencies=ADMIN,
)
async def scale(model: str, version: int, data: Scale, request: Request) -> DeploymentView:
    controller = _controller(request)
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
    dependencies=[requires(Role.inference)],
)
async def wake(model: str, request: Request) -> None:
    await _controller(request).wake(model)


@router.get("/deployments/{model}/canary", summary="The canary against production over the window so far")
async def canary_analysis(model: str, request: Request) -> dict[str, object]:
    controller = _controller(request)
    verdict = await controller.analyse(model)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, [Stage.canary])
    due = records[0].analysis_due_at if records else None
    return {"model": model, "judged_at": due, **verdict.as_dict()}


@router.get("/policies/{model}", summary="A model's deployment policy, defaults filled in")
async def get_policy(model: str, request: Request) -> DeploymentPolicy:
    controller = _controller(request)
    policy = await anyio.to_thread.run_sync(controller.policies.get, model)
    return policy.resolved(controller.settings)


@router.put("/policies/{model}", summary="Set how a model's next versions are deployed", dependencies=ADMIN)
async def put_policy(model: str, policy: DeploymentPolicy, request: Request) -> DeploymentPolicy:
    """Applies to versions deployed from now on: canary share, replicas, resources, GPU, batching."""
    check_model_name(model)
    controller = _controller(request)
    await anyio.to_thread.run_sync(controller.policies.put, model, policy)
    return policy.resolved(controller.settings)
