"""The job runner: the trainer's side of the `TRAIN_JOBS` work queue (`gallery_common.work_queue`).

Every trainer replica takes jobs from the queue, at most `max_concurrent_jobs` at once. A job goes
queued -> running -> succeeded | failed | cancelled. Running, it trains (torch and DeepSpeed are
imported here, in the worker, never at service start), records its metrics as they appear, then
uploads its outputs and publishes `model.trained` under an event id made from the job id; only then
is it succeeded and its message acked. A job whose replica died is taken over by another replica
(a new run, from the start); a replica that stops gives its running jobs back to the queue.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.artifacts import ArtifactStore
from gallery_common.telemetry import counter, get_logger, tracer
from gallery_common.work_queue import Claim, Delivery, Settle, claim_decision, replica_id

from .curves import render_curves
from .publish import CURVES_ROLE, PublishFn, artifacts_json, event_id_for, trained_payload, upload_outputs
from .records import Job, Run, new_id, utcnow
from .tracking import MetricsTail, flatten_params, load_records, record_metrics
from .tracking_system import PeakRssMonitor, RunClock, host_figures

if TYPE_CHECKING:
    from .pipeline import JobOutputs, ProgressUpdate
    from .spec import JobSpec

log = get_logger(__name__)
JOBS_FINISHED = counter("trainer_jobs_total", "Training jobs finished, by final status.", ("status",))

STOPPED_REASON = "the trainer stopped while this job ran"
GIVEN_BACK_REASON = STOPPED_REASON + "; the job went back to the queue"
# Progress (0..1) when each phase starts; training fills its span by the epochs done.
_PHASE_PROGRESS = {"preparing": 0.0, "training": 0.05, "exporting": 0.85, "done": 0.9, "uploading": 0.95}


class TrainFn(Protocol):
    """The signature of `gallery_trainer.pipeline.run_job`."""

    def __call__(
        self,
        spec: JobSpec,
        workdir: Path,
        *,
        store: ArtifactStore | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        cancel: threading.Event | None = None,
        resume: bool = False,
    ) -> JobOutputs: ...


def default_train_fn() -> TrainFn:
    from .pipeline import run_job

    return run_job


def spec_params(spec: JobSpec) -> dict[str, Any]:
    """A run's parameters: the spec as trained, flattened; the search block is how it was chosen, not trained."""
    return flatten_params(spec.model_dump(mode="json", exclude={"search"}))


@dataclass
class ActiveJob:
    job_id: str
    attempt: int  # the job's `attempts` when this replica claimed it: every write of ours is fenced by it
    cancel: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False  # cancelled because the service is stopping, not by a user
    lost: bool = False  # another replica took the job over (this one looked dead to it)


class JobLost(Exception):
    """Another replica took the job over while this one ran it."""


def held(job_id: str, attempt: int) -> Any:
    """The WHERE clause of a write by the replica that holds the job's `attempt`."""
    return (col(Job.id) == job_id) & (col(Job.attempts) == attempt) & (col(Job.status) == "running")


