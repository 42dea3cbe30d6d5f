"""One training job from spec to files: prepare the data, train on the ranks, export and check the model.

`run_job` blocks (it runs the ranks as child processes and waits for them); call it from a worker
thread. It writes everything into `workdir` and returns the files by role.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.refs import FederatedLineage
from gallery_common.events import Signature
from gallery_common.netutil import free_port
from gallery_trainer.data import DataError, Dataset, load_dataset
from gallery_trainer.engine.job import (
    CHECKPOINT_DIR,
    FEATURE_FILES,
    LOG_FILE,
    METRICS_FILE,
    RESULT_FILE,
    SPLIT_FILES,
    VECTORIZER_FILE,
    WEIGHTS_FILE,
    RankJob,
    load_split,
    save_split,
)
from gallery_trainer.failures import JobCancelled, TrainingFailed
from gallery_trainer.prepare import PreparedData, prepare
from gallery_trainer.spec import JobSpec, config_hash

__all__ = ["JobCancelled", "JobOutputs", "ProgressUpdate", "TrainingFailed", "prepare_job", "run_job"]

Phase = Literal["preparing", "training", "exporting", "done"]
ONNX_FILE = "model.onnx"
SPEC_FILE = "spec.json"
PREPARED_FILE = "prepared.json"


@dataclass
class ProgressUpdate:
    """Where a job stands; `metrics` holds the latest figures (train_loss, val_loss, val_accuracy, ...)."""

    phase: Phase
    epoch: int
    epochs: int
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class JobOutputs:
    """What a finished job produced.

    `files` maps a role to a file in the workdir: `weights` (safetensors), `spec` (JSON: job spec,
    architecture, preprocessing), `onnx` (FP32, preprocessing baked in, one self-contained file),
    `train_split`, `validation_split`, `test_split` (NPZ: `x` raw FP32 features, or for a text job the
    raw texts as a unicode array [N]; `y` labels). A text job's `onnx` takes raw texts (`text`, strings).
    """

    files: dict[str, Path]
    signature: Signature
    metrics: dict[str, float]
    dataset_fingerprint: str
    config_hash: str
    leakage: dict[str, Any]
    task: str
    class_names: list[str] | None
    engine: str
    engine_note: str | None = None
    federation: FederatedLineage | None = None


@dataclass
class PreparedJob:
    """A workdir ready for the ranks, and what preparation found out about the data."""

    job: RankJob
    fingerprint: str
    leakage: dict[str, Any]
    feature_names: list[str]


def prepare_job(spec: JobSpec, workdir: Path, store: ArtifactStore | None = None) -> PreparedJob:
    """Load and prepare the data and write the splits, the fitted preprocessing and job.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in (*FEATURE_FILES.values(), VECTORIZER_FILE):
        (workdir / stale).unlink(missing_ok=True)
    try:
        dataset = load_dataset(spec.data, store)
        text = spec.data.is_text
        prepared = _prepare_text(dataset, spec, workdir) if text else prepare(dataset, spec.preparation)
    except DataError as exc:
        raise TrainingFailed(str(exc)) from None
    for name, filename in SPLIT_FILES.items():
        save_split(workdir / filename, prepared.split(name))
    n_features = prepared.transform.n_inputs if spec.data.is_text else dataset.x.shape[1]
    job = RankJob(
        spec=spec,
        workdir=workdir,
        task=dataset.task,
        n_features=n_features,
        n_outputs=dataset.n_classes if dataset.task == "classification" else 1,
        class_names=dataset.class_names,
        image_shape=dataset.image_shape,
        transform=prepared.transform,
        target=prepared.target,
    )
    job.save()
    summary = {
        "config_hash": config_hash(spec),
        "fingerprint": dataset.fingerprint,
        "leakage": prepared.leakage,
        "feature_names": dataset.feature_names,
    }
    (workdir / PREPARED_FILE).write_text(json.dumps(summary))
    return PreparedJob(job, dataset.fingerprint, prepared.leakage, dataset.feature_names)


def _prepare_text(dataset: Dataset, spec: JobSpec, workdir: Path) -> PreparedData:
    """A text job's preparation; writes the vectorizer graph and the ranks' feature splits into `workdir`."""
    import onnx

    from gallery_trainer.text_prepare import prepare_text

    text = prepare_text(dataset, spec.preparation, spec.training.seed)
    onnx.save(text.vectorizer.to_onnx(), str(workdir / VECTORIZER_FILE))
    save_split(workdir / FEATURE_FILES["train"], text.train_features)
    save_split(workdir / FEATURE_FILES["validation"], text.validation_features)
    return text.data


