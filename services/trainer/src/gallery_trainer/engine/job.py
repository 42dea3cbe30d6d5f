"""What the ranks read from the job's workdir, and the names of the files a job writes there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from gallery_common.contracts import NpzRefused, read_split, write_split
from gallery_trainer.prepare import FeatureTransform, Split, TargetScaling
from gallery_trainer.spec import JobSpec, parse_spec

JOB_FILE = "job.json"
PREPROCESSING_FILE = "preprocessing.safetensors"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
WEIGHTS_FILE = "weights.safetensors"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
CHECKPOINT_DIR = "checkpoints"
SPLIT_FILES = {"train": "train_split.npz", "validation": "validation_split.npz", "test": "test_split.npz"}
# a text job: the ranks train on these FP32 features of the (augmented) texts, computed by the vectorizer
# graph in VECTORIZER_FILE; the published splits keep the texts
FEATURE_FILES = {"train": "train_features.npz", "validation": "validation_features.npz"}
VECTORIZER_FILE = "vectorizer.onnx"


class RankError(Exception):
    """A rank cannot go on for a reason the user can fix; the message names the spec field."""


@dataclass
class RankJob:
    """Everything a rank needs besides the splits: the spec and what preparation learned from the data."""

    spec: JobSpec
    workdir: Path
    task: str
    n_features: int
    n_outputs: int
    class_names: list[str] | None
    image_shape: tuple[int, int, int] | None
    transform: FeatureTransform
    target: TargetScaling

    @property
    def n_classes(self) -> int:
        return len(self.class_names or [])

    def save(self) -> None:
        """Write job.json and the fitted preprocessing into the workdir."""
        doc: dict[str, Any] = {
            "spec": self.spec.model_dump(mode="json"),
            "task": self.task,
            "n_features": self.n_features,
            "n_outputs": self.n_outputs,
            "class_names": self.class_names,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "target": {"mean": self.target.mean, "scale": self.target.scale},
        }
        save_file(self.transform.arrays(), str(self.workdir / PREPROCESSING_FILE))
        (self.workdir / JOB_FILE).write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> RankJob:
        doc = json.loads((workdir / JOB_FILE).read_text())
        return cls(
            spec=parse_spec(doc["spec"]),
            workdir=workdir,
            task=doc["task"],
            n_features=doc["n_features"],
            n_outputs=doc["n_outputs"],
            class_names=doc["class_names"],
            image_shape=tuple(doc["image_shape"]) if doc["image_shape"] else None,  # type: ignore[arg-type]
            transform=FeatureTransform.from_arrays(load_file(str(workdir / PREPROCESSING_FILE))),
            target=TargetScaling(**doc["target"]),
        )


def save_split(path: Path, split: Split) -> None:
    """An NPZ with `x` (raw FP32 features) and `y` (int64 classes or FP32 targets), in the shared split format."""
    write_split(path, split.x, split.y)


def load_split(path: Path) -> Split:
    """A split the job wrote, read back by `gallery_common.contracts` (capped at GALLERY_MAX_SPLIT_BYTES, nothing
    unpickled); RankError says why it cannot be, so the job fails with that reason."""
    try:
        split = read_split(path)
    except NpzRefused as exc:
        raise RankError(str(exc)) from None
    return Split(split.x, split.y)


def load_training_split(workdir: Path, name: str) -> Split:
    """What the ranks train (`train`) or evaluate (`validation`) on: a text job's feature split where one
    was written, else the split itself."""
    features = workdir / FEATURE_FILES[name]
    return load_split(features if features.exists() else workdir / SPLIT_FILES[name])
