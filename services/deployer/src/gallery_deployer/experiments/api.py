"""`/api/v1/experiments`: start an online experiment between versions of a model, read its arms and
curves, stop it. Starting and stopping need the admin role and the deployer's leader (a follower
answers 503 naming it); reads come from the shared database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gallery_common.audit import AuditAction
from gallery_common.auth import Caller
from gallery_common.deps import CallerDep
from gallery_common.errors import NotFound, Unavailable
from gallery_common.projects import DEFAULT_PROJECT, ProjectDirectory, authorize_in, role_in, visible_projects
from gallery_common.settings import Role

from ..deployer.api import ADMIN_LEADER, AuditDep, DirectoryDep
from ..deployer.audit import acting_as
from ..gateway.routes import check_model_name
from .controller import ExperimentPlan, Experiments
from .records import ArmFigures, ExperimentPoint, ExperimentRecord, Metric, Policy

router = APIRouter(prefix="/api/v1", tags=["experiments"])


def get_experiments(request: Request) -> Experiments:
    found = getattr(request.app.state, "experiments", None)
    if not isinstance(found, Experiments):
        raise Unavailable("the deployer is starting or stopping")
    return found


ExperimentsDep = Annotated[Experiments, Depends(get_experiments)]


class ExperimentCreate(BaseModel):
    """An A/B test between versions that serve: the first version is the control."""

    model: str
    versions: list[Annotated[int, Field(ge=1)]] = Field(min_length=2, max_length=8)
    split: list[float] | None = Field(default=None, description="percent per version, summing to 100; default even")
    metric: Metric
    mde: float = Field(gt=0, description="the smallest difference worth finding (accuracy, error rate: a proportion)")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    max_samples_per_arm: int | None = Field(default=None, ge=10, description="stop with no difference past this")
    policy: Policy = "fixed"
    floor: float = Field(default=0.1, ge=0, lt=1, description="bandit: the least share of traffic each arm keeps")


class StopRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class ArmView(BaseModel):
    version: int
    role: str = Field(description="control or challenger")
    samples: int
    mean: float | None = Field(
        description="accuracy, mean reward, mean squared error, error rate or share of slow requests"
    )
    share: float = Field(description="its share of traffic now, 0-1")


class CurvePoint(BaseModel):
    at: datetime
    samples: dict[str, int]
    means: dict[str, float | None]
    shares: dict[str, float]
    p_value: float | None


class ExperimentView(BaseModel):
    id: str
    model: str
    project: str = Field(description="the model's project")
    status: str
    metric: str
    mde: float
    alpha: float
    policy: str
    floor: float
    versions: list[int]
    control: int
    split: list[float]
    planned_samples_per_arm: int | None = Field(description="proportions: planned at a 50 % baseline")
    max_samples_per_arm: int | None
    arms: list[ArmView]
    winner: int | None
    verdict: dict[str, Any] | None = Field(description="effect, interval, p-value and samples of the decision")
    reason: str | None
    started_at: datetime
    ended_at: datetime | None
    history: list[CurvePoint] | None = Field(default=None, description="the arms over time (GET of one experiment)")


async def _visible(
    experiments: Experiments, caller: Caller, directory: ProjectDirectory, experiment_id: str, needed: Role
) -> tuple[ExperimentRecord, list[ExperimentPoint], str]:
    """An experiment with its points and project once the caller holds `needed` there; one in a project
    the caller holds no role in answers as an unknown experiment."""
    try:
        record, points = await experiments.get(experiment_id)
    except NotFound:
        raise NotFound(f"no experiment {experiment_id!r}") from None
    if role_in(caller, record.project, directory) is None:
        raise NotFound(f"no experiment {experiment_id!r}")
    authorize_in(caller, record.project, needed, directory)
    return record, points, record.project


def _view(record: ExperimentRecord, project: str, points: list[ExperimentPoint] | None = None) -> ExperimentView:
    arms = [
        ArmView(
            version=v,
            role="control" if i == 0 else "challenger",
            samples=record.figures(v).n,
            mean=record.figures(v).mean,
            share=float(record.shares.get(str(v), 0.0)),
        )
        for i, v in enumerate(record.versions)
    ]
    history = None
    if points is not None:
        history = []
        for point in points:
            figures = {v: ArmFigures.model_validate(f) for v, f in point.arms.items()}
            history.append(
                CurvePoint(
                    at=point.at,
                    samples={v: f.n for v, f in figures.items()},
                    means={v: f.mean for v, f in figures.items()},
                    shares=point.shares,
                    p_value=point.p_value,
                )
            )
    return ExperimentView(
        id=record.id,
        model=record.model,
        project=project,
        status=record.status,
        metric=record.metric,
        mde=record.mde,
        alpha=record.alpha,
        policy=record.policy,
        floor=record.floor,
        versions=record.versions,
        control=record.versions[0],
        split=record.split,
        planned_samples_per_arm=record.planned_samples_per_arm,
        max_samples_per_arm=record.max_samples_per_arm,
        arms=arms,
        winner=record.winner,
        verdict=record.verdict,
        reason=record.reason,
        started_at=record.started_at,
        ended_at=record.ended_at,
        history=history,
    )


@router.post(
    "/experiments", status_code=201, summary="Start an A/B test between serving versions", dependencies=ADMIN_LEADER
)
async def start_experiment(
    data: ExperimentCreate, experiments: ExperimentsDep, caller: CallerDep, directory: DirectoryDep, audit: AuditDep
) -> ExperimentView:
    """404 for a model or version that does not serve (or a model in a project the caller holds no role
    in), 409 when the model has a running experiment; needs admin in the model's project."""
    check_model_name(data.model)
    project = await anyio.to_thread.run_sync(experiments.controller.store.project_of, data.model) or DEFAULT_PROJECT
    if role_in(caller, project, directory) is None:
        raise NotFound(f"model {data.model!r} is not deployed")  # what the experiments say of an unknown model
    authorize_in(caller, project, Role.admin, directory)
    split = data.split or [100.0 / len(data.versions)] * len(data.versions)
    plan = ExperimentPlan(
        model=data.model,
        versions=data.versions,
        split=split,
        metric=data.metric,
        mde=data.mde,
        alpha=data.alpha,
        max_samples_per_arm=data.max_samples_per_arm,
        policy=data.policy,
        floor=data.floor,
    )
    record = await experiments.start(plan)
    if audit is not None:
        with acting_as(caller.name):
            await audit.record(
                AuditAction.route_change,
                f"{record.model}/experiments/{record.id}",
                model=record.model,
                after={"experiment": record.id, "versions": record.versions, "split": record.split},
                reason=f"experiment started on {record.metric}",
            )
    return _view(record, project)


