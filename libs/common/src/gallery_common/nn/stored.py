"""The trainer's model rebuilt from what the registry stores: the `spec` JSON and the safetensors weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.torch import load_file

from .architectures import ExportedModel, build_network


@dataclass
class StoredArchitecture:
    """The layer description of the stored spec's `job.model` section."""

    architecture: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    dropout: float = 0.0
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3


@dataclass
class StoredTransform:
    """The fitted preprocessing of the stored spec's `preprocessing` section."""

    mean: np.ndarray
    scale: np.ndarray
    selected: np.ndarray | None = None
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None

    @property
    def n_outputs(self) -> int:
        if self.pca_components is not None:
            return len(self.pca_components)
        return len(self.selected) if self.selected is not None else len(self.mean)


@dataclass
class StoredTarget:
    mean: float = 0.0
    scale: float = 1.0


def _array(section: dict[str, Any], key: str, dtype: type) -> np.ndarray | None:
    value = section.get(key)
    return None if value is None else np.asarray(value, dtype=dtype)


def _text_transform(preprocessing: dict[str, Any]) -> StoredTransform | None:
    """A text model's spec records its vectorizer, not the standardisation of the vectorizer's outputs:
    those arrays are only in the weights (`network.0.mean`, `network.0.scale`). Placeholders of the
    vocabulary's width give the network its shape; loading the weights replaces them."""
    if "mean" in preprocessing or "vocabulary_size" not in preprocessing:
        return None
    width = int(preprocessing["vocabulary_size"])
    return StoredTransform(mean=np.zeros(width, dtype=np.float32), scale=np.ones(width, dtype=np.float32))


def stored_parts(
    spec: dict[str, Any],
) -> tuple[StoredArchitecture, StoredTransform, StoredTarget, int, tuple[int, int, int] | None]:
    """The architecture, preprocessing, target scaling, output count and image shape a stored spec describes.

    Raises ValueError naming the missing or malformed section.
    """
    try:
        model = spec["job"]["model"]
        architecture = spec["architecture"]
        preprocessing = spec["preprocessing"]
        layers = StoredArchitecture(
            architecture=model.get("architecture", "mlp"),
            hidden=[int(h) for h in model.get("hidden", [128])],
            activation=model.get("activation", "relu"),
            dropout=float(model.get("dropout", 0.0)),
            channels=[int(c) for c in model.get("channels", [16, 32])],
            kernel_size=int(model.get("kernel_size", 3)),
        )
        transform = _text_transform(preprocessing) or StoredTransform(
            mean=np.asarray(preprocessing["mean"], dtype=np.float32),
            scale=np.asarray(preprocessing["scale"], dtype=np.float32),
            selected=_array(preprocessing, "selected", np.int64),
            pca_mean=_array(preprocessing, "pca_mean", np.float32),
            pca_components=_array(preprocessing, "pca_components", np.float32),
        )
        target = StoredTarget(**(spec.get("target") or {}))
        n_outputs = int(architecture["n_outputs"])
        shape = architecture.get("image_shape")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the stored spec does not describe a model: missing or malformed {exc}") from None
    image_shape = (int(shape[0]), int(shape[1]), int(shape[2])) if shape else None
    return layers, transform, target, n_outputs, image_shape


def load_stored_model(spec: dict[str, Any], weights: Path) -> ExportedModel:
    """The exported model (raw features in, logits out) with the stored weights, in eval mode on the CPU.

    Raises ValueError when the spec is malformed or the weights do not fit its architecture.
    """
    layers, transform, target, n_outputs, image_shape = stored_parts(spec)
    model = ExportedModel(build_network(layers, transform, n_outputs, image_shape), target)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"the weights do not fit the stored architecture: {first}") from None
    return model.eval()
