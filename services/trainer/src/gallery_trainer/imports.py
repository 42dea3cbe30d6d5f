"""A model trained elsewhere, brought in as if the trainer had trained it: the `model.trained` of an import.

The user gives the ONNX file and the data the model is judged by: the rows it was trained on (`train`:
the monitor's drift reference, the explainer's background, the distilled student's lessons) and rows it
never saw (`test`: the validation gate's evaluation), and optionally a `validation` split (INT8's
calibration, the canary's replay); without one, the test rows serve as validation too. Each is an NPZ of
`x` [N, F] (a text classifier's: unicode strings [N], one text per row) and `y`: an integer class per
row, or a regressor's targets.

The ONNX file is adapted to the `features` / `logits` contract (`onnx_adapt`), then run on the test rows
in a sandbox (time and memory limits, as the gate and the optimizer run untrusted models): an answer of
the wrong shape, a label the model cannot give, or a failure is refused with the reason before anything
is stored. The files go under `runs/<run id>/` beside the original, a run records what was changed, and
`model.trained` is published: the gate validates it, and the optimizer, deployer and monitor take it as
any version. There are no PyTorch weights, so the optimizer builds what needs none (the distilled
student; INT8 and FP16 where the graph allows) and names the variants it cannot (pruned).

An import is identified by its content (project, name, every file's sha256, the options): sending it
again, after a time-out or a crash half-way, stores the same keys and publishes the same event id, so
it is registered once.

Blocking (artifact store, sandbox, database, publish): call from a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.names import INPUT_NAME, MODEL_NAME_RULE, OUTPUT_NAME, TEXT_INPUT, is_model_name
from gallery_common.contracts.refs import TensorSpec
from gallery_common.contracts.scoring import target_columns
from gallery_common.contracts.splits import NpzRefused, Split, is_text_array, read_split
from gallery_common.errors import InvalidRequest
from gallery_common.events import ArtifactRef, Lineage, ModelTrained, Signature
from gallery_common.sandbox import LimitExceeded, Limits, SandboxFailed, run_limited
from gallery_common.settings import GallerySettings
from gallery_common.telemetry import get_logger

from .onnx_adapt import Adapted, ModelRefused, Scores, Task, adapt_model, declare_output_width
from .publish import PublishFn, artifacts_json, upload_outputs
from .records import Run, utcnow

log = get_logger(__name__)
MAX_NAME = 200


@dataclass
class ImportRequest:
    """What the user sent: the model's name, the ONNX file and the splits, as bytes."""

    model: str
    onnx: bytes
    filename: str
    train: bytes
    test: bytes
    validation: bytes | None = None
    class_names: list[str] | None = None
    scores: Scores = "auto"
    project: str | None = None
    task: Task = "classification"
    feature_names: list[str] | None = None


class ImportPublic(BaseModel):
    """What an import did: the run and event it made, and how the model was changed to fit."""

    run_id: str
    event_id: str
    model: str
    project: str
    task: str
    features: int = Field(description="numeric features per row; 0 for a text model, which takes one text per row")
    text: bool = Field(default=False, description="the model takes texts: `text` BYTES [N], one per row")
    outputs: int = Field(description="a classifier's classes, a regressor's targets")
    scores: str = Field(description="what the file's output held: logits, probabilities (logits are their log), values")
    changes: list[str] = Field(description="each change made to the file, in words; empty when it already fitted")
    metrics: dict[str, float] = Field(description="test_accuracy, or a regressor's test_rmse, measured at import")
    artifacts: dict[str, Any]
    already_imported: bool = Field(description="the same import was made before: nothing new was stored or sent")


@dataclass
class _Splits:
    train: Split
    test: Split
    validation: Split | None


