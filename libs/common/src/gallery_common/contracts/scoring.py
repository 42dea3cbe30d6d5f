"""How a model is scored wherever its figures are compared: the registry's gate decides with them and
the optimizer holds its variants to the same figures, so both compute them here."""

from __future__ import annotations

import numpy as np


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean F1 over every label in truth or prediction; F1 is 0 where undefined."""
    scores = []
    for cls in np.union1d(labels, predicted):
        true_positive = float(np.sum((predicted == cls) & (labels == cls)))
        denominator = float(np.sum(predicted == cls) + np.sum(labels == cls))
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def regression_scores(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """rmse (averaged over outputs), mae and r2 (uniform average over outputs); both arrays [N, K]."""
    predictions = predictions.astype(np.float64)
    targets = targets.astype(np.float64)
    errors = predictions - targets
    residual = (errors**2).sum(axis=0)
    spread = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    # scikit-learn's convention for a constant target: 1 if predicted exactly, else 0
    r2_per_output = np.where(spread > 0, 1 - residual / np.where(spread > 0, spread, 1), (residual == 0) * 1.0)
    return {
        "rmse": float(np.sqrt((errors**2).mean(axis=0)).mean()),
        "mae": float(np.abs(errors).mean()),
        "r2": float(r2_per_output.mean()),
    }


def target_columns(y: np.ndarray) -> np.ndarray:
    """A regressor's targets as [N, K]: one column when a split holds one target per row."""
    return y.reshape(len(y), -1)


# a regressor's answers agree when each output is within this share of the reference's spread
AGREEMENT_TOLERANCE = 0.1


def prediction_agreement(
    predictions: np.ndarray, reference: np.ndarray, tolerance: float = AGREEMENT_TOLERANCE
) -> float:
    """Share of rows on which a regressor's `predictions` agree with `reference`'s (both [N, K]): every output
    within `tolerance` times the spread (standard deviation) of the reference's predictions of it. What the
    same top class is for a classifier: an optimized variant against FP32, a canary against production."""
    predictions, reference = target_columns(predictions), target_columns(reference)
    if len(reference) == 0:
        return 1.0
    spread = reference.astype(np.float64).std(axis=0)
    # constant predictions have no spread: their size (or 1) stands in for it
    scale = np.where(spread > 0, spread, np.maximum(np.abs(reference).mean(axis=0), 1.0))
    close = np.abs(predictions.astype(np.float64) - reference) <= tolerance * scale
    return float(close.all(axis=1).mean())
