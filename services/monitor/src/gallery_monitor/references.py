"""Training references for drift: a version's `train_split` from the registry, loaded once per version,
with the feature importance the validation gate recorded in the version's evaluation report.

Blocking (registry over HTTP, artifact store): call from worker threads. A version whose split
cannot be had is asked for again only after `retry_s`, so evaluations do not hammer the registry. A
hostile split (over GALLERY_MAX_ARTIFACT_BYTES or GALLERY_MAX_SPLIT_BYTES, object arrays, not an NPZ)
is one that cannot be had: the monitor logs why and runs without that reference.

A text model's split holds one text per row (a unicode array [N], `gallery_common.contracts.splits`): its
reference is a `text_drift.TextReference` of the texts' lengths and tokens instead of feature columns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import NpzMissingArrays, NpzRefused, NpzUnreadable, RegistryReader, read_features
from gallery_common.contracts.splits import is_text_array
from gallery_common.errors import GalleryError
from gallery_common.telemetry import get_logger

from .drift import Reference
from .importance import FeatureImportance
from .text_drift import TextReference
from .text_profile import TextLimits

TRAIN_SPLIT = "train_split"
log = get_logger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """A version's training features `x` [N, F] (or texts [N]), labels `y` when the split has them, and the
    gate's feature importance when it measured one."""

    x: np.ndarray
    y: np.ndarray | None = None
    importance: FeatureImportance | None = None


SplitLoader = Callable[[str, int], TrainingData]


class ReferenceUnavailable(Exception):
    """No training reference for a version; the message says why."""


def registry_split_loader(registry: RegistryReader, store: ArtifactStore) -> SplitLoader:
    """Load `x` and `y` (a classifier's labels; none for a regressor) of a version's train_split (its URI and
    sha256 from the registry, the bytes from the store) and the feature importance in the version's
    evaluation report."""

    def load(model: str, version: int) -> TrainingData:
        try:
            found = registry.get_version(model, version)
        except GalleryError as exc:
            raise ReferenceUnavailable(f"registry: {exc.message}") from exc
        artifact = found.artifact(TRAIN_SPLIT)
        if artifact is None:
            raise ReferenceUnavailable(f"{model}:{version} has no {TRAIN_SPLIT} artifact in the registry")
        try:
            data = store.get(artifact.uri, artifact.sha256)
        except GalleryError as exc:
            raise ReferenceUnavailable(f"{TRAIN_SPLIT} of {model}:{version}: {exc.message}") from exc
        x, y = read_split(data, f"{TRAIN_SPLIT} of {model}:{version}")
        if found.task == "regression":
            y = None  # a regressor's targets are no classes to compare its predictions with, integer or not
        return TrainingData(x, y, FeatureImportance.from_report(found.evaluation_report))

    return load


def read_split(data: bytes, what: str, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`x` (and `y` when present) of an NPZ split, read by `gallery_common.contracts` (capped at
    GALLERY_MAX_SPLIT_BYTES, nothing unpickled); ReferenceUnavailable says why not."""
    try:
        return read_features(data, name=what, max_bytes=max_bytes)
    except NpzMissingArrays as exc:
        raise ReferenceUnavailable(f"{what} holds no `x` array (it has {', '.join(exc.found) or 'nothing'})") from exc
    except NpzUnreadable as exc:
        raise ReferenceUnavailable(f"{what} is not a readable NPZ file: {exc.detail}") from exc
    except NpzRefused as exc:
        raise ReferenceUnavailable(str(exc)) from exc


@dataclass
class _Miss:
    reason: str
    retry_at: float


class ReferenceCache:
    """Prepared references by (model, version), and why the missing ones are missing."""

    def __init__(
        self, loader: SplitLoader, *, max_rows: int, retry_s: float, text_limits: TextLimits | None = None
    ) -> None:
        self.loader = loader
        self.max_rows = max_rows
        self.retry_s = retry_s
        self.text_limits = text_limits or TextLimits()
        self._ready: dict[tuple[str, int], Reference | TextReference] = {}
        self._missing: dict[tuple[str, int], _Miss] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: int) -> Reference | TextReference:
        """The version's reference (a text model's: a TextReference), loaded on first use;
        ReferenceUnavailable says why there is none."""
        key = (model, version)
        with self._lock:  # one load per version, even when the API and the evaluator ask at once
            if key in self._ready:
                return self._ready[key]
            miss = self._missing.get(key)
            if miss is not None and time.monotonic() < miss.retry_at:
                raise ReferenceUnavailable(miss.reason)
            try:
                data = self.loader(model, version)
                reference = self._prepare(data)
            except (ReferenceUnavailable, ValueError) as exc:
                self._missing[key] = _Miss(str(exc), time.monotonic() + self.retry_s)
                log.warning("drift_reference_unavailable", model=model, version=version, reason=str(exc))
                raise ReferenceUnavailable(str(exc)) from exc
            self._missing.pop(key, None)
            self._ready[key] = reference
            log.info(
                "drift_reference_loaded",
                model=model,
                version=version,
                rows=reference.rows,
                texts=isinstance(reference, TextReference),
                importance=getattr(reference, "importance", None) is not None,
            )
            return reference

    def _prepare(self, data: TrainingData) -> Reference | TextReference:
        if is_text_array(data.x):
            return TextReference.from_texts(data.x, data.y, limits=self.text_limits, max_rows=self.max_rows)
        return Reference.from_split(data.x, data.y, max_rows=self.max_rows, importance=data.importance)
