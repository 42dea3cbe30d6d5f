"""An online experiment between two regressors on their squared error: each row a client gave the true value
of is a sample (`model.outcome` of kind `value`), lower is better, and the version that errs less wins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from gallery_common.events import ModelOutcome
from gallery_deployer.experiments.controller import ExperimentPlan, design_of, outcome_figures
from gallery_deployer.experiments.stats import ArmOutcomes, sequential_verdict

COMMON: dict[str, Any] = {
    "model": "prices",
    "version": "2",
    "request_id": "r1",
    "caller": "shop",
    "given_by": "shop",
    "answered_at": datetime(2026, 12, 7, tzinfo=UTC),
    "rows": 2,
}


def test_a_valued_outcome_gives_a_sample_per_row_and_says_nothing_of_accuracy_or_reward() -> None:
    valued = ModelOutcome(**COMMON, kind="value", value=[[41.5], [38.0]], squared_error=[2.25, 4.0])
    figures = outcome_figures(valued, "squared_error")
    assert figures is not None and (figures.n, figures.total, figures.total_sq) == (2, 6.25, 2.25**2 + 16.0)
    assert outcome_figures(valued, "accuracy") is None and outcome_figures(valued, "reward") is None
    labelled = ModelOutcome(**COMMON, kind="label", label=[1, 0], correct=[True, False], correct_rows=1)
    assert outcome_figures(labelled, "squared_error") is None


def test_the_version_that_errs_less_wins() -> None:
    plan = ExperimentPlan("prices", [1, 2], [50.0, 50.0], "squared_error", mde=0.5)
    plan.check()  # a difference of mean squared errors, not a proportion: any positive mde
    design = design_of("squared_error", plan.mde, plan.alpha, None)
    assert design.kind == "mean" and not design.higher_is_better
    rng = np.random.default_rng(3)
    arms = []
    for version, spread in ((1, 2.0), (2, 1.0)):  # version 2's errors are half as large
        errors = (rng.normal(scale=spread, size=2000) ** 2).tolist()
        arms.append(ArmOutcomes(str(version), len(errors), float(sum(errors)), float(sum(e * e for e in errors))))
    verdict = sequential_verdict(arms[0], arms[1:], design)
    assert verdict.status == "winner" and verdict.winner == "2", verdict
    assert verdict.effect < 0  # the challenger's mean squared error minus the control's