class TrainingProgress:
    """Turns training's progress callbacks into job rows and metric rows, at most once per interval.

    A change of phase is always written at once; so is the last update (`flush`).
    """

    def __init__(
        self, engine: Engine, job_id: str, run_id: str, tail: MetricsTail, interval: float, attempt: int | None = None
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.run_id = run_id
        self.attempt = attempt
        self.tail = tail
        self.interval = interval
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._phase: str | None = None
        self._pending: dict[str, Any] | None = None
        self._metrics: dict[str, float] = {}

    def __call__(self, update: ProgressUpdate) -> None:
        metrics = {k: float(v) for k, v in update.metrics.items() if isinstance(v, int | float)}
        with self._lock:
            self._metrics.update(metrics)
            values: dict[str, Any] = {
                "phase": update.phase,
                "epoch": update.epoch,
                "epochs": update.epochs,
                "progress": progress_of(update.phase, update.epoch, update.epochs),
                "latest_metrics": dict(self._metrics),
            }
            loss = self._metrics.get("train_loss", self._metrics.get("loss"))
            if loss is not None:
                values["loss"] = loss
            self._pending = values
            now = time.monotonic()
            if update.phase != self._phase or now - self._last_write >= self.interval:
                self._phase = update.phase
                self._write(now)

    def flush(self) -> None:
        with self._lock:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._last_write = now
        record_metrics(self.engine, self.run_id, self.tail)
        if self._pending is None:
            return
        values, self._pending = self._pending, None
        where = col(Job.id) == self.job_id if self.attempt is None else held(self.job_id, self.attempt)
        with Session(self.engine) as session:
            session.execute(update(Job).where(where).values(**values))
            session.commit()


def progress_of(phase: str, epoch: int, epochs: int) -> float:
    if phase == "training" and epochs > 0:
        start, end = _PHASE_PROGRESS["training"], _PHASE_PROGRESS["exporting"]
        return round(start + (end - start) * min(max(epoch, 0), epochs) / epochs, 4)
    return _PHASE_PROGRESS.get(phase, 0.0)


class TrainingRunner:
    """Runs the jobs this replica takes from the work queue (a `gallery_common.work_queue.JobWorker`).

    The database is the truth: a delivery runs its job only if the record says so (`claim_decision`),
    and every write of a running job is fenced by the attempt that claimed it, so a replica that was
    taken for dead and comes back changes nothing.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: ArtifactStore,
        publish: PublishFn,
        jobs_dir: Path,
        progress_interval: float = 1.0,
        train: TrainFn | None = None,
        on_finished: Callable[[str], None] | None = None,
        ack_wait: float = 30.0,
        max_attempts: int = 3,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.publish = publish
        self.jobs_dir = jobs_dir
        self.progress_interval = progress_interval
        self.on_finished = on_finished
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self.holder = holder or replica_id()
        self._train = train
        self._active: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = False

    def cancel(self, job_id: str) -> bool:
        """Ask a job running here to stop; False when it is not running here (its replica sees the
        record's cancel_requested at its next heartbeat)."""
        with self._lock:
            active = self._active.get(job_id)
        if active is None:
            return False
        active.cancel.set()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Take no more jobs, stop the running ones and wait up to `timeout` s for them to end."""
        with self._lock:
            self._stopping = True
            for active in self._active.values():
                active.stopping = True
                active.cancel.set()
            self._idle.wait_for(lambda: not self._active, timeout)

    def workdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def heartbeat(self, delivery: Delivery) -> bool:
        """Beat for a job running here and pick up a cancel asked of another replica; False once it is
        no longer ours (ended, or taken over)."""
        with self._lock:
            active = self._active.get(delivery.job_id)
        if active is None:
            return True  # not claimed yet, or ending: nothing to beat for
        with Session(self.engine) as session:
            beat = session.execute(update(Job).where(held(active.job_id, active.attempt)).values(heartbeat_at=utcnow()))
            session.commit()
            row = session.execute(
                select(Job.status, Job.holder, Job.cancel_requested).where(col(Job.id) == active.job_id)
            ).first()
        status, holder, cancel_requested = row if row is not None else (None, None, False)
        if beat.rowcount != 1:  # type: ignore[attr-defined]
            if status == "running":
                log.warning("job taken over by another replica", job_id=active.job_id, holder=holder)
                active.lost = True
            active.cancel.set()
            return False
        if cancel_requested:
            active.cancel.set()
        return True

    def run(self, delivery: Delivery) -> Settle:
        """Claim the delivered job and run it to its end; how the queue settles the message."""
        if self._stopping:
            return Settle.GIVE_BACK
        claim, job, run = self._claim(delivery.job_id)
        if claim is Claim.WAIT:
            return Settle.LATER
        if job is None or run is None:
            if claim is Claim.GIVE_UP:
                self._after(delivery.job_id)
            return Settle.ACK
        active = ActiveJob(job.id, job.attempts)
        with self._lock:
            if self._stopping:
                active.stopping = True
                active.cancel.set()
            self._active[job.id] = active
        if self._cancel_requested(job.id):  # a cancel that came between the claim and now
            active.cancel.set()
        log.info("job started", job_id=job.id, run_id=run.id, model=job.model, attempt=job.attempts, claim=claim.value)
        try:
            # one trace per job: train here, then validate, optimize and deploy downstream
            with tracer().start_as_current_span("training job", attributes={"job.id": job.id, "model": job.model}):
                status, error = self._train_and_publish(job, run, active)
        except Exception as exc:
            # whatever went wrong, the job must end with a reason rather than stay "running"
            log.error("job crashed", job_id=job.id, exc_info=True)
            status, error = "failed", f"the trainer failed internally: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._active.pop(job.id, None)
                self._idle.notify_all()
        if active.lost:
            self._update_run(run.id, status="failed", error="taken over by another replica", finished_at=utcnow())
            return Settle.LOST
        if active.stopping and status != "succeeded":
            self._give_back(job.id, active.attempt, run.id)
            return Settle.GIVE_BACK
        if not self._finish(active, run.id, status, error):
            return Settle.LOST
        self._after(job.id)
        return Settle.ACK

    def _after(self, job_id: str) -> None:
        if self.on_finished is not None:
            try:
                self.on_finished(job_id)
            except Exception:
                log.error("after-job hook failed", job_id=job_id, exc_info=True)

    def _claim(self, job_id: str) -> tuple[Claim, Job | None, Run | None]:
        """Decide what the delivery does and, to run the job, make it ours with a new run.

        The update is conditional on the attempt count read, so of two replicas deciding at once only
        one claims. A job taken over whose run already published `model.trained` (its replica died
        before it could say so) ends succeeded without training again.
        """
        now = utcnow()
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("a queued job that is not in the database", job_id=job_id)
                return Claim.DONE, None, None
            claim = claim_decision(
                job.status,
                job.heartbeat_at,
                job.attempts,
                now=now,
                ack_wait=self.ack_wait,
                max_attempts=self.max_attempts,
            )
            if claim in (Claim.DONE, Claim.WAIT):
                return claim, None, None
            seen = (col(Job.id) == job_id) & (col(Job.attempts) == job.attempts) & (col(Job.status) == job.status)
            previous = session.get(Run, job.run_id) if job.run_id and claim is not Claim.START else None
            if previous is not None and previous.event_id is not None:
                done = {"status": "succeeded", "phase": "done", "progress": 1.0, "finished_at": now, "error": None}
                if self._take(session, seen, done):
                    self._close_run(session, previous.id, "succeeded", None, now)
                    session.commit()
                    log.info("job taken over after it had published; nothing left to do", job_id=job_id)
                return Claim.DONE, None, None
            if claim is Claim.GIVE_UP:
                reason = f"the trainer replicas running this job stopped {job.attempts} times (the last: {job.holder})"
                if self._take(session, seen, {"status": "failed", "error": reason, "finished_at": now}):
                    if job.run_id:
                        self._close_run(session, job.run_id, "failed", STOPPED_REASON, now)
                    session.commit()
                    log.warning("job failed: its replicas kept stopping", job_id=job_id, attempts=job.attempts)
                return claim, None, None
            # the update below refreshes `job` in the session: what it held before is read now
            run_id, previous_run, previous_holder = new_id(), job.run_id, job.holder
            values = {
                "status": "running",
                "phase": "preparing",
                "progress": 0.0,
                "run_id": run_id,
                "holder": self.holder,
                "heartbeat_at": now,
                "attempts": job.attempts + 1,
                "started_at": job.started_at or now,
            }
            if not self._take(session, seen, values):
                return Claim.WAIT, None, None
            if claim is Claim.TAKE_OVER and previous_run:
                reason = f"its replica {previous_holder} stopped; taken over"
                self._close_run(session, previous_run, "failed", reason, now)
                log.warning("job taken over", job_id=job_id, previous_holder=previous_holder, attempt=job.attempts)
            run = Run(id=run_id, job_id=job_id, model=job.model, project=job.project, system=host_figures())
            session.add(run)
            session.commit()
            session.refresh(job)
            session.refresh(run)
            session.expunge_all()
            return claim, job, run

    @staticmethod
    def _take(session: Session, where: Any, values: dict[str, Any]) -> bool:
        taken = session.execute(update(Job).where(where).values(**values))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            return False
        return True

    @staticmethod
    def _close_run(session: Session, run_id: str, status: str, error: str | None, now: Any) -> None:
        session.execute(update(Run).where(col(Run.id) == run_id).values(status=status, error=error, finished_at=now))

    def _give_back(self, job_id: str, attempt: int, run_id: str) -> None:
        """A job stopped with the replica goes back to the queue, its run failed with the reason."""
        now = utcnow()
        with Session(self.engine) as session:
            session.execute(
                update(Job)
                .where(held(job_id, attempt))
                .values(status="queued", phase=None, holder=None, heartbeat_at=None)
            )
            self._close_run(session, run_id, "failed", GIVEN_BACK_REASON, now)
            session.commit()
        log.info("job given back to the queue", job_id=job_id, run_id=run_id)

    def _train_and_publish(self, job: Job, run: Run, active: ActiveJob) -> tuple[str, str | None]:
        from .pipeline import TrainingFailed
        from .spec import SpecError, parse_spec

        workdir = self.workdir(job.id)
        shutil.rmtree(workdir, ignore_errors=True)  # what an earlier attempt left here is not this run's
        workdir.mkdir(parents=True)
        tail = MetricsTail(workdir / "metrics.jsonl")
        writer = TrainingProgress(self.engine, job.id, run.id, tail, self.progress_interval, active.attempt)
        clock, rss = RunClock(), PeakRssMonitor()
        try:
            spec = parse_spec(job.spec)
            self._update_run(run.id, params=spec_params(spec))
            train = self._train or default_train_fn()
            with rss:
                outputs = train(spec, workdir, store=self.store, on_progress=writer, cancel=active.cancel)
        except SpecError as exc:
            return "failed", "invalid job spec: " + "; ".join(exc.problems)
        except Exception as exc:
            writer.flush()
            self._update_run(run.id, system={**run.system, "duration_seconds": clock.seconds, **rss.figures()})
            if active.cancel.is_set():
                if active.lost or active.stopping:
                    return "failed", STOPPED_REASON
                return "cancelled", "cancelled on request"
            expected = isinstance(exc, TrainingFailed)
            reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            log.warning("training failed", job_id=job.id, error=reason, exc_info=not expected)
            self._append_log(workdir, f"training failed: {reason}")
            return "failed", reason
        writer.flush()
        figures = {"duration_seconds": clock.seconds, **rss.figures()}
        engine = {"engine": outputs.engine, "engine_note": outputs.engine_note}
        self._update_run(run.id, system={**run.system, **figures, **engine})
        try:
            self._set_job(active, phase="uploading", progress=_PHASE_PROGRESS["uploading"])
            self._deliver(job, run.id, outputs, active)
        except JobLost:
            return "failed", STOPPED_REASON
        except Exception as exc:
            reason = f"training finished but its outputs could not be delivered: {type(exc).__name__}: {exc}"
            log.error("delivery failed", job_id=job.id, run_id=run.id, exc_info=True)
            self._append_log(workdir, reason)
            return "failed", reason
        return "succeeded", None

    def _deliver(self, job: Job, run_id: str, outputs: JobOutputs, active: ActiveJob) -> None:
        """Upload every output and the curves, record them on the run, then publish model.trained
        (unless another replica took the job over meanwhile: JobLost)."""
        with Session(self.engine) as session:
            records = load_records(session, run_id)
        curves = render_curves(records, title=f"{job.model} run {run_id}")
        refs = upload_outputs(self.store, run_id, outputs.files, {CURVES_ROLE: ("curves.png", curves)})
        self._update_run(
            run_id,
            artifacts=artifacts_json(refs),
            metrics={k: float(v) for k, v in outputs.metrics.items()},
            task=outputs.task,
            class_names=list(outputs.class_names) if outputs.class_names is not None else None,
            config_hash=outputs.config_hash,
            dataset_fingerprint=outputs.dataset_fingerprint,
        )
        self._set_job(active, phase="publishing")
        event_id = event_id_for(job.id)
        payload = trained_payload(
            model=job.model, project=job.project, run_id=run_id, job_id=job.id, outputs=outputs, artifacts=refs
        )
        self.publish(payload, event_id)
        self._update_run(run_id, event_id=event_id)
        self._append_log(self.workdir(job.id), f"published model.trained {event_id} with {len(refs)} artifacts")

    def _finish(self, active: ActiveJob, run_id: str, status: str, error: str | None) -> bool:
        """Record the job's end; False when it is no longer ours (taken over meanwhile)."""
        now = utcnow()
        job_values: dict[str, Any] = {"status": status, "error": error, "finished_at": now}
        if status == "succeeded":
            job_values.update(phase="done", progress=1.0)
        with Session(self.engine) as session:
            if not self._take(session, held(active.job_id, active.attempt), job_values):
                return False
            self._close_run(session, run_id, status, error, now)
            session.commit()
        JOBS_FINISHED.labels(status).inc()
        log.info("job finished", job_id=active.job_id, run_id=run_id, status=status, error=error)
        return True

    def _cancel_requested(self, job_id: str) -> bool:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            return job is not None and job.cancel_requested

    def _set_job(self, active: ActiveJob, **values: Any) -> None:
        """Update a job running here; JobLost when another replica took it over."""
        with Session(self.engine) as session:
            if not self._take(session, held(active.job_id, active.attempt), values):
                active.lost = True
                raise JobLost(active.job_id)
            session.commit()

    def _update_run(self, run_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.execute(update(Run).where(col(Run.id) == run_id).values(**values))
            session.commit()

    @staticmethod
    def _append_log(workdir: Path, line: str) -> None:
        with open(workdir / "train.log", "a", encoding="utf-8") as out:
            out.write(f"[trainer] {line}\n")
