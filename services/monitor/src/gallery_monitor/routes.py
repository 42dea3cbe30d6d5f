"""REST API (`/api/v1`): models and their timeline, serving figures, drift, online quality, alerts, SLOs, canary.

Routes that touch the database are plain `def` (FastAPI runs them in its thread pool); those that
read only the in-memory series are `async def`, on the event loop that writes the series.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request

from gallery_common.auth import requires
from gallery_common.deps import get_resources
from gallery_common.errors import InvalidRequest
from gallery_common.events import NAME_PATTERN
from gallery_common.project_scope import ProjectScope, ScopeDep
from gallery_common.settings import Role

from .core import Monitor
from .records import AlertPublic, ModelOverview, SloPublic, SloUpdate, TimelineItem
from .timeline import TimelineStore
from .views import CanaryView, DriftView, FiguresView, QualityView

router = APIRouter(prefix="/api/v1", tags=["monitor"])
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="the model's name")]


def get_monitor(request: Request) -> Monitor:
    return get_resources(request).core_as(Monitor)


MonitorDep = Annotated[Monitor, Depends(get_monitor)]
WindowQuery = Annotated[float, Query(gt=0, description="seconds back from now")]


def _check_window(monitor: Monitor, window_s: float) -> float:
    if window_s > monitor.series.retention_s:
        raise InvalidRequest(
            f"window_s {window_s:g} is longer than the {monitor.series.retention_s:g} s of series the monitor keeps"
        )
    return window_s


def _in_scope(monitor: Monitor, scope: ProjectScope, model: str, needed: Role = Role.reader, doing: str = "") -> None:
    """Raise as for a model the monitor never saw when the caller holds no role in the model's project;
    Forbidden when it holds a lower one than `needed` (blocking: one indexed query)."""
    scope.check(monitor.timeline.project_of(model), needed, Monitor.unknown(model), doing or "this request")


@router.get("/models", summary="Models with their versions' stages and the production alias, from lifecycle events")
def list_models(monitor: MonitorDep, scope: ScopeDep, project: str | None = None) -> list[ModelOverview]:
    """The models of `project`, else of every project the caller can see."""
    return monitor.timeline.overviews(scope.listed(project))


@router.get("/models/{model}/timeline", summary="A model's lifecycle events, oldest first")
def timeline(model: ModelName, monitor: MonitorDep, scope: ScopeDep) -> list[TimelineItem]:
    scope.check(monitor.timeline.project_of(model), Role.reader, TimelineStore.missing(model))
    return monitor.timeline.timeline(model)


@router.get("/models/{model}/figures", summary="Throughput, errors, latency and batch size per version over a window")
async def figures(model: ModelName, monitor: MonitorDep, scope: ScopeDep, window_s: WindowQuery = 60.0) -> FiguresView:
    _check_window(monitor, window_s)
    await anyio.to_thread.run_sync(_in_scope, monitor, scope, model)
    if not monitor.series.knows(model):
        await anyio.to_thread.run_sync(monitor.require, model)
    return monitor.figures(model, window_s)


@router.get("/models/{model}/drift", summary="Per-feature and prediction drift of the latest sampled version")
def drift(
    model: ModelName,
    monitor: MonitorDep,
    scope: ScopeDep,
    version: Annotated[int | None, Query(ge=1, description="default: the version sampled last")] = None,
    window_s: Annotated[float | None, Query(gt=0, description="default: the model's SLO window")] = None,
) -> DriftView:
    _in_scope(monitor, scope, model)
    return monitor.drift(model, version, window_s)


@router.get("/models/{model}/quality", summary="Online accuracy, rmse and reward per version, from feedback")
def quality(
    model: ModelName,
    monitor: MonitorDep,
    scope: ScopeDep,
    window_s: Annotated[float | None, Query(gt=0, description="default: the model's quality window")] = None,
) -> QualityView:
    """Feedback on answers given in the window (`POST /v2/models/{model}/feedback` on the gateway), per
    version, beside the gate's test figures, and a series of them."""
    _in_scope(monitor, scope, model)
    return monitor.online_quality(model, window_s or monitor.slos.get(model).quality_window_s)


@router.get("/alerts", summary="Alert episodes, newest first")
def alerts(
    monitor: MonitorDep,
    scope: ScopeDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    project: str | None = None,
    open: Annotated[bool | None, Query(description="true: open ones only; false: closed ones only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertPublic]:
    """Alerts of `project`, else of every project the caller can see."""
    return monitor.alerts.recent(model, open, limit, projects=scope.listed(project))


@router.get("/slos/{model}", summary="A model's SLOs (the defaults until set)")
def get_slo(model: ModelName, monitor: MonitorDep, scope: ScopeDep) -> SloPublic:
    _in_scope(monitor, scope, model)
    return monitor.slos.get(model)


# Admin: a breached SLO publishes model.degraded, which rolls the model back (an impossible SLO
# takes a healthy model out of service).
@router.put("/slos/{model}", summary="Set some or all of a model's SLOs", dependencies=[requires(Role.admin)])
def put_slo(model: ModelName, update: SloUpdate, monitor: MonitorDep, scope: ScopeDep) -> SloPublic:
    """Admin in the model's project; fields left out keep their value; an unknown field or a bad value is 422."""
    _in_scope(monitor, scope, model, Role.admin, "setting a model's SLOs")
    return monitor.set_slo(model, update, scope.caller.name)


@router.get("/canary/{model}", summary="The canary's figures beside production's over a window")
def canary(model: ModelName, monitor: MonitorDep, scope: ScopeDep, window_s: WindowQuery = 60.0) -> CanaryView:
    _check_window(monitor, window_s)
    _in_scope(monitor, scope, model)
    monitor.require(model)
    overview = monitor.timeline.overview(model)
    return anyio.from_thread.run_sync(monitor.canary, model, window_s, overview)
