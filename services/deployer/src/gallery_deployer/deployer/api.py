"""The deployer's REST API: deployments with replicas, weights and health; deploy, promote, roll back, scale,
serve another variant of a version.

Everything that changes what serves (deploy, promote, roll back, weights, scale, variants, policies) needs the
admin role; waking a model scaled to zero is part of serving a request, so the gateway's inference
token may do it. Only the leader of the deployers does any of that (see `gallery_common.leader`): a
follower answers it 503 naming the leader and its URL, and answers reads from the shared database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from gallery_common.audit import AuditAction
from gallery_common.auth import Caller, requires
from gallery_common.consumer import TransientError
from gallery_common.contracts.registry import VersionStatus
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import FP32_VARIANT, ArtifactRef
from gallery_common.leader import require_leader
from gallery_common.projects import DEFAULT_PROJECT, ProjectDirectory, authorize_in, role_in, visible_projects
from gallery_common.settings import Role

from ..gateway.routes import check_model_name
from ..runtime.base import DeploymentStatus
from .audit import DeployerAudit, acting_as
from .controller import Controller
from .policy import DeploymentPolicy
from .provenance import Provenance, Refused
from .records import SERVING, DeploymentRecord, Stage, VariantRecord

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


def get_directory(request: Request) -> ProjectDirectory:
    """This process's projects and their members (followed from the projects bucket)."""
    directory: ProjectDirectory = request.app.state.settings.project_directory()
    return directory


DirectoryDep = Annotated[ProjectDirectory, Depends(get_directory)]


def never_deployed(model: str) -> NotFound:
    """The answer for a model without deployments, and for one in a project the caller holds no role in."""
    return NotFound(f"model {model!r} has never been deployed")


async def check_deployed(
    controller: Controller, caller: Caller, directory: ProjectDirectory, model: str, needed: Role
) -> str:
    """The project of a deployed model once `caller` holds `needed` there. A model never deployed and one
    in a project where the caller holds no role are the same 404; a lower role is a 403 naming both."""
    project = await anyio.to_thread.run_sync(controller.store.project_of, model)
    if project is None or role_in(caller, project, directory) is None:
        raise never_deployed(model)
    authorize_in(caller, project, needed, directory)
    return project


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
    project: str = Field(description="the model's project")
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
        project=record.project,
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
async def list_deployments(
    controller: ControllerDep, caller: CallerDep, directory: DirectoryDep, all: bool = False, project: str | None = None
) -> list[DeploymentView]:
    """In the projects the caller holds a role in, or only in `project` (404 when it cannot see it)."""
    if project is not None:
        authorize_in(caller, project, Role.reader, directory)
        projects = [project]
    else:
        projects = visible_projects(caller, directory)
    records = await anyio.to_thread.run_sync(controller.store.all, None if all else SERVING, projects)
    return await _views(controller, records)


@router.get("/deployments/{model}", summary="A model's deployments, newest version first")
async def model_deployments(
    model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> list[DeploymentView]:
    await check_deployed(controller, caller, directory, model, Role.reader)
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
async def deploy(
    data: DeployRequest, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> DeploymentView:
    """Only a version the validation gate passed (status `validated`) is deployed; anything else is 409.
    Needs admin in the model's project (the registry's); a model in a project the caller holds no role
    in answers as an unknown one."""
    if controller.registry is None:
        raise Unavailable("the deployer has no registry configured (GALLERY_REGISTRY_URL)")
    registry = controller.registry
    # an unknown model or version and one in a project the caller holds no role in: the same answer
    unknown = NotFound(f"version {data.model}:{data.version} not found in the registry")
    try:
        version = await anyio.to_thread.run_sync(registry.get_version, data.model, data.version)
    except NotFound:
        raise unknown from None
    if role_in(caller, version.project, directory) is None:
        raise unknown
    authorize_in(caller, version.project, Role.admin, directory)
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
            project=version.project,
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
    model: str,
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
    data: Annotated[Reason | None, Body()] = None,
) -> DeploymentView:
    await check_deployed(controller, caller, directory, model, Role.admin)
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
    model: str,
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
    data: Annotated[Reason | None, Body()] = None,
) -> DeploymentView:
    await check_deployed(controller, caller, directory, model, Role.admin)
    data = data or Reason()
    with acting_as(caller.name, data.reason, AuditAction.rollback):
        record = await controller.rollback(model, data.reason, version=data.version)
    return (await _views(controller, [record]))[0]


