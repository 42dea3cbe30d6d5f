"""REST adapters over the tracking records: /api/v1/runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlmodel import Session, col, select

from gallery_common.deps import SessionDep
from gallery_common.errors import NotFound
from gallery_common.project_scope import ProjectScope, ScopeDep
from gallery_common.settings import Role

from .curves import render_curves
from .records import Run, RunComparison, RunMetrics, RunPublic
from .tracking import compare_runs, load_records, run_metrics

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


def _run(session: Session, run_id: str, scope: ProjectScope) -> Run:
    """The run, once the caller holds a role in its project (a hidden run answers as a missing one)."""
    missing = NotFound(f"no run {run_id!r}")
    run = session.get(Run, run_id)
    if run is None:
        raise missing
    scope.check(run.project, Role.reader, missing)
    return run


@router.get("", response_model=list[RunPublic])
def list_runs(
    session: SessionDep,
    scope: ScopeDep,
    model: str | None = None,
    project: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunPublic]:
    """Runs, newest first: those of `project`, else of every project the caller can see."""
    query = select(Run).where(col(Run.project).in_(scope.listed(project)))
    query = query.order_by(col(Run.started_at).desc()).limit(limit)
    if model:
        query = query.where(Run.model == model)
    return [RunPublic.of(run) for run in session.exec(query).all()]


@router.get("/compare", response_model=RunComparison)
def compare(session: SessionDep, scope: ScopeDep, a: str, b: str) -> RunComparison:
    """Two runs side by side: the parameters that differ, and every metric of either with b - a."""
    return compare_runs(_run(session, a, scope), _run(session, b, scope))


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: str, session: SessionDep, scope: ScopeDep) -> RunPublic:
    """A run's parameters, final metrics, system figures and artifacts."""
    return RunPublic.of(_run(session, run_id, scope))


@router.get("/{run_id}/metrics", response_model=RunMetrics)
def get_run_metrics(run_id: str, session: SessionDep, scope: ScopeDep) -> RunMetrics:
    """Every per-step and per-epoch metrics record of a run, in order."""
    _run(session, run_id, scope)
    return run_metrics(session, run_id)


@router.get("/{run_id}/curves.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_run_curves(run_id: str, session: SessionDep, scope: ScopeDep) -> Response:
    """The run's training curves so far: loss and accuracy against epoch, learning rate against step."""
    run = _run(session, run_id, scope)
    png = render_curves(load_records(session, run_id), title=f"{run.model} run {run_id}")
    return Response(png, media_type="image/png")
