"""REST API: per-model optimization policies, and optimization jobs started by hand.

Plain `def` routes: they block on SQL and the registry, so FastAPI runs them in its thread pool.
A policy decides which variant is recommended, and so deployed: setting one, or overriding it for one
job, needs the admin role; a writer submits jobs under the model's policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, status
from fastapi.responses import PlainTextResponse

from gallery_common.auth import requires
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import Forbidden, InvalidRequest, NotFound
from gallery_common.events import NAME_PATTERN
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


def get_jobs(request: Request) -> JobStore:
    return get_resources(request).core_as(OptimizerCore).jobs


def get_runner(request: Request) -> OptimizationRunner:
    return get_resources(request).core_as(OptimizerCore).runner


def get_queue(request: Request) -> WorkQueue:
    return get_resources(request).core_as(OptimizerCore).queue


JobsDep = Annotated[JobStore, Depends(get_jobs)]
RunnerDep = Annotated[OptimizationRunner, Depends(get_runner)]
QueueDep = Annotated[WorkQueue, Depends(get_queue)]


@router.get("/policies/{model}", summary="A model's optimization policy (defaults when none was set)")
def get_policy(model: ModelName, jobs: JobsDep) -> OptimizationPolicy:
    return jobs.get_policy(model)


@router.put("/policies/{model}", summary="Set a model's optimization policy", dependencies=[requires(Role.admin)])
def put_policy(model: ModelName, jobs: JobsDep, values: Annotated[dict[str, Any], Body()]) -> OptimizationPolicy:
    """Replace the policy; fields left out take their defaults. An unknown field or a bad value is 422."""
    return jobs.put_policy(model, values)


@router.post("/optimize", status_code=status.HTTP_202_ACCEPTED, summary="Optimize a registered version")
def optimize(data: OptimizeRequest, jobs: JobsDep, runner: RunnerDep, queue: QueueDep, caller: CallerDep) -> JobPublic:
    """Queue a job for the version (any optimizer replica may run it): its artifacts come from the
    registry, its policy is the model's with `policy` overrides (admin only). 422 when the version
    lacks the FP32 ONNX or a split, 409 when it is already optimized or being optimized."""
    if data.policy and not caller.can(Role.admin):
        raise Forbidden(
            "overriding the optimization policy needs the admin role; your token has "
            f"{caller.role.value} (leave `policy` out to use the model's policy)"
        )
    policy = resolve_policy(jobs.get_policy(data.model).model_dump(mode="json"), data.policy)
    version = runner.registry.get_version(data.model, data.version)
    artifacts = {str(role): a.ref for role, a in version.artifacts.items()}
    missing = [role for role in REQUIRED_ROLES if role not in artifacts]
    if missing:
        raise InvalidRequest(
            f"{data.model}:{data.version} cannot be optimized: it has no {', no '.join(missing)} artifact"
        )
    submission = jobs.submit(data.model, data.version, artifacts, policy)
    jobs.require_new(submission)
    queue.submit_blocking(submission.job.id)
    return submission.job


@router.get("/optimize", summary="Recent optimization jobs")
def list_jobs(jobs: JobsDep, model: str | None = None) -> list[JobPublic]:
    return jobs.recent(model)


@router.get("/optimize/{job_id}", summary="A job's status, progress and report")
def get_job(job_id: str, jobs: JobsDep) -> JobPublic:
    return jobs.get(job_id)


@router.get("/optimize/{job_id}/report.md", summary="A finished job's report as a Markdown table")
def get_report_markdown(job_id: str, jobs: JobsDep) -> PlainTextResponse:
    job = jobs.get(job_id)
    markdown = (job.report or {}).get("markdown")
    if not markdown:
        raise NotFound(f"optimization job {job_id} has no report yet (status {job.status})")
    return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")
