"""How a classifier is scored wherever its figures are compared: the registry's gate decides with
them and the optimizer holds its variants to the same figures, so both compute them here."""

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
