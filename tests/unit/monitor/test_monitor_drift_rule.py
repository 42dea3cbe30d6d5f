"""The drift decision rule on seeded data: quiet on the training distribution, quick on a shift."""

from __future__ import annotations

import numpy as np

from gallery_monitor.drift import DriftRule, Reference, evaluate_drift

RULE = DriftRule(psi_threshold=0.2, ks_alpha=0.001, min_samples=200)
WEIGHTS = np.random.default_rng(99).normal(size=(8, 3))


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Eight features of different shapes, one of them integer-valued (ties), like real tabular data."""
    columns = [
        rng.normal(0, 1, n) + shift,
        rng.normal(5, 2, n),
        rng.exponential(1.0, n),
        rng.uniform(-1, 1, n),
        rng.poisson(3, n).astype(float),
        rng.lognormal(0, 0.5, n),
        rng.normal(0, 0.1, n),
        rng.integers(0, 16, n).astype(float),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    """The 'model': a fixed linear classifier over standardised features."""
    z = (x - np.array([0, 5, 1, 0, 3, 1.1, 0, 7.5])) / np.array([1, 2, 1, 0.6, 1.7, 0.6, 0.1, 4.6])
    return (z @ WEIGHTS).argmax(axis=1).astype(np.int32)


def reference(seed: int = 0) -> Reference:
    x = draw(np.random.default_rng(seed), 2000)
    return Reference.from_split(x, classify(x))


def test_no_more_than_one_false_alarm_in_100_windows_of_training_data() -> None:
    ref = reference()
    rng = np.random.default_rng(1)
    alarms = 0
    largest_psi = 0.0
    for _ in range(100):
        window = draw(rng, 250)
        report = evaluate_drift(ref, window, classify(window), RULE)
        assert report.samples == 250 and len(report.features) == 8
        largest_psi = max(largest_psi, max(f.psi for f in report.features))
        alarms += report.drifted
    assert alarms <= 1, f"{alarms} false alarms in 100 windows"
    # the windows are small enough that PSI alone wanders: the KS half of the rule is what keeps it quiet
    assert largest_psi > 0.05


def test_many_discrete_features_stay_quiet_too() -> None:
    """64 pixel-like integer features (as the digits data set): ties everywhere, many comparisons."""
    rng = np.random.default_rng(2)
    centre = rng.uniform(0, 16, 64)

    def pixels(n: int) -> np.ndarray:
        return np.clip(np.round(rng.normal(centre, 3, size=(n, 64))), 0, 16).astype(np.float32)

    ref = Reference.from_split(pixels(1500), rng.integers(0, 10, 1500))
    alarms = sum(evaluate_drift(ref, pixels(200), None, RULE).drifted for _ in range(100))
    assert alarms <= 1


def test_a_shift_starting_mid_window_alerts_within_two_windows() -> None:
    ref = reference()
    rng = np.random.default_rng(3)
    before = draw(rng, 250)
    assert not evaluate_drift(ref, before, classify(before), RULE).drifted
    # the shift (one standard deviation on feature 0) starts half way through the next window
    half = np.concatenate([draw(rng, 125), draw(rng, 125, shift=1.0)])
    full = draw(rng, 250, shift=1.0)
    verdicts = [evaluate_drift(ref, window, classify(window), RULE) for window in (half, full)]
    assert any(v.drifted for v in verdicts)
    drifted = next(v for v in verdicts if v.drifted)
    assert drifted.reasons[0].startswith("feature 0: PSI ")
    worst = max(drifted.features, key=lambda f: f.psi)
    assert worst.feature == 0 and worst.psi > RULE.psi_threshold and worst.p_value < RULE.ks_alpha / 8


def test_a_model_whose_predictions_collapse_drifts_on_the_predicted_classes() -> None:
    ref = reference()
    window = draw(np.random.default_rng(4), 300)
    report = evaluate_drift(ref, window, np.zeros(300, dtype=np.int32), RULE)
    assert report.drifted
    assert report.prediction_psi is not None and report.prediction_psi > 0.2
    assert [r for r in report.reasons if r.startswith("predicted classes: PSI")]
    assert not [r for r in report.reasons if r.startswith("feature")]


def test_a_window_below_the_minimum_is_shown_but_not_judged() -> None:
    ref = reference()
    window = draw(np.random.default_rng(5), 50, shift=3.0)
    report = evaluate_drift(ref, window, None, RULE)
    assert not report.drifted
    assert report.features[0].psi > 1.0  # the figures are there for people to see
    assert report.reasons == ["50 samples in the window, 200 needed to judge drift"]


def test_rows_of_another_width_are_not_compared() -> None:
    report = evaluate_drift(reference(), np.zeros((300, 5), np.float32), None, RULE)
    assert not report.drifted and report.features == []
    assert report.reasons == ["samples have 5 features, the training reference 8: not compared"]


def test_evidence_names_the_worst_features_first() -> None:
    ref = reference()
    window = draw(np.random.default_rng(6), 300, shift=2.0)
    report = evaluate_drift(ref, window, classify(window), RULE)
    evidence = report.evidence(RULE)
    assert evidence["samples"] == 300 and evidence["psi_threshold"] == 0.2
    assert evidence["features"][0]["feature"] == 0
    assert len(evidence["features"]) == 5
