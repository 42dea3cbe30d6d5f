"""Drift ranked by the gate's feature importance · PSI: an alert names first the drifting feature the model
leans on, not the one that moved most; without importance it keeps the PSI order and says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gate_reports import feature_importance
from registry_fakes import InMemoryRegistry
from test_monitor_evaluator import Published
from test_monitor_hostile_splits import ingest, monitor_over

from gallery_common.artifacts import FileArtifactStore
from gallery_common.contracts import write_split
from gallery_monitor.drift import DriftRule, Reference, evaluate_drift
from gallery_monitor.evaluator import evaluate
from gallery_monitor.importance import RANKED_BY_IMPORTANCE, RANKED_BY_PSI, FeatureImportance

RULE = DriftRule(psi_threshold=0.2, ks_alpha=0.001, min_samples=200)
NAMES = ["sepal length", "petal width", "sepal width"]
# what the gate measured: the model leans on feature 1 and hardly looks at feature 0
IMPORTANCE = [0.01, 0.4, 0.05]


def gate_report(values: list[float] = IMPORTANCE, image_shape: list[int] | None = None) -> dict[str, Any]:
    """An evaluation report with the gate's `feature_importance`."""
    return {"accuracy": 0.9, "feature_importance": feature_importance(values, NAMES, image_shape)}


def training(n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def shifted_window(seed: int = 1) -> np.ndarray:
    """Feature 0 moves far (PSI ~1.5), feature 1 a little (PSI ~0.3): both drift by the rule."""
    window = np.random.default_rng(seed).normal(size=(400, 3)).astype(np.float32)
    window[:, 0] += 1.5
    window[:, 1] += 0.5
    return window


def test_an_important_feature_that_drifts_a_little_outranks_an_unimportant_one_that_drifts_a_lot() -> None:
    importance = FeatureImportance.from_report(gate_report())
    assert importance is not None and importance.names == tuple(NAMES)
    report = evaluate_drift(Reference.from_split(training(), importance=importance), shifted_window(), None, RULE)

    assert report.drifted and report.ranked_by == RANKED_BY_IMPORTANCE
    by_feature = {f.feature: f for f in report.features}
    assert by_feature[0].psi > 3 * by_feature[1].psi  # feature 0 moved much more...
    assert [f.feature for f in report.features][:2] == [1, 0]  # ...but feature 1 matters more to the model
    top = report.features[0]
    assert top.importance == 0.4 and top.score == pytest.approx(0.4 * top.psi) and top.name == "petal width"
    assert report.reasons[0].startswith(f"feature 1 (petal width): PSI {top.psi:.3f} > 0.2 and KS ")
    assert report.reasons[0].endswith(f"; importance 0.4, importance · PSI {top.score:.3g}")
    assert report.reasons[1].startswith("feature 0 (sepal length): PSI ")

    evidence = report.evidence(RULE)
    assert evidence["ranked_by"] == RANKED_BY_IMPORTANCE
    first = evidence["features"][0]  # type: ignore[index]
    assert (first["feature"], first["name"], first["importance"]) == (1, "petal width", 0.4)
    assert first["score"] == pytest.approx(0.4 * first["psi"], rel=1e-3)


def test_without_importance_drift_keeps_the_psi_order_and_says_so() -> None:
    report = evaluate_drift(Reference.from_split(training()), shifted_window(), None, RULE)
    assert report.drifted and report.ranked_by == RANKED_BY_PSI
    assert [f.feature for f in report.features][:2] == [0, 1]
    assert report.features[0].importance is None and report.reasons[0].startswith("feature 0: PSI ")
    assert "importance" not in report.reasons[0]
    assert "importance" not in report.evidence(RULE)["features"][0]  # type: ignore[index]


@pytest.mark.parametrize(
    "report",
    [
        None,
        {"accuracy": 0.9},
        {"feature_importance": {"error": "no explainer profile: no train_split artifact"}},
        {"feature_importance": {"values": [0.1, float("nan"), 0.2]}},
        {"feature_importance": {"values": [0.1, -0.5, 0.2]}},
        {"feature_importance": {"values": "0.1, 0.2"}},
        {"feature_importance": {"values": None, "groups": [{"name": "patch (0:4, 0:4)", "index": 0}]}},
    ],
    ids=["no-report", "no-importance", "gate-error", "nan", "negative", "not-a-list", "values-left-out"],
)
def test_a_report_without_usable_importance_gives_none(report: dict[str, Any] | None) -> None:
    assert FeatureImportance.from_report(report) is None


def test_a_picture_has_no_feature_names_and_importance_of_another_width_is_not_used() -> None:
    picture = FeatureImportance.from_report(gate_report(image_shape=[1, 1, 3]))
    assert picture is not None and picture.names is None and picture.name(1) is None
    wider = FeatureImportance.from_report({"feature_importance": {"values": [0.1, 0.2, 0.3, 0.4]}})
    assert wider is not None and wider.names is None  # no groups to name them by
    assert Reference.from_split(training(), importance=wider).importance is None  # 4 values for 3 features


async def test_the_alert_names_the_important_feature_first_with_both_numbers(tmp_path: Path) -> None:
    store = FileArtifactStore((tmp_path / "artifacts").as_uri())
    write_split(tmp_path / "train.npz", training(), np.zeros(2000, np.int64))
    split = store.put("models/iris/train_split.npz", tmp_path / "train.npz")
    registry = InMemoryRegistry()
    for version in (1, 2):
        registry.add_version("iris", version, {"train_split": split})
    explained = registry.versions[("iris", 1)]
    registry.versions[("iris", 1)] = explained.model_copy(update={"evaluation_report": gate_report()})
    monitor = monitor_over(store, registry, tmp_path, "monitor")
    window = shifted_window()
    ingest(monitor, "1", window)
    ingest(monitor, "2", window)

    published = Published()
    await evaluate(monitor, published)

    alerts = {payload.version: payload for payload, _ in published}
    assert sorted(alerts) == [1, 2]
    first = alerts[1].evidence["features"][0]
    assert (first["feature"], first["name"], first["importance"]) == (1, "petal width", 0.4)
    assert alerts[1].reason.startswith("drift over 60 s (400 samples): feature 1 (petal width): PSI ")
    assert f"importance 0.4, importance · PSI {first['score']:.3g}" in alerts[1].reason
    assert alerts[1].reason.endswith(f"(features ranked by {RANKED_BY_IMPORTANCE})")
    # the same window on a version the gate did not explain: the biggest shift first, and why
    assert alerts[2].evidence["features"][0]["feature"] == 0
    assert alerts[2].reason.startswith("drift over 60 s (400 samples): feature 0: PSI ")
    assert alerts[2].reason.endswith(
        "(features ranked by PSI: the gate recorded no feature importance for this version)"
    )
    view = monitor.drift("iris", 1, None)
    assert view.ranked_by == RANKED_BY_IMPORTANCE and [f.feature for f in view.features][:2] == [1, 0]
