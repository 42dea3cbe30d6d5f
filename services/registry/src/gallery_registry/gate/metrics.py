"""Evaluation metrics in plain numpy: the registry image carries no torch and no scikit-learn.

Definitions follow scikit-learn's defaults (macro-F1 over the labels seen in truth or prediction,
zero where undefined; R² averaged uniformly over outputs), so figures agree with a trainer that
computes them with scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gallery_common.contracts.scoring import macro_f1, regression_scores

ECE_BINS = 15

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def cross_entropy(logits: FloatArray, labels: IntArray) -> float:
    """Mean negative log-likelihood of the true labels under the softmax of `logits`."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def accuracy(labels: IntArray, predicted: IntArray) -> float:
    return float((labels == predicted).mean())


def per_class_recall(labels: IntArray, predicted: IntArray, n_classes: int) -> dict[int, float]:
    """Recall of every class that occurs in `labels` (a class with no examples has no recall)."""
    out: dict[int, float] = {}
    for cls in range(n_classes):
        support = labels == cls
        if support.any():
            out[cls] = float((predicted[support] == cls).mean())
    return out


def expected_calibration_error(probabilities: FloatArray, labels: IntArray, bins: int = ECE_BINS) -> float:
    """ECE: |accuracy - confidence| per equal-width confidence bin, weighted by the bin's share.

    Bins are (k/bins, (k+1)/bins], the first one closed at 0 (Guo et al., 2017).
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right=True puts a confidence equal to an upper edge into that edge's bin
    bin_of = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = bin_of == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def confusion_matrix(labels: IntArray, predicted: IntArray, n_classes: int) -> list[list[int]]:
    """Counts by true class (rows) and predicted class (columns)."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return [[int(n) for n in row] for row in matrix]


def reliability_bins(probabilities: FloatArray, labels: IntArray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram behind the ECE: per non-empty confidence bin, its bounds, row count,
    mean confidence and accuracy (the same bins as `expected_calibration_error`)."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out: list[dict[str, float]] = []
    for b in range(bins):
        members = bin_of == b
        if members.any():
            out.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return out


def classification_metrics(
    logits: FloatArray, labels: IntArray, class_names: Sequence[str] | None = None
) -> dict[str, object]:
    """accuracy, macro_f1, loss, ece, per_class_recall and class_counts (keyed by class name), the
    confusion matrix (rows: true class, columns: predicted, in `labels` order), reliability bins and n_test."""
    probabilities = softmax(logits.astype(np.float64))
    predicted = probabilities.argmax(axis=1)
    n_classes = logits.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    return {
        "accuracy": accuracy(labels, predicted),
        "macro_f1": macro_f1(labels, predicted),
        "loss": cross_entropy(logits, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class_recall": {names[c]: r for c, r in per_class_recall(labels, predicted, n_classes).items()},
        "class_counts": {names[c]: int(n) for c, n in enumerate(np.bincount(labels, minlength=n_classes))},
        "confusion_matrix": {"labels": names, "matrix": confusion_matrix(labels, predicted, n_classes)},
        "reliability": reliability_bins(probabilities, labels),
        "n_test": len(labels),
    }


def regression_metrics(predictions: FloatArray, targets: FloatArray) -> dict[str, object]:
    """rmse, mae, r2 (uniform average over outputs) and n_test; both arrays shaped [N, K]."""
    return {**regression_scores(predictions, targets), "n_test": len(targets)}


def percentile_ms(durations_s: Sequence[float], q: float) -> float:
    """The q-th percentile of durations given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(durations_s) * 1000.0, q))
