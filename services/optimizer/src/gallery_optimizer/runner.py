"""The job runner: runs queued optimization jobs one at a time in a background thread.

A job goes queued -> running -> succeeded | failed. Running, it downloads the version's
artifacts (each checked against its sha256), builds and measures the variants, builds the edge
bundle, stores everything, attaches it to the version in the registry and publishes
`model.optimized`; only then is it succeeded. torch and onnxruntime are imported here, when the
first job runs, never at service start.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gallery_common.artifacts import ArtifactStore
from gallery_common.errors import GalleryError
from gallery_common.events import ArtifactRef
from gallery_common.registry_client import RegistryClient
from gallery_common.telemetry import continued_span, counter, get_logger

from .delivery import PublishFn, attach_to_registry, optimized_event_id, optimized_payload, store_outputs
from .job_store import STOPPED_REASON, JobStore
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

    def __init__(self, jobs: JobStore, job_id: str, interval: float) -> None:
        self.jobs, self.job_id, self.interval = jobs, job_id, interval
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
            self.jobs.progress(self.job_id, label, overall)

    def optimizing(self, step: str, fraction: float) -> None:
        self.stage("optimizing", fraction, step)


class OptimizationRunner:
    """Runs jobs from a queue in one worker thread (one optimization at a time: it is CPU-bound)."""

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
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.registry = registry
        self.publish = publish
        self.work_dir = work_dir
        self.progress_interval = progress_interval
        self.keep_workdirs = keep_workdirs
        self.pipeline = pipeline
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="optimizer-worker", daemon=True)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new job; wait up to `timeout` s for the one in hand (a job still running then is
        picked up again at the next start)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self.run(job_id)
            except Exception:
                log.exception("optimization job crashed the worker loop", job=job_id)

    def run(self, job_id: str) -> None:
        """Run one queued job to its end (succeeded or failed); a job not queued is left alone."""
        if not self.jobs.claim(job_id):
            return
        job = self.jobs.get(job_id)
        workdir = self.work_dir / job_id
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        log.info("optimization started", job=job_id, model=job.model, version=job.version)
        try:
            # the job continues the trace of train → validate, so model.optimized joins it
            with continued_span("optimization job", self.jobs.traceparent(job_id), job=job_id, model=job.model):
                self._run(job_id, job.model, job.version, workdir)
        except Exception as exc:
            message = exc.message if isinstance(exc, GalleryError) else f"{type(exc).__name__}: {exc}"
            if self._stopping.is_set() and not isinstance(exc, GalleryError):
                message = f"{STOPPED_REASON}: {message}"
            log.warning("optimization failed", job=job_id, error=message, exc_info=not isinstance(exc, GalleryError))
            self.jobs.fail(job_id, message)
            JOBS_FINISHED.labels("failed").inc()
        else:
            JOBS_FINISHED.labels("succeeded").inc()
        finally:
            if not self.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, job_id: str, model: str, version: int, workdir: Path) -> None:
        progress = OptimizationProgress(self.jobs, job_id, self.progress_interval)
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
        progress.stage("attaching")
        stored.report_doc["attached"] = attach_to_registry(self.registry, report, stored)
        progress.stage("publishing")
        payload = optimized_payload(report, stored)
        self.publish(payload, optimized_event_id(model, version))
        self.jobs.succeed(job_id, stored.report_doc, payload.model_dump(mode="json"))
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
