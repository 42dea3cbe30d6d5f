"""The optimizer's records: optimization jobs and each model's optimization policy.

Table rows stay in the store layer (`job_store.py`); the API answers with the `*Public` models below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, DateTime
from sqlmodel import AutoString, Field, SQLModel

from gallery_common.db import as_utc, new_id, timestamp_field, utcnow
from gallery_common.events import NAME_PATTERN
from gallery_common.projects import DEFAULT_PROJECT

JobStatus = Literal["queued", "running", "succeeded", "failed"]
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class OptimizationJob(SQLModel, table=True):
    """One optimization of one model version: its inputs, progress, report and the event it published."""

    __tablename__ = "optimizer_job"

    id: str = Field(default_factory=new_id, primary_key=True)
    model: str = Field(index=True)
    version: int = Field(index=True)
    # the model's, when the job was asked for; the database's default fills jobs from before projects
    project: str = Field(
        default=DEFAULT_PROJECT,
        sa_column=Column(AutoString, nullable=False, index=True, server_default=DEFAULT_PROJECT),
    )
    status: str = Field(default="queued", index=True)
    progress: float = 0.0
    step: str | None = None
    error: str | None = None
    policy: dict[str, Any] | None = _json()
    artifacts: dict[str, Any] | None = _json()
    report: dict[str, Any] | None = _json()
    result: dict[str, Any] | None = _json()
    source_event_id: str | None = Field(default=None, unique=True, nullable=True)
    traceparent: str | None = None  # the trace of the model.validated that asked for this job
    # the replica running it, its last heartbeat, and how many times a replica started it
    holder: str | None = None
    heartbeat_at: datetime | None = timestamp_field()
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()


class OptimizationPolicyRecord(SQLModel, table=True):
    """A model's optimization policy as set over REST (the fields of `OptimizationPolicy`)."""

    __tablename__ = "optimizer_policy"

    model: str = Field(primary_key=True)
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class OptimizeRequest(BaseModel):
    """`POST /api/v1/optimize`: optimize one registered version, optionally overriding the model's policy."""

    model: str = PydanticField(pattern=NAME_PATTERN)
    version: int = PydanticField(ge=1)
    policy: dict[str, Any] | None = PydanticField(
        default=None, description="fields of the policy to override for this run only"
    )


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    model: str
    version: int
    project: str
    status: JobStatus
    progress: float
    step: str | None
    error: str | None
    policy: dict[str, Any] | None
    recommended: str | None
    report: dict[str, Any] | None
    source_event_id: str | None
    holder: str | None
    heartbeat_at: datetime | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: OptimizationJob) -> JobPublic:
        result = job.result or {}
        return cls(
            id=job.id,
            model=job.model,
            version=job.version,
            project=job.project,
            status=job.status,  # type: ignore[arg-type]
            progress=job.progress,
            step=job.step,
            error=job.error,
            policy=job.policy,
            recommended=result.get("recommended"),
            report=job.report,
            source_event_id=job.source_event_id,
            holder=job.holder,
            heartbeat_at=as_utc(job.heartbeat_at),
            attempts=job.attempts,
            created_at=as_utc(job.created_at) or job.created_at,
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
        )
