"""A model's validation policy applied to an evaluation report: every failed criterion, in words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..schemas import ValidationPolicy

# Metrics where smaller is better; for every other metric larger is better.
LOWER_IS_BETTER = frozenset({"loss", "ece", "rmse", "mae", "latency_p50_ms", "latency_p99_ms"})


@dataclass(frozen=True)
class ChampionResult:
    """The champion's figure on the challenger's test split."""

    alias: str
    version: int
    metric: str
    value: float | None


def metric_value(report: Mapping[str, Any], name: str) -> float | None:
    """A scalar metric from the report, or None if the report has no number under that name."""
    value = report.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def threshold_failures(policy: ValidationPolicy, report: Mapping[str, Any]) -> list[str]:
    """Every min / max criterion the report misses, or names a metric it does not have."""
    reasons: list[str] = []
    for name, minimum in sorted(policy.min_metrics.items()):
        value = metric_value(report, name)
        if value is None:
            reasons.append(f"metric {name} not produced (the policy requires {name} >= {minimum:g})")
        elif value < minimum:
            reasons.append(f"{name} {value:.4g} is below the policy minimum {minimum:g}")
    for name, maximum in sorted(policy.max_metrics.items()):
        value = metric_value(report, name)
        if value is None:
            reasons.append(f"metric {name} not produced (the policy requires {name} <= {maximum:g})")
        elif value > maximum:
            reasons.append(f"{name} {value:.4g} is above the policy maximum {maximum:g}")
    return reasons


def champion_failure(policy: ValidationPolicy, report: Mapping[str, Any], champion: ChampionResult) -> str | None:
    """Why the challenger loses to the champion beyond the tolerance, or None if it does not."""
    metric = policy.champion_metric
    challenger = metric_value(report, metric)
    who = f"the champion ({champion.alias}, version {champion.version})"
    if challenger is None or champion.value is None:
        return f"champion metric {metric} not produced, so the challenger cannot be compared with {who}"
    tolerance = policy.champion_tolerance
    if metric in LOWER_IS_BETTER:
        worse = challenger > champion.value + tolerance
    else:
        worse = challenger < champion.value - tolerance
    if not worse:
        return None
    return (
        f"{metric} {challenger:.4g} is worse than {who} at {champion.value:.4g} on the same test split, "
        f"beyond the tolerance {tolerance:g}"
    )
