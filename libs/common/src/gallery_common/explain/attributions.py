"""Feature attributions for one model's answers: Kernel SHAP (the `shap` library) and LIME (the `lime`
library), over any `predict` function, so the model server, the gate and the tests share one
implementation.

Attributions are computed per feature group (`layout.FeatureGroups`): each feature of a table, each
patch of a picture. A coalition of groups keeps the row's values in its groups and takes the others from
each background row (the k-means summary of the training split, weighted); the model's output is
averaged over the background. So for SHAP the attributions add up to the model's output minus the base
value (the expected output over the background), and every feature's share of its group's attribution
comes back in the row's own shape, ready to draw as a heat map.

Classifiers are explained in probability (softmax of their logits, unless they answer probabilities),
for one target class: the one asked for, else the predicted one. Regressors in their output. The same
seed gives the same answer: each explanation seeds its own generators.

Blocking and CPU-heavy: run it in a worker process (the model server's explain pool) or a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .layout import FeatureGroups
from .profile import ExplainerProfile

Method = Literal["shap", "lime"]
METHODS: tuple[Method, ...] = ("shap", "lime")
# LIME fits a linear model to random perturbations and needs more of them than Kernel SHAP needs
# coalitions (the lime library's own default is 5000)
DEFAULT_NSAMPLES: dict[str, int] = {"shap": 200, "lime": 1000}
Predict = Callable[[np.ndarray], np.ndarray]  # raw model outputs [n, C] for rows [n, F]
LIME_KERNEL_WIDTH = 0.25  # lime_image's width for a binary patch space (cosine distance)
_CHUNK_ROWS = 8192


class ExplainRefused(ValueError):
    """The request cannot be explained as asked (bad target, row width, ...); the message says why."""


@dataclass(frozen=True)
class ExplainSettings:
    method: Method = "shap"
    target: int | None = None  # class index; None: the predicted class
    nsamples: int = 200  # model evaluations of coalitions (SHAP) or perturbed samples (LIME) per row
    seed: int = 0
    patch: int | None = None  # patch side for pictures; None: about 4 patches per side


@dataclass(frozen=True)
class RowExplanation:
    target: int
    predicted: int | None  # the class the model picks (None for a regressor)
    output: float  # the model's output for the target (a probability for a classifier)
    base_value: float  # SHAP: expected output over the background; LIME: the local model's intercept
    groups: np.ndarray  # [G] one attribution per feature group
    attributions: np.ndarray  # [F] each feature's share of its group's attribution
    details: dict[str, Any] = field(default_factory=dict)  # method-specific (LIME: local fit score, prediction)


def probabilities(raw: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: softmax, unless each row already is a distribution."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size and raw.min() >= 0 and raw.max() <= 1 and np.allclose(raw.sum(axis=1), 1.0, atol=1e-3):
        return raw
    shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Explainer:
    """Explains rows of one model: `predict` gives its raw outputs, `profile` its background and layout."""

    def __init__(self, predict: Predict, profile: ExplainerProfile) -> None:
        self._raw = predict
        self.profile = profile
        self.classifier = profile.task != "regression"

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """[n, C] what is explained: class probabilities, or the regressor's outputs."""
        parts = []
        for start in range(0, len(rows), _CHUNK_ROWS):
            raw = np.asarray(self._raw(np.ascontiguousarray(rows[start : start + _CHUNK_ROWS], dtype=np.float32)))
            raw = raw.reshape(len(raw), -1)
            parts.append(probabilities(raw) if self.classifier and raw.shape[1] > 1 else raw.astype(np.float64))
        return np.concatenate(parts)

    def explain(self, rows: np.ndarray, settings: ExplainSettings) -> list[RowExplanation]:
        rows = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        features = self.profile.layout.features
        if rows.shape[1] != features:
            raise ExplainRefused(f"a row has {rows.shape[1]} values; this model's explainer expects {features}")
        groups = self.profile.layout.groups(settings.patch)
        answers = self.outputs(rows)
        explained = []
        for row, answer in zip(rows, answers, strict=True):
            predicted = int(np.argmax(answer)) if self.classifier and len(answer) > 1 else None
            target = self._target(settings.target, predicted, len(answer))
            if settings.method == "shap":
                explained.append(self._shap(row, answer, target, predicted, groups, settings))
            else:
                explained.append(self._lime(row, answer, target, predicted, groups, settings))
        return explained

    def _target(self, asked: int | None, predicted: int | None, outputs: int) -> int:
        if asked is None:
            return predicted if predicted is not None else 0
        if not 0 <= asked < outputs:
            raise ExplainRefused(f"target {asked} is not one of this model's {outputs} outputs (0..{outputs - 1})")
        return asked

    def _coalitions(self, row: np.ndarray, groups: FeatureGroups, target: int) -> Callable[[np.ndarray], np.ndarray]:
        """f(keep [n, G]) -> [n]: the target's output, averaged over the weighted background."""
        background, weights = self.profile.background, self.profile.weights.astype(np.float64)

        def value(keep: np.ndarray) -> np.ndarray:
            keep = np.atleast_2d(keep)
            composed = groups.compose(keep, row, background)  # [n, B, F]
            out = self.outputs(composed.reshape(-1, row.shape[0]))[:, target].reshape(len(keep), len(background))
            return out @ weights

        return value

    def _shap(
        self,
        row: np.ndarray,
        answer: np.ndarray,
        target: int,
        predicted: int | None,
        groups: FeatureGroups,
        settings: ExplainSettings,
    ) -> RowExplanation:
        import shap

        count = groups.count
        value = self._coalitions(row, groups, target)
        explainer = shap.KernelExplainer(value, np.zeros((1, count)), link="identity")
        # fewer evaluations than 2 per group leave the regression underdetermined: let AIC pick the groups
        l1_reg: str | bool = False if settings.nsamples >= 2 * count else "aic"
        np.random.seed(settings.seed)  # KernelExplainer samples coalitions from numpy's global generator
        values = np.asarray(
            explainer.shap_values(np.ones((1, count)), nsamples=settings.nsamples, l1_reg=l1_reg, silent=True)
        ).reshape(-1)[:count]
        base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        return RowExplanation(
            target, predicted, float(answer[target]), base, values, groups.spread(values), {"l1_reg": l1_reg}
        )

    def _lime(
        self,
        row: np.ndarray,
        answer: np.ndarray,
        target: int,
        predicted: int | None,
        groups: FeatureGroups,
        settings: ExplainSettings,
    ) -> RowExplanation:
        if self.profile.layout.image_shape is None:
            weights, intercept, details = self._lime_tabular(row, target, settings)
        else:
            weights, intercept, details = self._lime_patches(row, target, groups, settings)
        return RowExplanation(
            target, predicted, float(answer[target]), intercept, weights, groups.spread(weights), details
        )

    def _lime_tabular(self, row: np.ndarray, target: int, settings: ExplainSettings) -> tuple[np.ndarray, float, dict]:
        """LIME's tabular explainer over the training sample (quartile-discretised features)."""
        from lime.lime_tabular import LimeTabularExplainer

        layout = self.profile.layout
        mode = "classification" if self.classifier else "regression"
        explainer = LimeTabularExplainer(
            self.profile.sample,
            mode=mode,
            feature_names=[layout.feature_name(i) for i in range(layout.features)],
            discretize_continuous=True,
            random_state=settings.seed,
        )
        predict = self.outputs if self.classifier else (lambda x: self.outputs(x)[:, target])
        found = explainer.explain_instance(
            row,
            predict,
            labels=(target,),
            num_features=layout.features,
            num_samples=settings.nsamples,
        )
        key = target if self.classifier else next(iter(found.local_exp))
        weights = np.zeros(layout.features)
        for index, weight in found.local_exp[key]:
            weights[index] = weight
        intercept = found.intercept.get(key, 0.0)
        details = {
            "score": _first(found.score if np.isscalar(found.score) else found.score[key]),
            "local_prediction": _first(found.local_pred),
        }
        return weights, float(intercept), details

    def _lime_patches(
        self, row: np.ndarray, target: int, groups: FeatureGroups, settings: ExplainSettings
    ) -> tuple[np.ndarray, float, dict]:
        """LIME over patches, as `lime_image` does over superpixels: random patches switched off (taken from
        the background), a weighted linear model fitted by `lime_base.LimeBase`."""
        from lime.lime_base import LimeBase

        rng = np.random.default_rng(settings.seed)
        keep = rng.integers(0, 2, size=(settings.nsamples, groups.count))
        keep[0] = 1  # the row itself first, as LIME does
        labels = self._coalitions(row, groups, target)(keep)
        distances = _cosine_distance_to_all_ones(keep)

        def kernel(d: np.ndarray) -> np.ndarray:
            return np.sqrt(np.exp(-(d**2) / LIME_KERNEL_WIDTH**2))

        fitter = LimeBase(kernel, random_state=np.random.RandomState(settings.seed))
        intercept, pairs, score, local = fitter.explain_instance_with_data(
            keep.astype(np.float64), labels[:, None], distances, 0, groups.count, feature_selection="none"
        )
        weights = np.zeros(groups.count)
        for index, weight in pairs:
            weights[index] = weight
        return weights, float(intercept), {"score": float(score), "local_prediction": _first(local)}