class ModelImporter:
    """Imports models into one trainer's database, artifact store and event stream."""

    def __init__(self, engine: Engine, store: ArtifactStore, publish: PublishFn, settings: GallerySettings) -> None:
        self.engine = engine
        self.store = store
        self.publish = publish
        self.settings = settings
        self.limits = Limits.from_settings(settings)

    def run(self, request: ImportRequest, place: Callable[[str | None], str]) -> ImportPublic:
        """Adapt, check, store and announce the import; ModelRefused (422) says what is wrong with it.
        `place` turns the requested project into the one the model lands in (and refuses a caller
        who may not write there)."""
        if not is_model_name(request.model):
            raise InvalidRequest(f"model: {request.model!r} is not a model name ({MODEL_NAME_RULE})")
        project = place(request.project)
        if request.task == "regression" and request.class_names is not None:
            raise ModelRefused("class names are for classifiers; a regressor has none")
        adapted = adapt_model(request.onnx, request.task, request.scores)
        if adapted.text and request.feature_names is not None:
            raise ModelRefused("feature names are for a table's columns; a text model takes one text per row")
        _check_names("feature names", request.feature_names, adapted.features, "features the model takes")
        splits = _read_splits(request, adapted.features, adapted.text)
        try:
            outputs = self._answers(adapted.model, splits.test.x)
        except ModelRefused as exc:
            if any("batch" in change for change in adapted.changes):
                raise ModelRefused(f"{exc} (the file fixed its batch size: export it with a variable one)") from None
            raise
        _check_shape(outputs, splits)
        if request.task == "regression":
            width = _check_predictions(outputs, splits)
            metrics = {"test_rmse": float(np.sqrt(((outputs - target_columns(splits.test.y)) ** 2).mean()))}
        else:
            width = _check_scores(outputs, splits, request.class_names)
            metrics = {"test_accuracy": float((outputs.argmax(axis=1) == splits.test.y).mean())}
        adapted = declare_output_width(adapted, width)
        digest = _identity(project, request)
        run_id, event_id = f"import-{digest[:12]}", f"imported:{digest[:32]}"
        with Session(self.engine) as session:
            earlier = session.get(Run, run_id)
            if earlier is not None and earlier.event_id is not None:
                return _public(earlier, adapted, width, already=True)
        refs = self._store(run_id, request, adapted)
        run = Run(
            id=run_id,
            job_id=run_id,
            model=request.model,
            project=project,
            status="running",
            params=_params(request, adapted),
            metrics=metrics,
            system={"engine": "import"},
            artifacts=artifacts_json(refs),
            task=request.task,
            class_names=request.class_names,
            config_hash=hashlib.sha256(request.onnx).hexdigest(),
            dataset_fingerprint=hashlib.sha256(request.train).hexdigest(),
        )
        with Session(self.engine) as session:
            session.merge(run)
            session.commit()
        payload = ModelTrained(
            model=request.model,
            project=project,
            run_id=run_id,
            artifacts={role: ref for role, ref in refs.items() if role != SOURCE_ROLE},
            task=request.task,
            class_names=request.class_names,
            signature=Signature(
                inputs=[
                    TensorSpec(name=TEXT_INPUT, datatype="BYTES", shape=[-1])
                    if adapted.text
                    else TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, adapted.features])
                ],
                outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, width])],
            ),
            metrics=metrics,
            lineage=Lineage(
                training_job_id=run_id, dataset_fingerprint=run.dataset_fingerprint, config_hash=run.config_hash
            ),
        )
        self.publish(payload, event_id)
        # the run as it was stored, now finished (merge writes it whole: the published event names it)
        run.event_id, run.status, run.finished_at = event_id, "succeeded", utcnow()
        with Session(self.engine) as session:
            stored = session.merge(run)
            session.commit()
            session.refresh(stored)
            log.info("model imported", model=request.model, project=project, run_id=run_id, changes=adapted.changes)
            return _public(stored, adapted, width, already=False)

    def _answers(self, model: bytes, x: np.ndarray) -> np.ndarray:
        """The adapted model's logits for `x`, computed in the sandbox; ModelRefused when it cannot answer."""
        with tempfile.TemporaryDirectory(prefix="gallery-import-") as tmp:
            model_path, rows_path = Path(tmp) / "model.onnx", Path(tmp) / "x.npy"
            model_path.write_bytes(model)
            rows = x if is_text_array(x) else np.ascontiguousarray(x, dtype=np.float32)
            np.save(rows_path, rows, allow_pickle=False)
            try:
                answer = run_limited(
                    _logits_in_child,
                    (str(model_path), str(rows_path)),
                    limits=self.limits,
                    what="the import check",
                    preload=(__name__,),
                )
            except LimitExceeded as exc:
                raise ModelRefused(str(exc)) from None
            except SandboxFailed as exc:
                raise ModelRefused(f"the model could not answer the test rows: {exc}") from None
            return np.load(io.BytesIO(answer), allow_pickle=False)

    def _store(self, run_id: str, request: ImportRequest, adapted: Adapted) -> dict[str, ArtifactRef]:
        extra: dict[str, tuple[str, bytes]] = {
            "onnx": ("model.onnx", adapted.model),
            "train_split": ("train.npz", request.train),
            "validation_split": ("validation.npz", request.validation or request.test),
            "test_split": ("test.npz", request.test),
            SOURCE_ROLE: (f"source-{_safe_name(request.filename)}", request.onnx),
        }
        if request.feature_names is not None:
            # what readers of a version's spec take its column names from (explanations, the Gallery's
            # try-it form, the edge bundle); it records no network, so the optimizer builds nothing from it
            spec = {"source": "import", "task": request.task, "feature_names": request.feature_names}
            extra["spec"] = ("spec.json", json.dumps(spec, indent=2).encode())
        return upload_outputs(self.store, run_id, {}, extra)