class Weights(BaseModel):
    canary_percent: float = Field(gt=0, lt=100)


@router.put("/deployments/{model}/weights", summary="Set the canary's share of traffic", dependencies=ADMIN_LEADER)
async def set_weights(
    model: str, data: Weights, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep, audit: AuditDep
) -> list[DeploymentView]:
    await check_deployed(controller, caller, directory, model, Role.admin)
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
async def scale(
    model: str,
    version: int,
    data: Scale,
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
    audit: AuditDep,
) -> DeploymentView:
    await check_deployed(controller, caller, directory, model, Role.admin)
    before = await anyio.to_thread.run_sync(controller.store.for_model, model, SERVING)
    replicas_before = next((r.replicas for r in before if r.version == version), None)
    await controller.scale(model, version, data.replicas)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, SERVING)
    record = next((r for r in records if r.version == version), None)
    if record is None:
        raise NotFound(f"model {model!r} does not serve version {version}")
    if audit is not None and replicas_before != data.replicas:
        with acting_as(caller.name):
            await audit.record(
                AuditAction.scaling,
                f"{model}/{version}",
                model=model,
                version=version,
                before={"replicas": replicas_before},
                after={"replicas": data.replicas},
            )
    return (await _views(controller, [record]))[0]


@router.post(
    "/deployments/{model}/wake",
    status_code=204,
    summary="Start a model scaled to zero (the gateway calls it)",
    dependencies=[requires(Role.inference), Depends(require_leader)],
)
async def wake(model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep) -> None:
    await check_deployed(controller, caller, directory, model, Role.inference)
    await controller.wake(model)


class VariantView(BaseModel):
    """A variant a version can serve: FP32 (its own ONNX) or one its `model.optimized` built."""

    version: int
    variant: str
    serving: bool = Field(description="the variant the version serves now")
    recommended: bool = Field(description="the optimizer's generic recommendation (the deployer picks per hardware)")
    cpu_target: str | None = Field(description="the CPUs the variant is built for, when not any")
    metrics: dict[str, float] = Field(description="what the optimizer measured: accuracy or rmse, latency, size")
    artifact: ArtifactRef | None = Field(description="its file; null for FP32 (the registry's onnx artifact)")
    withdrawn: str | None = Field(
        default=None,
        description="why the deployer took it out of service (its answers broke the quality SLO); a later "
        "model.optimized does not roll it in again, a person may serve it by hand",
    )


def _variant_views(record: DeploymentRecord, built: list[VariantRecord]) -> list[VariantView]:
    """FP32 first (the optimizer's figures of it when it measured them), then each built variant by name."""
    measured = {v.name: v for v in built}
    fp32 = measured.pop(FP32_VARIANT, None)
    views = [
        VariantView(
            version=record.version,
            variant=FP32_VARIANT,
            serving=record.variant == FP32_VARIANT,
            recommended=fp32.recommended if fp32 else False,
            cpu_target=None,
            metrics=dict(fp32.metrics) if fp32 else {},
            artifact=None,
        )
    ]
    for name, v in sorted(measured.items()):
        views.append(
            VariantView(
                version=record.version,
                variant=name,
                serving=record.variant == name,
                recommended=v.recommended,
                cpu_target=v.cpu_target,
                metrics=dict(v.metrics),
                artifact=ArtifactRef.model_validate(v.artifact),
                withdrawn=v.withdrawn,
            )
        )
    return views


@router.get("/deployments/{model}/variants", summary="The variants each serving version can serve")
async def variants(
    model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> list[VariantView]:
    """Per serving (or held) version, newest first: FP32 and every variant its `model.optimized` built."""
    await check_deployed(controller, caller, directory, model, Role.reader)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, [*SERVING, Stage.held])
    views = []
    for record in records:
        built = await anyio.to_thread.run_sync(controller.store.variants, model, record.version)
        views.extend(_variant_views(record, built))
    return views


class VariantChoice(BaseModel):
    version: int = Field(ge=1)
    variant: str = Field(min_length=1, max_length=128, description="fp32, or a variant the version's optimizer built")
    reason: str = Field(default="chosen by hand", min_length=1, max_length=2000)


