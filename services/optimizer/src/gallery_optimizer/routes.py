"""REST API: per-model optimization policies, and optimization jobs started by hand.

Plain `def` routes: they block on SQL and the registry, so FastAPI runs them in its thread pool.
A policy decides which variant is recommended, and so deployed: setting one, or overriding it for one
job, needs the admin role in the model's project; a writer there submits jobs under the model's
policy. Jobs and policies belong to their model's project (see `project_scope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, status
from fastapi.responses import PlainTextResponse

from gallery_common.audit import AuditAction, AuditChange, new_dedupe_key
from gallery_common.audit_trail import AuditTrail
from gallery_common.auth import requires
from gallery_common.deps import get_resources
from gallery_common.errors import InvalidRequest, NotFound
from gallery_common.events import NAME_PATTERN
from gallery_common.project_scope import ProjectScope, ScopeDep
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.settings import Role
from gallery_common.work_queue import WorkQueue

from .job_store import JobStore, resolve_policy
from .policy import OptimizationPolicy
from .records import JobPublic, OptimizeRequest
from .runner import REQUIRED_ROLES, OptimizationRunner

router = APIRouter(prefix="/api/v1", tags=["optimizer"])
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="the registered model's name")]


@dataclass(frozen=True)
class OptimizerCore:
    """What the optimizer app's startup builds: the job store, the runner and the work queue."""

    jobs: JobStore
    runner: OptimizationRunner
    queue: WorkQueue
    # where policy changes are recorded; None in an app built without one (route tests)
    trail: AuditTrail | None = None


def get_jobs(request: Request) -> JobStore:
    return get_resources(request).core_as(OptimizerCore).jobs


def get_runner(request: Request) -> OptimizationRunner:
    return get_resources(request).core_as(OptimizerCore).runner


def get_queue(request: Request) -> WorkQueue:
    return get_resources(request).core_as(OptimizerCore).queue


JobsDep = Annotated[JobStore, Depends(get_jobs)]
RunnerDep = Annotated[OptimizationRunner, Depends(get_runner)]
QueueDep = Annotated[WorkQueue, Depends(get_queue)]


def _model_project(runner: OptimizationRunner, scope: ProjectScope, model: str, needed: Role, doing: str) -> str:
    """The project of `model` (from the registry; `default` for a model not registered), once the
    caller holds `needed` there; a model in a project the caller cannot see answers as a missing one."""
    try:
        project = runner.registry.get_model(model).project
    except NotFound:
        # not registered (yet): a policy may be set ahead of the model, as before projects, in the
        # project a model of no project belongs to
        project = DEFAULT_PROJECT
    scope.check(project, needed, NotFound(f"model {model!r} not found"), doing)
    return project


@router.get("/policies/{model}", summary="A model's optimization policy (defaults when none was set)")
def get_policy(model: ModelName, jobs: JobsDep, runner: RunnerDep, scope: ScopeDep) -> OptimizationPolicy:
    _model_project(runner, scope, model, Role.reader, "reading a policy")
    return jobs.get_policy(model)


@router.put("/policies/{model}", summary="Set a model's optimization policy", dependencies=[requires(Role.admin)])
def put_policy(
    model: ModelName,
    jobs: JobsDep,
    runner: RunnerDep,
    scope: ScopeDep,
    values: Annotated[dict[str, Any], Body()],
    request: Request,
) -> OptimizationPolicy:
    """Replace the policy (admin in the model's project); fields left out take their defaults. An
    unknown field or a bad value is 422."""
    project = _model_project(runner, scope, model, Role.admin, "setting an optimization policy")
    before = jobs.get_policy(model)
    after = jobs.put_policy(model, values)
    trail = get_resources(request).core_as(OptimizerCore).trail
    if trail is not None:
        trail.record_threadsafe(
            AuditChange(
                project=project,
                actor=scope.caller.name,
                action=AuditAction.policy_change,
                model=model,
                target=f"{model}/optimization-policy",
                before=before.model_dump(mode="json"),
                after=after.model_dump(mode="json"),
                dedupe_key=new_dedupe_key(),
            )
        )
    return after


@router.post("/optimize", status_code=status.HTTP_202_ACCEPTED, summary="Optimize a registered version")
def optimize(data: OptimizeRequest, jobs: JobsDep, runner: RunnerDep, queue: QueueDep, scope: ScopeDep) -> JobPublic:
    """Queue a job for the version (any optimizer replica may run it): its artifacts come from the
    registry, its policy is the model's with `policy` overrides (admin in the model's project). The
    job belongs to the model's project, where submitting needs writer. 422 when the version lacks the
    FP32 ONNX or a split, 409 when it is already optimized or being optimized."""
    project = _model_project(runner, scope, data.model, Role.writer, "optimizing a version")
    if data.policy:
        doing = "overriding the optimization policy (leave `policy` out to use the model's policy)"
        _model_project(runner, scope, data.model, Role.admin, doing)
    version = runner.registry.get_version(data.model, data.version)
    policy = resolve_policy(jobs.get_policy(data.model).model_dump(mode="json"), data.policy)
    artifacts = {str(role): a.ref for role, a in version.artifacts.items()}
    missing = [role for role in REQUIRED_ROLES if role not in artifacts]
    if missing:
        raise InvalidRequest(
            f"{data.model}:{data.version} cannot be optimized: it has no {', no '.join(missing)} artifact"
        )
    submission = jobs.submit(data.model, data.version, artifacts, policy, project=project)
    jobs.require_new(submission)
    queue.submit_blocking(submission.job.id)
    return submission.job


@router.get("/optimize", summary="Recent optimization jobs")
def list_jobs(jobs: JobsDep, scope: ScopeDep, model: str | None = None, project: str | None = None) -> list[JobPublic]:
    """The newest jobs first: those of `project`, else of every project the caller can see."""
    return jobs.recent(model, projects=scope.listed(project))


def _visible_job(jobs: JobStore, scope: ProjectScope, job_id: str) -> JobPublic:
    """The job, once the caller holds a role in its project (a hidden job answers as a missing one)."""
    job = jobs.get(job_id)
    scope.check(job.project, Role.reader, JobStore.missing(job_id))
    return job


@router.get("/optimize/{job_id}", summary="A job's status, progress and report")
def get_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> JobPublic:
    return _visible_job(jobs, scope, job_id)


@router.get("/optimize/{job_id}/report.md", summary="A finished job's report as a Markdown table")
def get_report_markdown(job_id: str, jobs: JobsDep, scope: ScopeDep) -> PlainTextResponse:
    job = _visible_job(jobs, scope, job_id)
    markdown = (job.report or {}).get("markdown")
    if not markdown:
        raise NotFound(f"optimization job {job_id} has no report yet (status {job.status})")
    return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")
