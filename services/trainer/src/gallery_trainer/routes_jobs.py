"""REST adapters over `JobService` and `SearchCoordinator`: /api/v1/jobs and /api/v1/searches."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from gallery_common.audit import AuditAction, AuditChange
from gallery_common.auth import Caller
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import NotFound
from gallery_common.project_scope import ProjectScope, ScopeDep
from gallery_common.settings import Role

from .job_service import JobService
from .records import JobPublic, JobStatus, SearchPublic
from .search import SearchCoordinator


def get_jobs(request: Request) -> JobService:
    return get_resources(request).core_as(JobService)


def get_searches(request: Request) -> SearchCoordinator:
    return get_jobs(request).searches


JobsDep = Annotated[JobService, Depends(get_jobs)]
SearchesDep = Annotated[SearchCoordinator, Depends(get_searches)]

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobPublic,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def submit_job(request: Request, jobs: JobsDep, scope: ScopeDep, caller: CallerDep) -> JobPublic:
    """Queue a training job from a spec: a JSON object, or YAML text with Content-Type application/yaml.

    The job belongs to the spec's `project` (else the X-Gallery-Project header's, else the caller's
    home project); submitting needs the writer role there. The submission is in the project's audit trail."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    job = await anyio.to_thread.run_sync(jobs.submit, body, content_type, scope.home)
    if jobs.trail is not None:
        after = {"model": job.model, "epochs": job.epochs, "search": job.search_id}
        await jobs.trail.record(job_change(caller, AuditAction.job_submitted, job, None, after))
    return job


@router.get("/jobs", response_model=list[JobPublic])
def list_jobs(
    jobs: JobsDep,
    scope: ScopeDep,
    status: JobStatus | None = None,
    model: str | None = None,
    project: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobPublic]:
    """Jobs, newest first: those of `project`, else of every project the caller can see."""
    return jobs.list_jobs(status=status, model=model, projects=scope.listed(project), limit=limit)


def job_change(caller: Caller, action: AuditAction, job: JobPublic, before: Any, after: Any) -> AuditChange:
    """A change to `job` by `caller`, as its project's audit trail records it."""
    return AuditChange(
        project=job.project,
        actor=caller.name,
        action=action,
        target=f"job/{job.id}",
        model=job.model,
        before=before,
        after=after,
    )


def _visible_job(jobs: JobService, scope: ProjectScope, job_id: str, needed: Role, doing: str) -> JobPublic:
    """The job, once the caller holds `needed` in its project (a hidden job answers as a missing one)."""
    job = jobs.get(job_id)
    scope.check(job.project, needed, JobService.missing(job_id), doing)
    return job


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> JobPublic:
    """A job's status, phase, progress (0..1), epoch, current loss, run id and error reason."""
    return _visible_job(jobs, scope, job_id, Role.reader, "reading a job")


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, jobs: JobsDep, scope: ScopeDep, caller: CallerDep) -> JobPublic:
    """Cancel a queued or running job; 409 when it has already ended. The cancellation is in the project's
    audit trail."""
    before = _visible_job(jobs, scope, job_id, Role.writer, "cancelling a job")
    job = jobs.cancel(job_id)
    if jobs.trail is not None:
        change = job_change(
            caller,
            AuditAction.job_cancelled,
            job,
            {"status": before.status},
            {"status": job.status, "cancel_requested": job.cancel_requested},
        )
        jobs.trail.record_threadsafe(change)
    return job


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: str, jobs: JobsDep, scope: ScopeDep, tail: Annotated[int, Query(ge=1, le=100_000)] = 200) -> str:
    """The last `tail` lines of the job's training log."""
    _visible_job(jobs, scope, job_id, Role.reader, "reading a job's log")
    return jobs.logs(job_id, tail)


@router.get("/searches/{search_id}", response_model=SearchPublic)
def get_search(search_id: str, searches: SearchesDep, scope: ScopeDep) -> SearchPublic:
    """A hyperparameter search and its trials."""
    search = searches.get(search_id)
    scope.check(search.project, Role.reader, NotFound(f"no search {search_id!r}"), "reading a search")
    return search
