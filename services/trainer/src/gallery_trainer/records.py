"""The trainer's records: jobs, runs and their metrics, searches and their trials.

Table rows stay in the store layer; the API answers with the `*Public` models below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import AutoString, Field, SQLModel

from gallery_common.db import as_utc, new_id, timestamp_field, utcnow
from gallery_common.projects import DEFAULT_PROJECT

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_JOB_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
SearchStatus = Literal["running", "succeeded", "exhausted", "cancelled"]


def _json(default: Any = dict) -> Any:
    return Field(default_factory=default, sa_column=Column(JSON, nullable=False))


def _project() -> Any:
    """The project a row belongs to; the database's default (not SQLAlchemy's) fills rows from before."""
    return Field(
        default=DEFAULT_PROJECT,
        sa_column=Column(AutoString, nullable=False, index=True, server_default=DEFAULT_PROJECT),
    )


class Job(SQLModel, table=True):
    """One training job: a spec to train, its progress, and the run it produced."""

    __tablename__ = "trainer_job"

    id: str = Field(default_factory=new_id, primary_key=True)
    model: str = Field(index=True)
    project: str = _project()
    status: str = Field(default="queued", index=True)
    phase: str | None = None
    progress: float = 0.0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    latest_metrics: dict[str, float] = _json()
    run_id: str | None = Field(default=None, index=True)
    error: str | None = None
    cancel_requested: bool = False
    # the replica running it, its last heartbeat, and how many times a replica started it
    holder: str | None = None
    heartbeat_at: datetime | None = timestamp_field()
    attempts: int = 0
    spec: dict[str, Any] = _json()
    search_id: str | None = Field(default=None, index=True)
    trial: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()


class Run(SQLModel, table=True):
    """What one job's training recorded: parameters, final metrics, system figures, artifacts."""

    __tablename__ = "trainer_run"

    id: str = Field(default_factory=new_id, primary_key=True)
    job_id: str = Field(index=True)
    model: str = Field(index=True)
    project: str = _project()
    status: str = "running"
    error: str | None = None
    params: dict[str, Any] = _json()
    metrics: dict[str, float] = _json()
    system: dict[str, Any] = _json()
    artifacts: dict[str, Any] = _json()
    task: str | None = None
    class_names: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    config_hash: str | None = None
    dataset_fingerprint: str | None = None
    event_id: str | None = None
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = timestamp_field()


class RunMetric(SQLModel, table=True):
    """One value of one metrics record (a line of metrics.jsonl); `seq` groups a record's values."""

    __tablename__ = "trainer_run_metric"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    seq: int
    kind: str
    step: int | None = None
    epoch: int | None = None
    time: float | None = None
    key: str
    value: float


class Search(SQLModel, table=True):
    """A hyperparameter search: trials are trained one after another until one passes validation."""

    __tablename__ = "trainer_search"

    id: str = Field(default_factory=new_id, primary_key=True)
    model: str
    project: str = _project()
    status: str = "running"
    budget: int
    metric: str
    direction: str
    seed: int
    base_spec: dict[str, Any] = _json()
    winner_run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = timestamp_field()


class SearchTrial(SQLModel, table=True):
    """One trial of a search; (search_id, number) is unique so a redelivered event starts no twin."""

    __tablename__ = "trainer_search_trial"
    __table_args__ = (UniqueConstraint("search_id", "number", name="uq_trial_number"),)

    id: int | None = Field(default=None, primary_key=True)
    search_id: str = Field(index=True)
    number: int
    job_id: str
    params: dict[str, Any] = _json()
    state: str = "training"
    value: float | None = None
    reasons: list[str] = _json(list)


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    model: str
    project: str
    status: JobStatus
    phase: str | None
    progress: float
    epoch: int
    epochs: int
    loss: float | None
    metrics: dict[str, float]
    run_id: str | None
    error: str | None
    cancel_requested: bool
    holder: str | None
    heartbeat_at: datetime | None
    attempts: int
    search_id: str | None
    trial: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            model=job.model,
            project=job.project,
            status=job.status,  # type: ignore[arg-type]
            phase=job.phase,
            progress=job.progress,
            epoch=job.epoch,
            epochs=job.epochs,
            loss=job.loss,
            metrics=dict(job.latest_metrics),
            run_id=job.run_id,
            error=job.error,
            cancel_requested=job.cancel_requested,
            holder=job.holder,
            heartbeat_at=as_utc(job.heartbeat_at),
            attempts=job.attempts,
            search_id=job.search_id,
            trial=job.trial,
            created_at=as_utc(job.created_at),  # type: ignore[arg-type]
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
        )


class RunPublic(BaseModel):
    """A run with everything it recorded except the per-step metrics (see `/runs/{id}/metrics`)."""

    id: str
    job_id: str
    model: str
    project: str
    status: str
    error: str | None
    params: dict[str, Any]
    metrics: dict[str, float]
    system: dict[str, Any]
    artifacts: dict[str, Any]
    task: str | None
    class_names: list[str] | None
    config_hash: str | None
    dataset_fingerprint: str | None
    event_id: str | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, run: Run) -> RunPublic:
        return cls(
            id=run.id,
            job_id=run.job_id,
            model=run.model,
            project=run.project,
            status=run.status,
            error=run.error,
            params=dict(run.params),
            metrics=dict(run.metrics),
            system=dict(run.system),
            artifacts=dict(run.artifacts),
            task=run.task,
            class_names=run.class_names,
            config_hash=run.config_hash,
            dataset_fingerprint=run.dataset_fingerprint,
            event_id=run.event_id,
            started_at=as_utc(run.started_at),  # type: ignore[arg-type]
            finished_at=as_utc(run.finished_at),
        )


class RunMetrics(BaseModel):
    """A run's metrics records as training wrote them, per step and per epoch."""

    run_id: str
    steps: list[dict[str, float | int | str | None]]
    epochs: list[dict[str, float | int | str | None]]


class ValuePair(BaseModel):
    a: Any
    b: Any


class MetricPair(BaseModel):
    a: float | None
    b: float | None
    delta: float | None


class RunComparison(BaseModel):
    """Two runs side by side: the parameters that differ and every final metric of either."""

    a: RunPublic
    b: RunPublic
    params_differ: dict[str, ValuePair]
    params_same: int
    metrics: dict[str, MetricPair]


class TrialPublic(BaseModel):
    number: int
    job_id: str
    params: dict[str, Any]
    state: str
    value: float | None
    reasons: list[str]


class SearchPublic(BaseModel):
    id: str
    model: str
    project: str
    status: SearchStatus
    budget: int
    metric: str
    direction: str
    winner_run_id: str | None
    trials: list[TrialPublic]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, search: Search, trials: list[SearchTrial]) -> SearchPublic:
        return cls(
            id=search.id,
            model=search.model,
            project=search.project,
            status=search.status,  # type: ignore[arg-type]
            budget=search.budget,
            metric=search.metric,
            direction=search.direction,
            winner_run_id=search.winner_run_id,
            trials=[
                TrialPublic(
                    number=t.number, job_id=t.job_id, params=t.params, state=t.state, value=t.value, reasons=t.reasons
                )
                for t in sorted(trials, key=lambda t: t.number)
            ],
            created_at=as_utc(search.created_at),  # type: ignore[arg-type]
            finished_at=as_utc(search.finished_at),
        )