# the file as the user sent it, kept beside the adapted one; the run records it, the event does not
SOURCE_ROLE = "source_onnx"


def _logits_in_child(model_path: str, rows_path: str) -> bytes:
    """Runs in the sandbox: the model's logits for every row, as .npy bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(Path(model_path).read_bytes(), options, providers=["CPUExecutionProvider"])
    x = np.load(rows_path, allow_pickle=False)
    name = TEXT_INPUT if is_text_array(x) else INPUT_NAME
    outputs = np.concatenate([session.run([OUTPUT_NAME], {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    buffer = io.BytesIO()
    np.save(buffer, outputs, allow_pickle=False)
    return buffer.getvalue()


def _read_splits(request: ImportRequest, features: int, text: bool) -> _Splits:
    def one(data: bytes, name: str) -> Split:
        try:
            split = read_split(data, name=f"the {name} split")
        except NpzRefused as exc:
            raise ModelRefused(str(exc)) from None
        if split.is_text != text:
            held, takes = ("texts", "numeric features") if split.is_text else ("numbers", "texts (unicode x [N])")
            raise ModelRefused(f"the {name} split holds {held}; the model takes {takes}")
        if not text:
            _check_features(split, name, features)
        if request.task == "regression":
            if split.y.ndim not in (1, 2) or not np.issubdtype(split.y.dtype, np.number):
                raise ModelRefused(f"the {name} split's y must be numbers: one target per row [N], or [N, K]")
            if not np.all(np.isfinite(split.y)):
                raise ModelRefused(f"the {name} split's y holds NaN or infinite targets")
            return Split(split.x, split.y.astype(np.float32))
        if split.y.ndim != 1 or not _integral(split.y):
            raise ModelRefused(
                f"the {name} split's y must be one class index (an integer) per row "
                "(a regressor's targets: import it with task regression)"
            )
        return Split(split.x, split.y.astype(np.int64))

    validation = one(request.validation, "validation") if request.validation is not None else None
    return _Splits(train=one(request.train, "train"), test=one(request.test, "test"), validation=validation)


def _check_features(split: Split, name: str, features: int) -> None:
    if split.x.ndim != 2 or split.x.shape[1] != features:
        raise ModelRefused(
            f"the {name} split has {split.x.shape[1] if split.x.ndim == 2 else '?'} features per row; "
            f"the model takes {features}"
        )
    if not np.all(np.isfinite(split.x)):
        raise ModelRefused(f"the {name} split holds NaN or infinite features")


def _integral(y: np.ndarray) -> bool:
    if np.issubdtype(y.dtype, np.integer):
        return True
    return bool(np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)))


def _splits_of(splits: _Splits) -> list[tuple[str, Split]]:
    named = [("train", splits.train), ("test", splits.test), ("validation", splits.validation)]
    return [(name, split) for name, split in named if split is not None]


def _check_shape(outputs: np.ndarray, splits: _Splits) -> None:
    if outputs.ndim != 2 or outputs.shape[0] != len(splits.test):
        raise ModelRefused(
            f"the model answered {len(splits.test)} test rows with shape {list(outputs.shape)}; "
            "an imported model answers [rows, outputs]"
        )
    if not np.all(np.isfinite(outputs)):
        raise ModelRefused("the model answered NaN or infinite values on the test rows")


def _check_scores(outputs: np.ndarray, splits: _Splits, class_names: list[str] | None) -> int:
    """The number of classes the model answers with, once its answers and the labels agree."""
    classes = int(outputs.shape[1])
    if classes < 2:
        raise ModelRefused(
            f"the model answers {classes} score per row; a classifier answers one per class (2 or more); "
            "import a regressor with task regression"
        )
    for name, split in _splits_of(splits):
        bad = split.y[(split.y < 0) | (split.y >= classes)]
        if bad.size:
            raise ModelRefused(f"the {name} split has label {int(bad[0])}; the model answers classes 0-{classes - 1}")
    _check_names("class names", class_names, classes, "classes the model answers")
    return classes


def _check_names(what: str, names: list[str] | None, count: int, counted: str) -> None:
    """Names (of classes, of features) one per column, distinct, 1-200 characters each."""
    if names is None:
        return
    if len(names) != count:
        raise ModelRefused(f"{len(names)} {what} given for the {count} {counted}")
    if len(set(names)) != len(names) or any(not n or len(n) > MAX_NAME for n in names):
        raise ModelRefused(f"{what} must be distinct, 1 to {MAX_NAME} characters each")


def _check_predictions(outputs: np.ndarray, splits: _Splits) -> int:
    """The number of targets a regressor predicts, once every split has as many per row."""
    targets = int(outputs.shape[1])
    for name, split in _splits_of(splits):
        given = target_columns(split.y).shape[1]
        if given != targets:
            raise ModelRefused(f"the {name} split has {given} targets per row; the model predicts {targets}")
    return targets


def _identity(project: str, request: ImportRequest) -> str:
    """The import's content digest: the same files, names and options give the same run and event."""
    parts = {
        "project": project,
        "model": request.model,
        "onnx": hashlib.sha256(request.onnx).hexdigest(),
        "train": hashlib.sha256(request.train).hexdigest(),
        "test": hashlib.sha256(request.test).hexdigest(),
        "validation": hashlib.sha256(request.validation).hexdigest() if request.validation is not None else None,
        "class_names": request.class_names,
        "scores": request.scores,
        "task": request.task,
        "feature_names": request.feature_names,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _params(request: ImportRequest, adapted: Adapted) -> dict[str, Any]:
    return {
        "source": "import",
        "file": request.filename,
        "scores": adapted.scores,
        "changes": adapted.changes,
        "validation": "given" if request.validation is not None else "the test split",
        "task": request.task,
    }


def _safe_name(filename: str) -> str:
    """The file's last path part, in letters, digits, '.', '_' and '-' (else `model.onnx`)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".")
    return cleaned[:100] or "model.onnx"


def _public(run: Run, adapted: Adapted, width: int, *, already: bool) -> ImportPublic:
    return ImportPublic(
        run_id=run.id,
        event_id=run.event_id or "",
        model=run.model,
        project=run.project,
        task=run.task or "classification",
        features=adapted.features,
        text=adapted.text,
        outputs=width,
        scores=adapted.scores,
        changes=adapted.changes,
        metrics=dict(run.metrics),
        artifacts=dict(run.artifacts),
        already_imported=already,
    )


__all__ = ["ImportPublic", "ImportRequest", "ModelImporter", "ModelRefused"]
