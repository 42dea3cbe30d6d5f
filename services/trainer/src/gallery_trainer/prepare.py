"""Data preparation: a seeded (stratified) split, the leakage check, and feature engineering fitted on
the training split only (standardisation, univariate selection, PCA, in that order)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from gallery_common.contracts import is_text_array
from gallery_trainer.data import DataError, Dataset
from gallery_trainer.spec import PreparationSpec, SplitSpec

SPLITS = ("train", "validation", "test")
LEAKAGE_PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))


@dataclass
class Split:
    """One split's raw examples."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class FeatureTransform:
    """Fitted feature engineering: `(x - mean) / scale`, keep `selected` columns, project on `components`."""

    mean: np.ndarray
    scale: np.ndarray
    selected: np.ndarray | None = None
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None

    @property
    def n_inputs(self) -> int:
        return len(self.mean)

    @property
    def n_outputs(self) -> int:
        if self.pca_components is not None:
            return len(self.pca_components)
        return len(self.selected) if self.selected is not None else self.n_inputs

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw features to model inputs, exactly as the exported graph computes them."""
        out = (x.astype(np.float32) - self.mean) / self.scale
        if self.selected is not None:
            out = out[:, self.selected]
        if self.pca_components is not None:
            assert self.pca_mean is not None
            out = (out - self.pca_mean) @ self.pca_components.T
        return out.astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters by name (what the model's preprocessing buffers hold)."""
        named = {"mean": self.mean, "scale": self.scale}
        if self.selected is not None:
            named["selected"] = self.selected
        if self.pca_components is not None and self.pca_mean is not None:
            named["pca_mean"] = self.pca_mean
            named["pca_components"] = self.pca_components
        return named

    @classmethod
    def from_arrays(cls, named: dict[str, np.ndarray]) -> FeatureTransform:
        return cls(
            mean=named["mean"],
            scale=named["scale"],
            selected=named.get("selected"),
            pca_mean=named.get("pca_mean"),
            pca_components=named.get("pca_components"),
        )


@dataclass
class TargetScaling:
    """Regression targets are learned standardised; the exported model maps back with `y * scale + mean`."""

    mean: float = 0.0
    scale: float = 1.0


