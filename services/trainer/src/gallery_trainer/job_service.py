"""Training jobs as the API sees them: submit a spec, list, inspect, cancel, read the log."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.errors import Conflict, GalleryError, InvalidRequest, NotFound, Unavailable
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import get_logger
from gallery_common.work_queue import SubmitFn, beating

from .records import FINAL_JOB_STATES, Job, JobPublic, utcnow
from .runner import TrainingRunner
from .search import SearchCoordinator

if TYPE_CHECKING:
    from gallery_common.audit_trail import AuditTrail

    from .admission import SpecPolicy
    from .imports import ModelImporter

log = get_logger(__name__)

PlaceFn = Callable[[str | None], str]
"""The project a submitted spec's job belongs to, given the spec's `project`; raises when refused."""


def default_place(requested: str | None) -> str:
    """Without a caller to check (a caller inside the process): the spec's project, else `default`."""
    return requested or DEFAULT_PROJECT


YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json", ""})


class UnsupportedMediaType(GalleryError):
    status_code = 415


def read_spec_body(body: bytes, content_type: str, policy: SpecPolicy | None = None) -> Any:
    """The spec a request carries: a JSON object, or YAML text; raise a 4xx error saying what is wrong.

    With `policy` the trainer's admission limits apply (data roots, node hosts, sizes).
    """
    from .spec import SpecError, parse_spec

    media = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        raise InvalidRequest("the request has no job spec: send it as JSON or as YAML (Content-Type application/yaml)")
    try:
        if media in YAML_TYPES:
            return parse_spec(body, policy=policy)
        if media not in JSON_TYPES:
            raise UnsupportedMediaType(
                f"cannot read a job spec of type {media!r}: send application/json or application/yaml"
            )
        if policy is not None and len(body) > policy.max_spec_bytes:
            raise SpecError([f"spec: {len(body)} bytes is more than the limit of {policy.max_spec_bytes} bytes"])
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
        return parse_spec(doc, policy=policy)
    except SpecError as exc:
        raise InvalidRequest("invalid job spec: " + "; ".join(exc.problems)) from None


class JobService:
    """The trainer's jobs, over the database, the work queue, the runner and the search coordinator."""

    def __init__(
        self,
        engine: Engine,
        runner: TrainingRunner,
        searches: SearchCoordinator,
        enqueue: SubmitFn,
        policy: SpecPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.searches = searches
        self.enqueue = enqueue
        self.policy = policy
        # models trained elsewhere (`imports`): set by the app, which has the store and the bus
        self.importer: ModelImporter | None = None
        self.trail: AuditTrail | None = None  # where submissions and cancellations are recorded (the app's)

    def submit(self, body: bytes, content_type: str, place: PlaceFn = default_place) -> JobPublic:
        """Validate a spec and put it on the work queue, where any trainer replica may take it; a spec
        with a search block starts a search at its first trial. Unavailable (and the job failed with the
        reason) when the queue cannot be reached.

        `place` turns the spec's `project` (None when it names none) into the project the job belongs
        to, raising when the submitter may not submit there; the stored spec names that project."""
        spec = read_spec_body(body, content_type, self.policy)
        spec = spec.model_copy(update={"project": place(spec.project)})
        if spec.search is not None:
            job = self.searches.start(spec)
        else:
            job = Job(
                model=spec.name,
                project=spec.project,
                spec=spec.model_dump(mode="json"),
                epochs=spec.training.epochs,
            )
            with Session(self.engine) as session:
                session.add(job)
                session.commit()
                session.refresh(job)
        try:
            self.enqueue(job.id)
        except Unavailable as exc:
            with Session(self.engine) as session:
                session.execute(
                    update(Job)
                    .where(col(Job.id) == job.id, col(Job.status) == "queued")
                    .values(status="failed", error=f"could not be queued: {exc.message}", finished_at=utcnow())
                )
                session.commit()
            raise
        log.info("job queued", job_id=job.id, model=job.model, search_id=job.search_id)
        return JobPublic.of(job)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        projects: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[JobPublic]:
        """Jobs, newest first; only those of `projects` when given."""
        query = select(Job).order_by(col(Job.created_at).desc()).limit(limit)
        if projects is not None:
            query = query.where(col(Job.project).in_(projects))
        if status:
            query = query.where(Job.status == status)
        if model:
            query = query.where(Job.model == model)
        with Session(self.engine) as session:
            return [JobPublic.of(job) for job in session.exec(query).all()]

    def get(self, job_id: str) -> JobPublic:
        with Session(self.engine) as session:
            return JobPublic.of(self._job(session, job_id))

    def cancel(self, job_id: str) -> JobPublic:
        """Cancel a queued job at once, or ask a running one to stop (it ends `cancelled` shortly): at
        once when it runs on this replica, at its replica's next heartbeat when it runs on another."""
        with Session(self.engine) as session:
            job = self._job(session, job_id)
            if job.status in FINAL_JOB_STATES:
                raise Conflict(f"job {job_id} has already {job.status}; only a queued or running job can be cancelled")
            dequeued = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status) == "queued")
                .values(status="cancelled", error="cancelled on request", finished_at=utcnow(), cancel_requested=True)
            )
            if dequeued.rowcount != 1:  # type: ignore[attr-defined]
                session.execute(update(Job).where(col(Job.id) == job_id).values(cancel_requested=True))
            session.commit()
        if dequeued.rowcount == 1:  # type: ignore[attr-defined]
            self.searches.on_trial_ended(job_id)
        else:
            self.runner.cancel(job_id)
        return self.get(job_id)

    def logs(self, job_id: str, tail: int) -> str:
        """The last `tail` lines of the job's training log ('' before it starts)."""
        with Session(self.engine) as session:
            self._job(session, job_id)
        path = self.runner.workdir(job_id) / "train.log"
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                return "".join(deque(file, maxlen=tail))
        except FileNotFoundError:
            return ""

    def unqueued(self) -> list[str]:
        """At start-up: the jobs that may have no message on the work queue (queued, or running on a
        replica that stopped beating, as after an upgrade from a trainer without a queue), oldest first.
        Submitting them again is harmless: the queue keeps one message per job."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Job.id, Job.status, Job.heartbeat_at)
                .where(col(Job.status).in_(("queued", "running")))
                .order_by(col(Job.created_at))
            ).all()
        now = utcnow()
        return [
            job_id
            for job_id, status, beat in rows
            if status == "queued" or not beating(beat, now=now, ack_wait=self.runner.ack_wait)
        ]

    @staticmethod
    def missing(job_id: str) -> NotFound:
        """The one answer for a job that does not exist and for one in a project the caller cannot see."""
        return NotFound(f"no job {job_id!r}")

    @classmethod
    def _job(cls, session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise cls.missing(job_id)
        return job
