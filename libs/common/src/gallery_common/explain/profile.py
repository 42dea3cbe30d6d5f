"""The `explainer` artifact: what explaining a version's predictions needs beyond its ONNX file, computed
once per version (by the validation gate) and attached to it, so every model-server replica loads it
instead of summarising the training split again.

An NPZ file (read through `gallery_common.contracts.splits.read_npz`: capped, nothing unpickled):

- `background` [K, F] FP32 and `weights` [K]: the training split summarised by k-means (K centres, each
  weighted by the share of rows in its cluster), the background SHAP's base value is the expectation over;
- `sample` [M, F] FP32: up to M training rows drawn at random, from which LIME takes its feature
  statistics and quartiles;
- `image_shape` [3] (or empty), `feature_names` [F] (or empty), `class_names` [C] (or empty), `task`,
  `source_sha256` (the train split summarised).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from gallery_common.contracts.splits import NpzRefused, read_npz

from .layout import InputLayout

ROLE = "explainer"
BACKGROUND_ROWS = 10
SAMPLE_ROWS = 1000
_ARRAYS = ("background", "weights", "sample", "image_shape", "feature_names", "class_names", "task", "source_sha256")


class ProfileRefused(ValueError):
    """An explainer artifact that cannot be used; the message says why."""


@dataclass(frozen=True)
class ExplainerProfile:
    layout: InputLayout
    task: str  # "classification" or "regression"
    class_names: tuple[str, ...] | None
    background: np.ndarray  # [K, F] FP32
    weights: np.ndarray  # [K], sums to 1
    sample: np.ndarray  # [M, F] FP32
    source_sha256: str

    def class_name(self, index: int) -> str:
        names = self.class_names
        return names[index] if names and 0 <= index < len(names) else str(index)


def summarise(x: np.ndarray, rows: int = BACKGROUND_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K-means centres of `x` and the share of rows in each cluster (`x` itself when it has few rows)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) <= rows:
        return x.copy(), np.full(len(x), 1.0 / len(x), dtype=np.float32)
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=rows, n_init=3, random_state=seed).fit(x)
    counts = np.bincount(fitted.labels_, minlength=rows).astype(np.float32)
    return fitted.cluster_centers_.astype(np.float32), counts / counts.sum()


def build_profile(
    x: np.ndarray,
    layout: InputLayout,
    *,
    task: str,
    class_names: list[str] | None,
    source_sha256: str,
    background_rows: int = BACKGROUND_ROWS,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> ExplainerProfile:
    """The profile of a version whose training split's features are `x` [N, F]."""
    if x.ndim != 2 or x.shape[1] != layout.features or len(x) == 0:
        raise ProfileRefused(f"the training split's features are {list(x.shape)}; expected [N>0, {layout.features}]")
    background, weights = summarise(x, background_rows, seed)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(x), size=min(sample_rows, len(x)), replace=False))
    return ExplainerProfile(
        layout,
        task,
        None if class_names is None else tuple(class_names),
        background,
        weights,
        np.ascontiguousarray(x[picked], dtype=np.float32),
        source_sha256,
    )


def encode_profile(profile: ExplainerProfile) -> bytes:
    layout = profile.layout
    out = io.BytesIO()
    np.savez(
        out,
        background=profile.background,
        weights=profile.weights,
        sample=profile.sample,
        image_shape=np.array(layout.image_shape or (), dtype=np.int64),
        feature_names=np.array(layout.feature_names or (), dtype=str),
        class_names=np.array(profile.class_names or (), dtype=str),
        task=np.array(profile.task),
        source_sha256=np.array(profile.source_sha256),
        shape=np.array(layout.shape, dtype=np.int64),
    )
    return out.getvalue()


def decode_profile(data: bytes, *, name: str = "explainer", max_bytes: int | None = None) -> ExplainerProfile:
    """The profile in `data`; ProfileRefused (with the reason) for a file that is not a consistent one."""
    try:
        arrays = read_npz(data, wanted=(*_ARRAYS, "shape"), required=_ARRAYS, name=name, max_bytes=max_bytes).arrays
    except NpzRefused as exc:
        raise ProfileRefused(str(exc)) from None
    background, weights, sample = arrays["background"], arrays["weights"], arrays["sample"]
    if background.ndim != 2 or sample.ndim != 2 or background.shape[1] != sample.shape[1] or not len(background):
        raise ProfileRefused(f"{name}: background {list(background.shape)} and sample {list(sample.shape)} disagree")
    if weights.shape != (len(background),) or not np.isclose(float(weights.sum()), 1.0, atol=1e-3):
        raise ProfileRefused(f"{name}: weights {list(weights.shape)} must be one per background row, summing to 1")
    features = int(background.shape[1])
    picture = tuple(int(d) for d in arrays["image_shape"])
    names = tuple(str(n) for n in arrays["feature_names"])
    if picture and (len(picture) != 3 or int(np.prod(picture)) != features):
        raise ProfileRefused(f"{name}: image_shape {list(picture)} does not hold {features} features")
    if names and len(names) != features:
        raise ProfileRefused(f"{name}: {len(names)} feature names for {features} features")
    shape = tuple(int(d) for d in arrays.get("shape", np.array([features])))
    layout = InputLayout(
        features,
        shape if int(np.prod(shape)) == features else (features,),
        (picture[0], picture[1], picture[2]) if picture else None,
        names or None,
    )
    classes = tuple(str(n) for n in arrays["class_names"])
    return ExplainerProfile(
        layout,
        str(arrays["task"]),
        classes or None,
        background.astype(np.float32),
        weights.astype(np.float32),
        sample.astype(np.float32),
        str(arrays["source_sha256"]),
    )
