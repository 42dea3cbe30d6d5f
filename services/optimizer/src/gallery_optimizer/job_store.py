"""Optimization jobs and policies in the database: one job per model version, retried in place.

A version is optimized once: a second request while its job is queued or running, or after it
succeeded, gets that job instead of a new set of variants (the registry keeps one artifact per
role). A failed job is run again in place when the version is asked for again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import ArtifactRef

from .policy import OptimizationPolicy
from .records import ACTIVE_STATES, JobPublic, OptimizationJob, OptimizationPolicyRecord, utcnow

STOPPED_REASON = "the optimizer stopped while this job ran"

Outcome = Literal["created", "retried", "active", "succeeded"]


@dataclass(frozen=True)
class Submission:
    """What asking for a version's optimization did: which job, and whether it must be (re)run."""

    job: JobPublic
    outcome: Outcome
    result: dict[str, Any] | None = None

    @property
    def needs_run(self) -> bool:
        return self.outcome in ("created", "retried")


def resolve_policy(stored: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> OptimizationPolicy:
    """The policy a run uses: defaults, then the model's stored policy, then per-run overrides."""
    merged = {**(stored or {}), **(overrides or {})}
    try:
        return OptimizationPolicy.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'policy'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidRequest(f"invalid optimization policy: {problems}") from None


class JobStore:
    """Jobs and policies; every method blocks on SQL, so call it from a thread or a plain `def` route."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # One service process decides for all its consumers and routes; the lock makes
        # "look for the version's job, else create one" atomic within it.
        self._submit_lock = threading.Lock()

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.of(self._row(job_id))

    def recent(self, model: str | None = None, limit: int = 50) -> list[JobPublic]:
        """The newest jobs first, of one model when given."""
        with Session(self.engine) as session:
            query = select(OptimizationJob).order_by(col(OptimizationJob.created_at).desc()).limit(limit)
            if model is not None:
                query = query.where(OptimizationJob.model == model)
            return [JobPublic.of(row) for row in session.exec(query)]

    def traceparent(self, job_id: str) -> str | None:
        """The trace the job continues (that of the event that asked for it), if any."""
        return self._row(job_id).traceparent

    def inputs(self, job_id: str) -> tuple[dict[str, ArtifactRef], OptimizationPolicy]:
        """The artifacts (role -> ref) and the policy a job runs with."""
        row = self._row(job_id)
        refs = {role: ArtifactRef.model_validate(ref) for role, ref in (row.artifacts or {}).items()}
        return refs, resolve_policy(row.policy)

    def submit(
        self,
        model: str,
        version: int,
        artifacts: Mapping[str, ArtifactRef],
        policy: OptimizationPolicy,
        *,
        source_event_id: str | None = None,
        traceparent: str | None = None,
    ) -> Submission:
        """The version's job: a new one, the failed one queued again, or the active / succeeded one as it is."""
        with self._submit_lock, Session(self.engine) as session:
            existing = session.exec(
                select(OptimizationJob)
                .where(OptimizationJob.model == model, OptimizationJob.version == version)
                .order_by(col(OptimizationJob.created_at).desc())
            ).first()
            refs = {role: ref.model_dump(mode="json", exclude_none=True) for role, ref in artifacts.items()}
            policy_doc = policy.model_dump(mode="json")
            if existing is not None and existing.status in ACTIVE_STATES:
                return Submission(JobPublic.of(existing), "active")
            if existing is not None and existing.status == "succeeded":
                return Submission(JobPublic.of(existing), "succeeded", existing.result)
            if existing is not None:
                existing.status, existing.error, existing.step, existing.progress = "queued", None, None, 0.0
                existing.artifacts, existing.policy = refs, policy_doc
                existing.traceparent = traceparent
                existing.report = existing.result = None
                existing.started_at = existing.finished_at = None
                session.add(existing)
                session.commit()
                session.refresh(existing)
                return Submission(JobPublic.of(existing), "retried")
            job = OptimizationJob(
                model=model,
                version=version,
                artifacts=refs,
                policy=policy_doc,
                source_event_id=source_event_id,
                traceparent=traceparent,
            )
            session.add(job)
            session.commit()
            session.refresh(job)
            return Submission(JobPublic.of(job), "created")

    def require_new(self, submission: Submission) -> None:
        """Raise Conflict when a by-hand request found the version already optimized or being optimized."""
        if submission.outcome == "active":
            raise Conflict(
                f"{submission.job.model}:{submission.job.version} is already being optimized by job {submission.job.id}"
            )
        if submission.outcome == "succeeded":
            raise Conflict(
                f"{submission.job.model}:{submission.job.version} was already optimized by job {submission.job.id}; "
                "its variants are attached to the version"
            )

    def claim(self, job_id: str) -> bool:
        """Mark a queued job running; False when it is not queued (already taken or finished)."""
        with Session(self.engine) as session:
            done = session.exec(  # type: ignore[call-overload]
                update(OptimizationJob)
                .where(col(OptimizationJob.id) == job_id, col(OptimizationJob.status) == "queued")
                .values(status="running", started_at=utcnow(), step="starting", progress=0.0)
            )
            session.commit()
            return bool(done.rowcount)

    def progress(self, job_id: str, step: str, fraction: float) -> None:
        self._update(job_id, step=step, progress=min(max(fraction, 0.0), 1.0))

    def succeed(self, job_id: str, report: dict[str, Any], result: dict[str, Any]) -> None:
        self._update(
            job_id, status="succeeded", step="done", progress=1.0, report=report, result=result, finished_at=utcnow()
        )

    def fail(self, job_id: str, error: str, report: dict[str, Any] | None = None) -> None:
        self._update(job_id, status="failed", error=error, report=report, finished_at=utcnow())

    def recover(self) -> list[str]:
        """At start-up: jobs left running by a stopped service go back to the queue; returns every queued job."""
        with Session(self.engine) as session:
            session.exec(  # type: ignore[call-overload]
                update(OptimizationJob)
                .where(col(OptimizationJob.status) == "running")
                .values(status="queued", step=None, progress=0.0, started_at=None)
            )
            session.commit()
            rows = session.exec(
                select(OptimizationJob.id)
                .where(OptimizationJob.status == "queued")
                .order_by(col(OptimizationJob.created_at))
            )
            return list(rows)

    def get_policy(self, model: str) -> OptimizationPolicy:
        """The model's policy: what was set for it over the defaults."""
        with Session(self.engine) as session:
            record = session.get(OptimizationPolicyRecord, model)
            return resolve_policy(record.policy if record else None)

    def put_policy(self, model: str, values: Mapping[str, Any]) -> OptimizationPolicy:
        """Replace the model's policy (fields left out take their defaults)."""
        policy = resolve_policy(values)
        with Session(self.engine) as session:
            record = session.get(OptimizationPolicyRecord, model) or OptimizationPolicyRecord(model=model)
            record.policy = policy.model_dump(mode="json")
            record.updated_at = utcnow()
            session.add(record)
            session.commit()
        return policy

    def _row(self, job_id: str) -> OptimizationJob:
        with Session(self.engine) as session:
            row = session.get(OptimizationJob, job_id)
            if row is None:
                raise NotFound(f"optimization job {job_id!r} not found")
            return row

    def _update(self, job_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.exec(update(OptimizationJob).where(col(OptimizationJob.id) == job_id).values(**values))  # type: ignore[call-overload]
            session.commit()
