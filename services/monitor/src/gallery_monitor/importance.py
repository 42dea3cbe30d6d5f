"""How much each input feature matters to a version's answers, as the registry's validation gate measured
it (`evaluation_report.feature_importance`: mean |SHAP| per flat feature on a sample of the test split),
so drift is ranked by importance x drift and an alert names the features that move the model first.

A version the gate did not explain (older versions, importance turned off, a model it could not
explain) has none: drift is then ranked by PSI alone, and the views say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

RANKED_BY_IMPORTANCE = "importance · PSI"
RANKED_BY_PSI = "PSI: the gate recorded no feature importance for this version"


@dataclass(frozen=True)
class FeatureImportance:
    """Mean |SHAP| of each flat input feature, and each feature's name for a table whose names are known."""

    values: np.ndarray  # [F], non-negative
    names: tuple[str, ...] | None = None

    @property
    def features(self) -> int:
        return len(self.values)

    @classmethod
    def from_report(cls, report: Mapping[str, Any] | None) -> FeatureImportance | None:
        """The importance in a gate's evaluation report; None when it has none (or one that does not hold)."""
        found = (report or {}).get("feature_importance")
        values = found.get("values") if isinstance(found, Mapping) else None
        if not isinstance(values, list) or not values:
            return None
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if array.ndim != 1 or not np.isfinite(array).all() or (array < 0).any():
            return None
        assert isinstance(found, Mapping)
        return cls(array, _table_names(found, len(array)))

    def name(self, feature: int) -> str | None:
        """The feature's own name, when the training data had one (not the gate's "feature 3")."""
        if self.names is None or not 0 <= feature < len(self.names):
            return None
        name = self.names[feature]
        return None if name == f"feature {feature}" else name


def _table_names(found: Mapping[str, Any], features: int) -> tuple[str, ...] | None:
    """A table's groups are its features, one each; a picture's are patches, which name no feature."""
    if found.get("image_shape") is not None:
        return None
    names = {
        group["index"]: group["name"]
        for group in found.get("groups") or []
        if isinstance(group, Mapping) and isinstance(group.get("index"), int) and isinstance(group.get("name"), str)
    }
    if set(names) != set(range(features)):
        return None
    return tuple(names[i] for i in range(features))
