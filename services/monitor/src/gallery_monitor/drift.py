"""Drift of a window of sampled rows against a version's training reference, and the decision rule.

Per feature: PSI over ten quantile bins of the reference and the two-sample KS test. On the
predicted classes: PSI and a chi-square test against the class shares of the training labels.

The rule needs two things at once for a feature to count as drifted: a PSI above the threshold
(the shift is large enough to matter) and a KS p-value below `ks_alpha / features` (Bonferroni:
it is not chance among many features). PSI alone over a few hundred rows has a positive bias and
a long tail; the test alone flags tiny shifts once windows are large. Together, samples from the
training distribution raise an alarm in at most `ks_alpha` of windows.

Features are ranked by importance · PSI when the gate measured the version's feature importance
(`importance.FeatureImportance`): a small shift of a feature the model leans on outranks a large shift
of one it ignores. Without importance they are ranked by PSI, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .drift_stats import DEFAULT_BINS, bin_shares, chi2_goodness_of_fit, ks_two_sample, psi, quantile_edges
from .importance import RANKED_BY_IMPORTANCE, RANKED_BY_PSI, FeatureImportance

if TYPE_CHECKING:
    from .text_drift import TextFindings

TOP_FEATURES_IN_EVIDENCE = 5


@dataclass(frozen=True)
class DriftRule:
    """When a window counts as drifted."""

    psi_threshold: float = 0.2
    ks_alpha: float = 0.001
    min_samples: int = 200
    text_psi_threshold: float = 0.25  # a text input's length and token PSI: drift past it (the usual 0.25)
    text_warn_psi: float = 0.1  # and a warning past this (the usual 0.1)


class ClassShares(Protocol):
    """What the prediction shift compares with: the training labels' classes and their shares."""

    @property
    def classes(self) -> np.ndarray | None: ...

    @property
    def class_shares(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Reference:
    """A version's training split prepared once: sorted columns, bin edges and shares, class shares."""

    sorted_columns: np.ndarray  # [F, N], each row sorted
    edges: tuple[np.ndarray, ...]
    shares: tuple[np.ndarray, ...]
    classes: np.ndarray | None  # class labels seen in training, sorted
    class_shares: np.ndarray | None
    importance: FeatureImportance | None = None  # the gate's, when it covers these features

    @property
    def features(self) -> int:
        return int(self.sorted_columns.shape[0])

    @property
    def rows(self) -> int:
        return int(self.sorted_columns.shape[1])

    @classmethod
    def from_split(
        cls,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        bins: int = DEFAULT_BINS,
        max_rows: int | None = None,
        importance: FeatureImportance | None = None,
    ) -> Reference:
        """Build from the raw features `x` [N, F] and labels `y` [N] (an even subsample past `max_rows`);
        `importance` is kept when it has one value per feature."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"the training features must be a non-empty [rows, features] array, got {x.shape}")
        if max_rows is not None and x.shape[0] > max_rows:
            keep = np.linspace(0, x.shape[0] - 1, max_rows).astype(np.int64)
            x = x[keep]
            y = None if y is None else np.asarray(y)[keep]
        columns = np.sort(x.T, axis=1)
        edges = tuple(quantile_edges(column, bins) for column in columns)
        shares = tuple(bin_shares(column, e) for column, e in zip(columns, edges, strict=True))
        classes = class_shares = None
        labels = None if y is None else np.asarray(y).reshape(-1)
        if labels is not None and len(labels) == x.shape[0] and np.issubdtype(labels.dtype, np.integer):
            classes, counts = np.unique(labels, return_counts=True)
            class_shares = counts / counts.sum()
        if importance is not None and importance.features != x.shape[1]:
            importance = None
        return cls(columns, edges, shares, classes, class_shares, importance)


@dataclass(frozen=True)
class FeatureDrift:
    feature: int
    psi: float
    ks: float
    p_value: float
    importance: float | None = None  # the gate's mean |SHAP| of the feature
    score: float | None = None  # importance · PSI: what the feature's drift ranks by
    name: str | None = None  # the training data's name of the feature, when known
    threshold: float | None = None  # the PSI this row is judged against when not the SLO's (a text input's)

    def describe(self) -> str:
        return f"feature {self.feature} ({self.name})" if self.name else f"feature {self.feature}"


@dataclass
class DriftReport:
    """One window's drift figures and verdict; `reasons` say why it drifted or why it was not judged.

    `features` are ranked as `ranked_by` says, the most concerning first (None: nothing was measured).
    """

    samples: int
    features: list[FeatureDrift] = field(default_factory=list)
    prediction_psi: float | None = None
    prediction_p_value: float | None = None
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    ranked_by: str | None = None
    text: TextFindings | None = None  # a text input's figures beyond the rows (unseen tokens, odd texts)

    def evidence(self, rule: DriftRule) -> dict[str, object]:
        """What a `model.degraded` event carries: the rule, the top-ranked features and the prediction shift
        (and for a text input its thresholds, unseen-token share and odd texts)."""
        found: dict[str, object] = {
            "samples": self.samples,
            "psi_threshold": rule.psi_threshold,
            "ks_alpha": rule.ks_alpha,
            "max_psi": max((f.psi for f in self.features), default=None),
            "ranked_by": self.ranked_by,
            "features": [_evidence(f) for f in self.features[:TOP_FEATURES_IN_EVIDENCE]],
            "prediction_psi": self.prediction_psi,
            "prediction_p_value": self.prediction_p_value,
            "reasons": self.reasons,
        }
        if self.text is not None:
            found["text"] = self.text.evidence()
        return found


def _evidence(f: FeatureDrift) -> dict[str, object]:
    found: dict[str, object] = {
        "feature": f.feature,
        "psi": round(f.psi, 4),
        "ks": round(f.ks, 4),
        "p_value": f.p_value,
    }
    if f.importance is not None and f.score is not None:
        found.update(importance=round(f.importance, 6), score=round(f.score, 6))
    if f.name:
        found["name"] = f.name
    if f.threshold is not None:
        found["psi_threshold"] = f.threshold
    return found


def ranked(features: list[FeatureDrift], importance: FeatureImportance | None) -> list[FeatureDrift]:
    """The features with the gate's importance attached, the most concerning first: by importance · PSI
    when there is importance (PSI breaks ties), else by PSI."""
    if importance is None:
        return sorted(features, key=lambda f: -f.psi)
    weighted = [
        replace(
            f,
            importance=float(importance.values[f.feature]),
            score=float(importance.values[f.feature] * f.psi),
            name=importance.name(f.feature),
        )
        for f in features
    ]
    return sorted(weighted, key=lambda f: (-(f.score or 0.0), -f.psi))


def prediction_shift(reference: ClassShares, predictions: np.ndarray) -> tuple[float, float] | None:
    """(PSI, chi-square p-value) of the predicted classes against the training labels' class shares."""
    if reference.classes is None or reference.class_shares is None or len(predictions) == 0:
        return None
    classes = np.union1d(reference.classes, predictions)
    expected = np.zeros(len(classes))
    expected[np.searchsorted(classes, reference.classes)] = reference.class_shares
    observed = np.bincount(np.searchsorted(classes, predictions), minlength=len(classes)).astype(np.float64)
    return psi(expected, observed / observed.sum()), chi2_goodness_of_fit(observed, expected)


def evaluate_drift(
    reference: Reference, rows: np.ndarray, predictions: np.ndarray | None, rule: DriftRule
) -> DriftReport:
    """Compare a window of sampled rows [n, F] (and their predicted classes) with the reference."""
    n = int(rows.shape[0])
    report = DriftReport(samples=n)
    if n == 0:
        report.reasons.append("no samples in the window")
        return report
    if rows.shape[1] != reference.features:
        report.reasons.append(
            f"samples have {rows.shape[1]} features, the training reference {reference.features}: not compared"
        )
        return report
    columns = np.sort(rows.T, axis=1)
    measured = []
    for j, column in enumerate(columns):
        d, p = ks_two_sample(column, reference.sorted_columns[j])
        shift = psi(reference.shares[j], bin_shares(column, reference.edges[j]))
        measured.append(FeatureDrift(j, shift, d, p))
    report.features = ranked(measured, reference.importance)
    report.ranked_by = RANKED_BY_PSI if reference.importance is None else RANKED_BY_IMPORTANCE
    measure_predictions(report, reference, predictions)
    if n < rule.min_samples:
        report.reasons.append(f"{n} samples in the window, {rule.min_samples} needed to judge drift")
        return report
    alpha = rule.ks_alpha / reference.features
    for f in report.features:  # in rank order: the alert's reason names the top ones
        if f.psi > rule.psi_threshold and f.p_value < alpha:
            found = f"{f.describe()}: PSI {f.psi:.3f} > {rule.psi_threshold:g} and KS {f.ks:.3f} (p {f.p_value:.2g})"
            if f.importance is not None:
                found += f"; importance {f.importance:.3g}, importance · PSI {f.score:.3g}"
            report.reasons.append(found)
    judge_predictions(report, rule)
    report.drifted = bool(report.reasons)
    return report


def measure_predictions(report: DriftReport, reference: ClassShares, predictions: np.ndarray | None) -> None:
    """Put the shift of the predicted classes (PSI, chi-square p) into the report, when there are any."""
    if predictions is not None and len(predictions):
        shift_and_p = prediction_shift(reference, predictions)
        if shift_and_p is not None:
            report.prediction_psi, report.prediction_p_value = shift_and_p


def judge_predictions(report: DriftReport, rule: DriftRule) -> None:
    """Add a reason when the predicted classes moved past the rule's PSI with a significant chi-square."""
    if (
        report.prediction_psi is not None
        and report.prediction_p_value is not None
        and report.prediction_psi > rule.psi_threshold
        and report.prediction_p_value < rule.ks_alpha
    ):
        report.reasons.append(
            f"predicted classes: PSI {report.prediction_psi:.3f} > {rule.psi_threshold:g} "
            f"(chi-square p {report.prediction_p_value:.2g})"
        )