@router.put(
    "/deployments/{model}/variant",
    summary="Serve another variant of a version (fp32, or one its optimizer built)",
    dependencies=ADMIN_LEADER,
)
async def serve_variant(
    model: str, data: VariantChoice, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> DeploymentView:
    """Replace the file a serving version runs by a rolling update, as the optimizer's variant rolled in: back
    to FP32 when a variant answers worse online than it measured, or to another built variant. Only an
    artifact the registry holds for the validated version is served (409 otherwise); an unknown variant is
    404 naming those there are."""
    await check_deployed(controller, caller, directory, model, Role.admin)
    artifact = await controller.variant_artifact(model, data.version, data.variant)
    try:
        await Provenance(controller.registry).confirm_variant(model, data.version, artifact)
    except Refused as exc:
        raise Conflict(str(exc)) from None
    except TransientError as exc:
        raise Unavailable(str(exc)) from None
    reason = f"variant {data.variant} chosen by {caller.name}: {data.reason}"
    with acting_as(caller.name, data.reason, AuditAction.deployment):
        record = await controller.serve_variant(model, data.version, data.variant, artifact, reason)
    return (await _views(controller, [record]))[0]


@router.get("/deployments/{model}/canary", summary="The canary against production over the window so far")
async def canary_analysis(
    model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> dict[str, object]:
    await check_deployed(controller, caller, directory, model, Role.reader)
    verdict = await controller.analyse(model)
    records = await anyio.to_thread.run_sync(controller.store.for_model, model, [Stage.canary])
    due = records[0].analysis_due_at if records else None
    return {"model": model, "judged_at": due, **verdict.as_dict()}


async def _registered_project(controller: Controller, model: str) -> str:
    """The registry's project of `model`; `default` for a model it does not know (a policy may be set
    before the model's first version) or without a registry."""
    if controller.registry is None:
        return DEFAULT_PROJECT
    try:
        found = await anyio.to_thread.run_sync(controller.registry.get_model, model)
    except NotFound:
        return DEFAULT_PROJECT
    return found.project


@router.get("/policies/{model}", summary="A model's deployment policy, defaults filled in")
async def get_policy(
    model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep
) -> DeploymentPolicy:
    """A model never deployed has the defaults; one deployed in a project the caller holds no role
    in answers the defaults too, as a model it does not know."""
    project = await anyio.to_thread.run_sync(controller.store.project_of, model)
    if project is not None and role_in(caller, project, directory) is None:
        return DeploymentPolicy().resolved(controller.settings)
    policy = await anyio.to_thread.run_sync(controller.policies.get, model)
    return policy.resolved(controller.settings)


@router.put("/policies/{model}", summary="Set how a model's next versions are deployed", dependencies=ADMIN_LEADER)
async def put_policy(
    model: str,
    policy: DeploymentPolicy,
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
    audit: AuditDep,
) -> DeploymentPolicy:
    """Applies to versions deployed from now on: canary share, replicas, resources, GPU, batching; and at
    once to the route of a serving model: `record_outcomes`. Needs admin in the model's project (its
    deployments', else the registry's; `default` for a model not registered yet)."""
    check_model_name(model)
    project = await anyio.to_thread.run_sync(controller.store.project_of, model) or await _registered_project(
        controller, model
    )
    if role_in(caller, project, directory) is None:
        raise NotFound(f"model {model!r} not found")
    authorize_in(caller, project, Role.admin, directory)
    before = await anyio.to_thread.run_sync(controller.policies.get, model)
    await anyio.to_thread.run_sync(controller.policies.put, model, policy)
    if before.record_outcomes != policy.record_outcomes:
        await controller.reroute(model)
    if audit is None:
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


@router.patch("/policies/{model}", summary="Change some fields of a deployment policy", dependencies=ADMIN_LEADER)
async def patch_policy(
    model: str,
    change: Annotated[dict[str, Any], Body(examples=[{"record_outcomes": True}])],
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
    audit: AuditDep,
) -> DeploymentPolicy:
    """The fields given replace the stored ones (`null`: back to the settings' default), the others keep
    their value; then as PUT. An unknown field or a bad value is 422 and changes nothing."""
    current = await anyio.to_thread.run_sync(controller.policies.get, model)
    try:
        policy = DeploymentPolicy.model_validate({**current.model_dump(), **change})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return await put_policy(model, policy, controller, caller, directory, audit)