@dataclass
class PreparedData:
    train: Split
    validation: Split
    test: Split
    transform: FeatureTransform
    target: TargetScaling
    leakage: dict[str, Any]

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def split_indices(y: np.ndarray, spec: SplitSpec, task: str) -> dict[str, np.ndarray]:
    """Seeded train / validation / test indices; stratified by class for classification when asked."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    stratify = spec.stratify and task == "classification"
    # counts, not fractions: 0.15 / 0.85 of 85 must be 15, not a float rounded up to 16
    n_test, n_validation = round(len(y) * spec.test), round(len(y) * spec.validation)
    if min(n_test, n_validation, len(y) - n_test - n_validation) < 1:
        raise DataError(f"preparation.split: {len(y)} examples are too few for three non-empty splits")
    try:
        rest, test = train_test_split(
            indices, test_size=n_test, random_state=spec.seed, stratify=y if stratify else None
        )
        train, validation = train_test_split(
            rest, test_size=n_validation, random_state=spec.seed, stratify=y[rest] if stratify else None
        )
    except ValueError as exc:
        counts = ", ".join(f"{label}: {n}" for label, n in zip(*np.unique(y, return_counts=True), strict=True))
        detail = f" (examples per class: {counts})" if stratify else ""
        raise DataError(f"preparation.split: cannot split {len(y)} examples: {exc}{detail}") from None
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def find_leakage(splits: dict[str, Split]) -> dict[str, np.ndarray]:
    """For each pair (earlier, later) of splits, a mask over `later` of rows whose features appear in `earlier`;
    texts are compared as strings."""
    keys = {name: _row_keys(split.x) for name, split in splits.items()}
    masks = {}
    for earlier, later in LEAKAGE_PAIRS:
        seen = set(keys[earlier])
        masks[f"{earlier}_{later}"] = np.array([key in seen for key in keys[later]], dtype=bool)
    return masks


def _row_keys(x: np.ndarray) -> list[bytes | str]:
    if is_text_array(x):
        return [str(text) for text in x.tolist()]
    return [row.tobytes() for row in np.ascontiguousarray(x, dtype=np.float32)]


def check_leakage(splits: dict[str, Split], policy: str) -> tuple[dict[str, Split], dict[str, Any]]:
    """Count identical feature rows across each pair of splits, then drop them from the later split,
    fail, or only report, as `policy` says. Returns the (possibly reduced) splits and the report."""
    masks = find_leakage(splits)
    duplicates = {pair: int(mask.sum()) for pair, mask in masks.items()}
    report: dict[str, Any] = {"policy": policy, "duplicates": duplicates, "dropped": {"validation": 0, "test": 0}}
    total = sum(duplicates.values())
    if total and policy == "fail":
        listed = ", ".join(f"{pair.replace('_', '/')} {n}" for pair, n in duplicates.items() if n)
        raise DataError(f"preparation.leakage: {total} examples appear in two splits ({listed})")
    if total and policy == "drop":
        drop = {
            "validation": masks["train_validation"],
            "test": masks["train_test"] | masks["validation_test"],
        }
        for name, mask in drop.items():
            report["dropped"][name] = int(mask.sum())
            splits = {**splits, name: Split(splits[name].x[~mask], splits[name].y[~mask])}
            if len(splits[name]) == 0:
                raise DataError(f"preparation.leakage: every {name} example also appears in an earlier split")
    return splits, report


def fit_transform(x: np.ndarray, y: np.ndarray, spec: PreparationSpec, task: str) -> FeatureTransform:
    """Fit the feature engineering the spec asks for on the training examples `x`, `y`."""
    n_features = x.shape[1]
    x64 = x.astype(np.float64)
    if spec.standardize:
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        # a constant feature would divide by zero; centred it is 0 everywhere, which is what it says
        scale = np.where(std > 1e-12, std, 1.0)
    else:
        mean, scale = np.zeros(n_features), np.ones(n_features)
    transform = FeatureTransform(mean=mean.astype(np.float32), scale=scale.astype(np.float32))
    current = transform.apply(x)
    if spec.select_k_best is not None:
        transform.selected = _select_k_best(current, y, spec.select_k_best, task)
        current = transform.apply(x)
    if spec.pca is not None:
        from sklearn.decomposition import PCA

        wanted = spec.pca.components if spec.pca.components is not None else spec.pca.variance
        limit = min(current.shape)
        if spec.pca.components is not None and spec.pca.components > limit:
            raise DataError(f"preparation.pca.components: {spec.pca.components} is more than the data allows ({limit})")
        pca = PCA(n_components=wanted, svd_solver="full").fit(current)
        transform.pca_mean = pca.mean_.astype(np.float32)
        transform.pca_components = np.ascontiguousarray(pca.components_, dtype=np.float32)
    return transform


def _select_k_best(x: np.ndarray, y: np.ndarray, k: int, task: str) -> np.ndarray:
    from sklearn.feature_selection import SelectKBest, f_classif, f_regression

    if k > x.shape[1]:
        raise DataError(f"preparation.select_k_best: k={k} but the data has {x.shape[1]} features")
    selector = SelectKBest(f_classif if task == "classification" else f_regression, k=k)
    with warnings.catch_warnings():
        # constant features have an undefined F score; SelectKBest ranks them last, which is right
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        selector.fit(x, y)
    return selector.get_support(indices=True).astype(np.int64)


def prepare(dataset: Dataset, spec: PreparationSpec) -> PreparedData:
    """Split, check leakage and fit the feature engineering on the training split."""
    indices = split_indices(dataset.y, spec.split, dataset.task)
    splits = {name: Split(dataset.x[idx], dataset.y[idx]) for name, idx in indices.items()}
    splits, leakage = check_leakage(splits, spec.leakage)
    train = splits["train"]
    transform = fit_transform(train.x, train.y, spec, dataset.task)
    target = TargetScaling()
    if dataset.task == "regression":
        std = float(train.y.std())
        target = TargetScaling(mean=float(train.y.mean()), scale=std if std > 1e-12 else 1.0)
    leakage["rows"] = {name: len(split) for name, split in splits.items()}
    return PreparedData(
        train=train,
        validation=splits["validation"],
        test=splits["test"],
        transform=transform,
        target=target,
        leakage=leakage,
    )
