"""The job runner: runs queued jobs in background threads, at most `max_concurrent_jobs` at once.

A job goes queued -> running -> succeeded | failed | cancelled. Running, it trains (torch and
DeepSpeed are imported here, in the worker, never at service start), records its metrics as they
appear, then uploads its outputs and publishes `model.trained`; only then is it succeeded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from gallery_common.artifacts import ArtifactStore
from gallery_common.telemetry import counter, get_logger, tracer

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
    cancel: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False  # cancelled because the service is stopping, not by a user


class TrainingProgress:
    """Turns training's progress callbacks into job rows and metric rows, at most once per interval.

    A change of phase is always written at once; so is the last update (`flush`).
    """

    def __init__(self, engine: Engine, job_id: str, run_id: str, tail: MetricsTail, interval: float) -> None:
        self.engine = engine
        self.job_id = job_id
        self.run_id = run_id
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
        with Session(self.engine) as session:
            session.execute(update(Job).where(col(Job.id) == self.job_id).values(**values))
            session.commit()


def progress_of(phase: str, epoch: int, epochs: int) -> float:
    if phase == "training" and epochs > 0:
        start, end = _PHASE_PROGRESS["training"], _PHASE_PROGRESS["exporting"]
        return round(start + (end - start) * min(max(epoch, 0), epochs) / epochs, 4)
    return _PHASE_PROGRESS.get(phase, 0.0)


class TrainingRunner:
    """Worker threads over a queue of job ids; the database is the truth, the queue only a wake-up."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: ArtifactStore,
        publish: PublishFn,
        jobs_dir: Path,
        max_concurrent_jobs: int = 1,
        progress_interval: float = 1.0,
        train: TrainFn | None = None,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.publish = publish
        self.jobs_dir = jobs_dir
        self.max_concurrent_jobs = max_concurrent_jobs
        self.progress_interval = progress_interval
        self.on_finished = on_finished
        self._train = train
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._active: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.max_concurrent_jobs):
            thread = threading.Thread(target=self._work, name=f"trainer-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop; False when it is not running here."""
        with self._lock:
            active = self._active.get(job_id)
        if active is None:
            return False
        active.cancel.set()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, stop the running ones and wait up to `timeout` s for the workers."""
        with self._lock:
            for active in self._active.values():
                active.stopping = True
                active.cancel.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def workdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                self._execute(job_id)
            except Exception:
                log.error("job worker error", job_id=job_id, exc_info=True)

    def _claim(self, job_id: str) -> tuple[Job, Run] | None:
        """Move a queued job to running and open its run; None if it is not queued (cancelled, or taken)."""
        run_id = new_id()
        with Session(self.engine) as session:
            claimed = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status) == "queued")
                .values(status="running", phase="preparing", started_at=utcnow(), run_id=run_id)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return None
            job = session.get(Job, job_id)
            assert job is not None
            run = Run(id=run_id, job_id=job_id, model=job.model, system=host_figures())
            session.add(run)
            session.commit()
            session.refresh(job)
            session.refresh(run)
            session.expunge_all()
            return job, run

    def _execute(self, job_id: str) -> None:
        claimed = self._claim(job_id)
        if claimed is None:
            return
        job, run = claimed
        active = ActiveJob(job_id)
        with self._lock:
            self._active[job_id] = active
        if self._cancel_requested(job_id):  # a cancel that came between the claim and now
            active.cancel.set()
        log.info("job started", job_id=job_id, run_id=run.id, model=job.model)
        try:
            # one trace per job: train here, then validate, optimize and deploy downstream
            with tracer().start_as_current_span("training job", attributes={"job.id": job_id, "model": job.model}):
                status, error = self._train_and_publish(job, run, active)
        except Exception as exc:
            # whatever went wrong, the job must end with a reason rather than stay "running"
            log.error("job crashed", job_id=job_id, exc_info=True)
            status, error = "failed", f"the trainer failed internally: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._active.pop(job_id, None)
        self._finish(job_id, run.id, status, error)
        if self.on_finished is not None:
            try:
                self.on_finished(job_id)
            except Exception:
                log.error("after-job hook failed", job_id=job_id, exc_info=True)

    def _train_and_publish(self, job: Job, run: Run, active: ActiveJob) -> tuple[str, str | None]:
        from .pipeline import TrainingFailed
        from .spec import SpecError, parse_spec

        workdir = self.workdir(job.id)
        workdir.mkdir(parents=True, exist_ok=True)
        tail = MetricsTail(workdir / "metrics.jsonl")
        writer = TrainingProgress(self.engine, job.id, run.id, tail, self.progress_interval)
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
                return ("failed", STOPPED_REASON) if active.stopping else ("cancelled", "cancelled on request")
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
            self._set_job(job.id, phase="uploading", progress=_PHASE_PROGRESS["uploading"])
            self._deliver(job, run.id, outputs)
        except Exception as exc:
            reason = f"training finished but its outputs could not be delivered: {type(exc).__name__}: {exc}"
            log.error("delivery failed", job_id=job.id, run_id=run.id, exc_info=True)
            self._append_log(workdir, reason)
            return "failed", reason
        return "succeeded", None

    def _deliver(self, job: Job, run_id: str, outputs: JobOutputs) -> None:
        """Upload every output and the curves, record them on the run, then publish model.trained."""
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
        self._set_job(job.id, phase="publishing")
        event_id = event_id_for(run_id)
        payload = trained_payload(model=job.model, run_id=run_id, job_id=job.id, outputs=outputs, artifacts=refs)
        self.publish(payload, event_id)
        self._update_run(run_id, event_id=event_id)
        self._append_log(self.workdir(job.id), f"published model.trained {event_id} with {len(refs)} artifacts")

    def _finish(self, job_id: str, run_id: str, status: str, error: str | None) -> None:
        now = utcnow()
        job_values: dict[str, Any] = {"status": status, "error": error, "finished_at": now}
        if status == "succeeded":
            job_values.update(phase="done", progress=1.0)
        with Session(self.engine) as session:
            session.execute(update(Job).where(col(Job.id) == job_id).values(**job_values))
            session.execute(
                update(Run).where(col(Run.id) == run_id).values(status=status, error=error, finished_at=now)
            )
            session.commit()
        JOBS_FINISHED.labels(status).inc()
        log.info("job finished", job_id=job_id, run_id=run_id, status=status, error=error)

    def _cancel_requested(self, job_id: str) -> bool:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            return job is not None and job.cancel_requested

    def _set_job(self, job_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.execute(update(Job).where(col(Job.id) == job_id).values(**values))
            session.commit()

    def _update_run(self, run_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.execute(update(Run).where(col(Run.id) == run_id).values(**values))
            session.commit()

    @staticmethod
    def _append_log(workdir: Path, line: str) -> None:
        with open(workdir / "train.log", "a", encoding="utf-8") as out:
            out.write(f"[trainer] {line}\n")
