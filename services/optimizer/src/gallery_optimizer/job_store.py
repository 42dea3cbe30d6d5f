"""Optimization jobs and policies in the database: one job per model version, retried in place.

A version is optimized once: a second request while its job is queued or running, or after it
succeeded, gets that job instead of a new set of variants (the registry keeps one artifact per
role). A failed job is run again in place when the version is asked for again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import ArtifactRef
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.work_queue import Claim, beating, claim_decision

from .policy import OptimizationPolicy
from .records import ACTIVE_STATES, JobPublic, OptimizationJob, OptimizationPolicyRecord, utcnow

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
        # The lock makes "look for the version's job, else create one" atomic within this process; its
        # replicas share the model.validated consumer, so one event reaches one of them at a time.
        self._submit_lock = threading.Lock()

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.of(self._row(job_id))

    def recent(
        self, model: str | None = None, limit: int = 50, projects: Sequence[str] | None = None
    ) -> list[JobPublic]:
        """The newest jobs first, of one model when given, of `projects` only when given."""
        with Session(self.engine) as session:
            query = select(OptimizationJob).order_by(col(OptimizationJob.created_at).desc()).limit(limit)
            if projects is not None:
                query = query.where(col(OptimizationJob.project).in_(projects))
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
        project: str = DEFAULT_PROJECT,
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
                existing.traceparent, existing.project = traceparent, project
                existing.report = existing.result = None
                existing.started_at = existing.finished_at = None
                session.add(existing)
                session.commit()
                session.refresh(existing)
                return Submission(JobPublic.of(existing), "retried")
            job = OptimizationJob(
                model=model,
                version=version,
                project=project,
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

    def claim(self, job_id: str, holder: str, *, ack_wait: float, max_attempts: int) -> tuple[Claim, int]:
        """Decide what a delivery of the job's message does (`claim_decision`) and, to run it, mark it
        running under `holder`; returns the claim and the attempt that fences the holder's writes.

        The update is conditional on the attempt count read, so of two replicas only one claims.
        A job whose replicas died `max_attempts` times is failed here (GIVE_UP).
        """
        now = utcnow()
        with Session(self.engine) as session:
            row = session.get(OptimizationJob, job_id)
            if row is None:
                return Claim.DONE, 0
            claim = claim_decision(
                row.status, row.heartbeat_at, row.attempts, now=now, ack_wait=ack_wait, max_attempts=max_attempts
            )
            if claim in (Claim.DONE, Claim.WAIT):
                return claim, 0
            seen_status, seen_attempts = row.status, row.attempts  # the update below refreshes `row`
            values: dict[str, Any]
            if claim is Claim.GIVE_UP:
                reason = (
                    f"the optimizer replicas running this job stopped {row.attempts} times (the last: {row.holder})"
                )
                values = {"status": "failed", "error": reason, "finished_at": now}
            else:
                values = {"status": "running", "started_at": now, "step": "starting", "progress": 0.0}
                values |= {"holder": holder, "heartbeat_at": now, "attempts": row.attempts + 1, "error": None}
            done = session.exec(  # type: ignore[call-overload]
                update(OptimizationJob)
                .where(
                    col(OptimizationJob.id) == job_id,
                    col(OptimizationJob.status) == seen_status,
                    col(OptimizationJob.attempts) == seen_attempts,
                )
                .values(**values)
            )
            session.commit()
            if not done.rowcount:
                return Claim.WAIT, 0
            return claim, seen_attempts + 1

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Record that the job's holder is alive; False when the job is no longer that attempt's."""
        return self._update(job_id, attempt, heartbeat_at=utcnow())

    def progress(self, job_id: str, attempt: int, step: str, fraction: float) -> bool:
        return self._update(job_id, attempt, step=step, progress=min(max(fraction, 0.0), 1.0))

    def holds(self, job_id: str, attempt: int) -> bool:
        """Whether `attempt` still holds the running job (no other replica took it over)."""
        with Session(self.engine) as session:
            row = session.get(OptimizationJob, job_id)
            return row is not None and row.status == "running" and row.attempts == attempt

    def succeed(self, job_id: str, attempt: int, report: dict[str, Any], result: dict[str, Any]) -> bool:
        return self._update(
            job_id,
            attempt,
            status="succeeded",
            step="done",
            progress=1.0,
            report=report,
            result=result,
            finished_at=utcnow(),
        )

    def fail(self, job_id: str, attempt: int, error: str, report: dict[str, Any] | None = None) -> bool:
        return self._update(job_id, attempt, status="failed", error=error, report=report, finished_at=utcnow())

    def unqueued(self, ack_wait: float) -> list[str]:
        """At start-up: the jobs that may have no message on the work queue (queued, or running on a
        replica that stopped beating, as after an upgrade from an optimizer without a queue), oldest
        first. Submitting them again is harmless: the queue keeps one message per job."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(OptimizationJob.id, OptimizationJob.status, OptimizationJob.heartbeat_at)
                .where(col(OptimizationJob.status).in_(ACTIVE_STATES))
                .order_by(col(OptimizationJob.created_at))
            ).all()
        now = utcnow()
        return [
            job_id
            for job_id, status, beat in rows
            if status == "queued" or not beating(beat, now=now, ack_wait=ack_wait)
        ]

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

    @staticmethod
    def missing(job_id: str) -> NotFound:
        """The one answer for a job that does not exist and for one in a project the caller cannot see."""
        return NotFound(f"optimization job {job_id!r} not found")

    def _row(self, job_id: str) -> OptimizationJob:
        with Session(self.engine) as session:
            row = session.get(OptimizationJob, job_id)
            if row is None:
                raise self.missing(job_id)
            return row

    def _update(self, job_id: str, attempt: int, **values: Any) -> bool:
        """Write to a job `attempt` runs; False when it no longer does (ended, or taken over)."""
        with Session(self.engine) as session:
            done = session.exec(  # type: ignore[call-overload]
                update(OptimizationJob)
                .where(
                    col(OptimizationJob.id) == job_id,
                    col(OptimizationJob.attempts) == attempt,
                    col(OptimizationJob.status) == "running",
                )
                .values(**values)
            )
            session.commit()
            return bool(done.rowcount)
