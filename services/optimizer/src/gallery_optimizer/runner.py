"""The job runner: the optimizer's side of the `OPTIMIZE_JOBS` work queue, one job at a time per replica.

A job goes queued -> running -> succeeded | failed. Running, it downloads the version's
artifacts (each checked against its sha256), builds and measures the variants, builds the edge
bundle, stores everything, attaches it to the version in the registry and publishes
`model.optimized` (its event id is the version's); only then is it succeeded and its message acked.
A job whose replica died is taken over by another replica and run from the start. torch and
onnxruntime are imported here, when the first job runs, never at service start.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gallery_common.artifacts import ArtifactStore
from gallery_common.errors import GalleryError
from gallery_common.events import ArtifactRef
from gallery_common.registry_client import RegistryClient
from gallery_common.telemetry import continued_span, counter, get_logger
from gallery_common.work_queue import Claim, Delivery, Settle, replica_id

from .delivery import PublishFn, attach_to_registry, optimized_event_id, optimized_payload, store_outputs
from .job_store import JobStore
from .policy import OptimizationPolicy
from .report import OptimizationReport

if TYPE_CHECKING:
    from .pipeline import OptimizeInputs

log = get_logger(__name__)
JOBS_FINISHED = counter("optimizer_jobs_total", "Optimization jobs finished, by final status.", ("status",))

# role -> file name in the job's input folder; `weights` and `spec` are optional (pruning and
# distillation need them, the other variants do not).
INPUT_FILES = {
    "onnx": "model.onnx",
    "weights": "weights.safetensors",
    "spec": "spec.json",
    "train_split": "train_split.npz",
    "validation_split": "validation_split.npz",
    "test_split": "test_split.npz",
}
REQUIRED_ROLES = ("onnx", "train_split", "validation_split", "test_split")
# Overall progress when each step starts; optimization fills its span by its own fraction.
_SPAN = {"downloading": (0.0, 0.05), "optimizing": (0.05, 0.85), "bundling": (0.85, 0.9), "storing": (0.9, 0.95)}
_AFTER = {"attaching": 0.95, "publishing": 0.98}


class OptimizeFn(Protocol):
    """The signature of `gallery_optimizer.pipeline.optimize`."""

    def __call__(
        self,
        inputs: OptimizeInputs,
        policy: OptimizationPolicy,
        workdir: Path,
        *,
        model: str,
        version: int,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> OptimizationReport: ...


BundleFn = Callable[[OptimizationReport, "OptimizeInputs", Path], Path]


def default_pipeline() -> tuple[OptimizeFn, BundleFn, Callable[..., OptimizeInputs]]:
    from .pipeline import OptimizeInputs, build_edge_bundle, optimize

    return optimize, build_edge_bundle, OptimizeInputs


class OptimizationProgress:
    """Turns the pipeline's (step, fraction) callbacks into job rows, at most once per interval."""

    def __init__(self, jobs: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.jobs, self.job_id, self.attempt, self.interval = jobs, job_id, attempt, interval
        self._last_write = 0.0
        self._step: str | None = None

    def stage(self, stage: str, fraction: float = 0.0, step: str | None = None) -> None:
        if stage in _SPAN:
            start, end = _SPAN[stage]
            overall = start + (end - start) * min(max(fraction, 0.0), 1.0)
        else:
            overall = _AFTER[stage]
        label = step or stage
        now = time.monotonic()
        if label != self._step or now - self._last_write >= self.interval:
            self._step, self._last_write = label, now
            self.jobs.progress(self.job_id, self.attempt, label, overall)

    def optimizing(self, step: str, fraction: float) -> None:
        self.stage("optimizing", fraction, step)


class JobLost(GalleryError):
    """Another replica took the job over while this one ran it."""


class OptimizationRunner:
    """Runs the jobs this replica takes from the work queue (a `gallery_common.work_queue.JobWorker`);
    the queue hands it one at a time (optimization is CPU-bound)."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        store: ArtifactStore,
        registry: RegistryClient,
        publish: PublishFn,
        work_dir: Path,
        progress_interval: float = 0.5,
        keep_workdirs: bool = False,
        pipeline: Callable[[], tuple[OptimizeFn, BundleFn, Callable[..., Any]]] = default_pipeline,
        ack_wait: float = 30.0,
        max_attempts: int = 3,
        holder: str | None = None,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.registry = registry
        self.publish = publish
        self.work_dir = work_dir
        self.progress_interval = progress_interval
        self.keep_workdirs = keep_workdirs
        self.pipeline = pipeline
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self.holder = holder or replica_id()
        self._attempts: dict[str, int] = {}  # the jobs running here, and the attempt each holds
        self._stopping = False

    def stop(self) -> None:
        """Take no new job. The one in hand cannot be interrupted: the queue waits for it a while, and if
        the process ends first, another replica takes it over after the ack wait."""
        self._stopping = True

    def heartbeat(self, delivery: Delivery) -> bool:
        attempt = self._attempts.get(delivery.job_id)
        return attempt is None or self.jobs.heartbeat(delivery.job_id, attempt)

    def run(self, delivery: Delivery) -> Settle:
        """Claim the delivered job and run it to its end (succeeded or failed); how the queue settles it."""
        if self._stopping:
            return Settle.GIVE_BACK
        job_id = delivery.job_id
        claim, attempt = self.jobs.claim(job_id, self.holder, ack_wait=self.ack_wait, max_attempts=self.max_attempts)
        if claim is Claim.WAIT:
            return Settle.LATER
        if claim not in (Claim.START, Claim.TAKE_OVER):
            return Settle.ACK
        job = self.jobs.get(job_id)
        workdir = self.work_dir / job_id
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        log.info("optimization started", job=job_id, model=job.model, version=job.version, claim=claim.value)
        self._attempts[job_id] = attempt
        try:
            # the job continues the trace of train → validate, so model.optimized joins it
            with continued_span("optimization job", self.jobs.traceparent(job_id), job=job_id, model=job.model):
                self._run(job_id, attempt, job.model, job.version, workdir, job.project)
        except JobLost:
            log.warning("optimization taken over by another replica", job=job_id)
            return Settle.LOST
        except Exception as exc:
            message = exc.message if isinstance(exc, GalleryError) else f"{type(exc).__name__}: {exc}"
            log.warning("optimization failed", job=job_id, error=message, exc_info=not isinstance(exc, GalleryError))
            if not self.jobs.fail(job_id, attempt, message):
                return Settle.LOST
            JOBS_FINISHED.labels("failed").inc()
        else:
            JOBS_FINISHED.labels("succeeded").inc()
        finally:
            self._attempts.pop(job_id, None)
            if not self.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
        return Settle.ACK

    def _run(self, job_id: str, attempt: int, model: str, version: int, workdir: Path, project: str) -> None:
        progress = OptimizationProgress(self.jobs, job_id, attempt, self.progress_interval)
        refs, policy = self.jobs.inputs(job_id)
        missing = [role for role in REQUIRED_ROLES if role not in refs]
        if missing:
            raise GalleryError(f"{model}:{version} has no {', no '.join(missing)} artifact; nothing to optimize")
        registered = self.registry.get_version(model, version)
        progress.stage("downloading")
        paths = self._download(refs, workdir / "inputs")
        optimize, build_edge_bundle, inputs_cls = self.pipeline()
        inputs = inputs_cls(
            onnx=paths["onnx"],
            weights=paths.get("weights"),
            spec=_read_spec(paths.get("spec")),
            train_split=paths["train_split"],
            validation_split=paths["validation_split"],
            test_split=paths["test_split"],
            class_names=registered.class_names,
            task=registered.task or "classification",
        )
        report = optimize(
            inputs, policy, workdir / "variants", model=model, version=version, on_progress=progress.optimizing
        )
        progress.stage("bundling")
        bundle, bundle_error = None, None
        try:
            (workdir / "bundle").mkdir()
            bundle = build_edge_bundle(report, inputs, workdir / "bundle")
        except Exception as exc:
            bundle_error = exc.message if isinstance(exc, GalleryError) else f"{type(exc).__name__}: {exc}"
            log.warning("edge bundle failed", job=job_id, error=bundle_error)
        progress.stage("storing")
        stored = store_outputs(
            self.store, report, workdir, fp32=refs["onnx"], edge_bundle=bundle, edge_bundle_error=bundle_error
        )
        if not self.jobs.holds(job_id, attempt):
            raise JobLost(job_id)
        progress.stage("attaching")
        stored.report_doc["attached"] = attach_to_registry(self.registry, report, stored)
        progress.stage("publishing")
        payload = optimized_payload(report, stored, project)
        self.publish(payload, optimized_event_id(model, version))
        if not self.jobs.succeed(job_id, attempt, stored.report_doc, payload.model_dump(mode="json")):
            raise JobLost(job_id)
        log.info("optimization succeeded", job=job_id, model=model, version=version, recommended=payload.recommended)

    def _download(self, refs: dict[str, ArtifactRef], folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for role, name in INPUT_FILES.items():
            ref = refs.get(role)
            if ref is not None:
                paths[role] = self.store.download(ref.uri, folder / name, ref.sha256)
        return paths


def _read_spec(path: Path | None) -> dict[str, Any] | None:
    """The trainer's spec JSON; a spec that is not a JSON object fails the job with the reason."""
    if path is None:
        return None
    try:
        spec = json.loads(path.read_bytes())
    except ValueError as exc:
        raise GalleryError(f"the spec artifact is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise GalleryError(f"the spec artifact is a JSON {type(spec).__name__}, not an object")
    return spec