@router.get("/experiments", summary="Every experiment, newest first (model=: one model's)")
async def list_experiments(
    experiments: ExperimentsDep,
    caller: CallerDep,
    directory: DirectoryDep,
    model: str | None = None,
    project: str | None = None,
) -> list[ExperimentView]:
    """In the projects the caller holds a role in, or only in `project` (404 when it cannot see it)."""
    if project is not None:
        authorize_in(caller, project, Role.reader, directory)
    visible = {project} if project is not None else set(visible_projects(caller, directory))
    return [_view(record, record.project) for record in await experiments.all(model) if record.project in visible]


@router.get("/experiments/{experiment_id}", summary="One experiment: its arms, decision and curves")
async def get_experiment(
    experiment_id: str, experiments: ExperimentsDep, caller: CallerDep, directory: DirectoryDep
) -> ExperimentView:
    record, points, project = await _visible(experiments, caller, directory, experiment_id, Role.reader)
    return _view(record, project, points)


@router.post("/experiments/{experiment_id}/stop", summary="End a running experiment by hand", dependencies=ADMIN_LEADER)
async def stop_experiment(
    experiment_id: str,
    data: StopRequest,
    experiments: ExperimentsDep,
    caller: CallerDep,
    directory: DirectoryDep,
    audit: AuditDep,
) -> ExperimentView:
    _, _, project = await _visible(experiments, caller, directory, experiment_id, Role.admin)
    record = await experiments.stop(experiment_id, data.reason)
    if audit is not None:
        with acting_as(caller.name):
            await audit.record(
                AuditAction.experiment_decision,
                f"{record.model}/experiments/{record.id}",
                model=record.model,
                before={"status": "running"},
                after={"status": record.status, "traffic_moved": False},
                reason=data.reason,
            )
    return _view(record, project)
