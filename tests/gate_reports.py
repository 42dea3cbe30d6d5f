"""The `feature_importance` entry of a validation gate's evaluation report, as the gate writes it
(services/registry gate/importance.py), for the tests of what reads it: the model card and the monitor."""

from __future__ import annotations

from collections.abc import Sequence


def feature_importance(
    values: Sequence[float], names: Sequence[str], image_shape: list[int] | None = None
) -> dict[str, object]:
    """Mean |SHAP| `values` per feature group named `names` (for a table, one per feature), most important first."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return {
        "method": "kernel-shap",
        "target": "predicted class",
        "rows": 32,
        "nsamples": 400,
        "background_rows": 10,
        "shape": [len(values)],
        "image_shape": image_shape,
        "groups": [{"name": names[i], "index": i, "importance": values[i]} for i in order],
        "values": list(values),
        "seed": 0,
        "seconds": 0.2,
    }