def _first(value: Any) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def _cosine_distance_to_all_ones(keep: np.ndarray) -> np.ndarray:
    kept = keep.sum(axis=1).astype(np.float64)
    norms = np.sqrt(kept) * np.sqrt(keep.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, kept / norms, 0.0)
    return 1.0 - cosine


def global_importance(explainer: Explainer, rows: np.ndarray, nsamples: int, seed: int = 0) -> dict[str, Any]:
    """Mean |SHAP| per feature group over `rows`, each row explained for its predicted class; the answer
    is JSON-ready: `groups` (names and values, most important first) and `values` per flat feature."""
    settings = ExplainSettings("shap", None, nsamples, seed)
    explained = explainer.explain(rows, settings)
    per_group = np.mean([np.abs(e.groups) for e in explained], axis=0)
    layout = explainer.profile.layout
    groups = layout.groups()
    order = np.argsort(-per_group, kind="stable")
    return {
        "method": "kernel-shap",
        "target": "predicted class" if explainer.classifier else "output",
        "rows": len(explained),
        "nsamples": nsamples,
        "background_rows": len(explainer.profile.background),
        "shape": list(layout.shape),
        "image_shape": None if layout.image_shape is None else list(layout.image_shape),
        "groups": [{"name": groups.names[i], "index": int(i), "importance": float(per_group[i])} for i in order],
        "values": [float(v) for v in np.abs(groups.spread(per_group))],
    }