def _reuse_prepared(spec: JobSpec, workdir: Path) -> PreparedJob | None:
    """The workdir's earlier preparation of this same spec, if complete."""
    try:
        summary = json.loads((workdir / PREPARED_FILE).read_text())
        if summary["config_hash"] != config_hash(spec):
            return None
        job = RankJob.load(workdir)
    except (OSError, ValueError, KeyError):
        return None
    needed = list(SPLIT_FILES.values())
    if spec.data.is_text:
        needed += [*FEATURE_FILES.values(), VECTORIZER_FILE]
    if not all((workdir / name).exists() for name in needed):
        return None
    return PreparedJob(job, summary["fingerprint"], summary["leakage"], summary["feature_names"])


def choose_engine(spec: JobSpec) -> tuple[JobSpec, str | None]:
    """The spec the ranks run and a note when it differs: DeepSpeed falls back to DDP when it cannot be
    imported (TrainingFailed when the spec needs something only DeepSpeed does)."""
    if spec.engine.kind != "deepspeed":
        return spec, None
    from gallery_trainer.launcher import deepspeed_import_error

    reason = deepspeed_import_error()
    if reason is None:
        return spec, None
    if spec.engine.pipeline_stages > 1 or spec.engine.multi_node:
        needs = "pipeline stages" if spec.engine.pipeline_stages > 1 else "several machines"
        raise TrainingFailed(f"engine.kind: {needs} need DeepSpeed, and {reason}")
    note = f"DeepSpeed is unavailable ({reason}); trained with the PyTorch DDP engine"
    if spec.engine.zero_stage:
        note += f", without ZeRO stage {spec.engine.zero_stage}"
    fallback = spec.engine.model_copy(update={"kind": "ddp", "zero_stage": 0})
    return spec.model_copy(update={"engine": fallback}), note


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled("the job was cancelled")


def _numbers(line: dict[str, Any]) -> dict[str, float]:
    skip = {"kind", "step", "epoch", "time"}
    return {k: float(v) for k, v in line.items() if k not in skip and isinstance(v, int | float)}


def run_job(
    spec: JobSpec,
    workdir: Path,
    *,
    store: ArtifactStore | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
    cancel: threading.Event | None = None,
    resume: bool = False,
) -> JobOutputs:
    """Run the job in `workdir` and return its outputs.

    Raises TrainingFailed with a readable reason when the data, the ranks or the export fail, and
    JobCancelled when `cancel` is set. With `resume`, a workdir that holds this spec's preparation
    is reused and training continues from its last epoch checkpoint (from the start if there is none).
    """
    if spec.engine.kind == "federated":
        from gallery_trainer.federated.coordinator import run_federated_job

        return run_federated_job(spec, workdir.resolve(), store=store, on_progress=on_progress, cancel=cancel)
    from gallery_trainer.launcher import run_ranks

    def emit(update: ProgressUpdate) -> None:
        if on_progress is not None:
            on_progress(update)

    workdir = workdir.resolve()
    epochs = spec.training.epochs
    emit(ProgressUpdate("preparing", 0, epochs, 0))
    run_spec, engine_note = choose_engine(spec)
    _check_cancel(cancel)
    prepared = _reuse_prepared(run_spec, workdir) if resume else None
    resuming = prepared is not None and (workdir / CHECKPOINT_DIR).exists()
    if prepared is None:
        prepared = prepare_job(run_spec, workdir, store)
    if not resuming:
        for stale in (METRICS_FILE, RESULT_FILE, WEIGHTS_FILE, ONNX_FILE, SPEC_FILE, LOG_FILE):
            (workdir / stale).unlink(missing_ok=True)
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
    _check_cancel(cancel)

    latest: dict[str, float] = {}

    def on_metrics(line: dict[str, Any]) -> None:
        latest.update(_numbers(line))
        emit(ProgressUpdate("training", int(line.get("epoch", 0)), epochs, int(line.get("step", 0)), dict(latest)))

    emit(ProgressUpdate("training", 0, epochs, 0))
    run_ranks(run_spec, workdir, free_port(), resume=resuming, on_metrics=on_metrics, cancel=cancel)
    result = json.loads((workdir / RESULT_FILE).read_text())
    _check_cancel(cancel)
    emit(ProgressUpdate("exporting", result["epochs_run"], epochs, 0, dict(latest)))
    outputs = export_outputs(spec, prepared, result, engine_note)
    emit(ProgressUpdate("done", result["epochs_run"], epochs, 0, outputs.metrics))
    return outputs


def export_outputs(
    spec: JobSpec,
    prepared: PreparedJob,
    result: dict[str, Any],
    engine_note: str | None,
    *,
    extra_metrics: dict[str, float] | None = None,
    federation: FederatedLineage | None = None,
) -> JobOutputs:
    """Export to ONNX, check it against PyTorch on the test split and write the stored spec.

    `result` is what training reported (the ranks' result.json, or the federation's equivalent);
    `extra_metrics` are the engine's own figures, and `federation` a federated model's lineage.
    """
    from gallery_common.nn import describe
    from gallery_trainer.export import (
        PARITY_TOLERANCE,
        ExportError,
        export_onnx,
        load_trained_model,
        parity_max_abs_diff,
    )

    job, workdir = prepared.job, prepared.job.workdir
    model = load_trained_model(job, workdir / WEIGHTS_FILE)
    test = load_split(workdir / SPLIT_FILES["test"])
    text = spec.data.is_text
    try:
        if text:
            diff, outputs = _export_text(model, job, test.x)
        else:
            export_onnx(model, job.n_features, workdir / ONNX_FILE)
            diff, outputs = parity_max_abs_diff(model, workdir / ONNX_FILE, test.x)
    except ExportError as exc:
        raise TrainingFailed(f"ONNX export failed: {exc}") from None
    # regression outputs are in target units; float32 rounding grows with their scale
    tolerance = PARITY_TOLERANCE * max(1.0, job.target.scale)
    if not diff <= tolerance:
        raise TrainingFailed(
            f"the ONNX export differs from the PyTorch model by {diff:.3g} on the test split (limit {tolerance:.3g})"
        )
    kept = result["kept"]
    metrics: dict[str, float] = {
        k: float(kept[k]) for k in ("train_loss", "val_loss", "val_accuracy", "val_rmse") if k in kept
    }
    if job.task == "classification":
        metrics["test_accuracy"] = float((outputs.argmax(axis=1) == test.y).mean())
    else:
        metrics["test_rmse"] = float(np.sqrt(((outputs[:, 0] - test.y) ** 2).mean()))
    metrics |= {
        "epochs_run": float(result["epochs_run"]),
        "best_epoch": float(result["best_epoch"]),
        "samples_per_sec": float(result["samples_per_sec"]),
        "onnx_parity_max_abs_diff": diff,
    }
    if result["stopped_early"]:
        metrics["early_stopping_epoch"] = float(result["epochs_run"])
    metrics |= extra_metrics or {}
    notes = [n for n in [engine_note, *result["notes"]] if n]
    stored = {
        "job": spec.model_dump(mode="json"),
        "config_hash": config_hash(spec),
        "dataset_fingerprint": prepared.fingerprint,
        "task": job.task,
        "class_names": job.class_names,
        "feature_names": prepared.feature_names,
        "architecture": {
            "n_features": job.n_features,
            "n_outputs": job.n_outputs,
            "image_shape": list(job.image_shape) if job.image_shape else None,
            "layers": describe(model.network),
        },
        "preprocessing": _preprocessing(job, text),
        "target": {"mean": job.target.mean, "scale": job.target.scale},
        "engine": {k: result[k] for k in ("engine", "world_size", "data_parallel", "pipeline_stages", "zero_stage")},
        "precision": result["precision"],
        "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
    }
    if federation is not None:
        stored["federation"] = federation.model_dump(mode="json")
    (workdir / SPEC_FILE).write_text(json.dumps(stored, indent=2))
    files = {
        "weights": workdir / WEIGHTS_FILE,
        "spec": workdir / SPEC_FILE,
        "onnx": workdir / ONNX_FILE,
        **{f"{name}_split": workdir / filename for name, filename in SPLIT_FILES.items()},
    }
    return JobOutputs(
        files=files,
        signature=_signature(job, text),
        metrics=metrics,
        dataset_fingerprint=prepared.fingerprint,
        config_hash=config_hash(spec),
        leakage=prepared.leakage,
        task=job.task,
        class_names=job.class_names,
        engine=result["engine"],
        engine_note="; ".join(notes) or None,
        federation=federation,
    )


def _export_text(model: Any, job: RankJob, texts: np.ndarray) -> tuple[float, np.ndarray]:
    """Export a text model (vectorizer + network) and compare it with PyTorch on the test texts."""
    import onnx

    from gallery_trainer.text_export import export_text_onnx, text_parity_max_abs_diff

    vectorizer = onnx.load(str(job.workdir / VECTORIZER_FILE))
    export_text_onnx(model, vectorizer, job.n_features, job.workdir / ONNX_FILE)
    return text_parity_max_abs_diff(model, vectorizer, job.workdir / ONNX_FILE, texts)


def _preprocessing(job: RankJob, text: bool) -> dict[str, Any]:
    """What the stored spec records of the preprocessing inside the model."""
    if not text:
        return {
            "order": ["standardize", "select_k_best", "pca"],
            **{name: array.tolist() for name, array in job.transform.arrays().items()},
        }
    from gallery_trainer.text_vectorizer import LOCALE

    settings = job.spec.preparation.vectorizer
    return {
        "order": ["lower_case", "split_on_whitespace", "term_counts", *(["idf"] if settings.idf else []), "l2"],
        "vocabulary_size": job.n_features,
        "idf": settings.idf,
        "locale": LOCALE,
        "vectorizer_file": VECTORIZER_FILE,
    }


def _signature(job: RankJob, text: bool) -> Signature:
    from gallery_trainer.export import signature

    if text:
        from gallery_trainer.text_export import text_signature

        return text_signature(job.n_outputs)
    return signature(job.n_features, job.n_outputs)
