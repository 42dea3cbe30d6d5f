"""The recommendation per target (`<hardware class>/<provider>`): the same rule as the generic one, applied
to the figures each target gave.

On every target, the fastest variant at batch 32 (p50) whose score there (accuracy, a regressor's r2) is
within the budget of FP32's there (FP32's CPU score when FP32 itself could not run on that target). A target on which no
variant could be measured gets no recommendation, and the report says why.
"""

from __future__ import annotations

import math

from gallery_optimizer.policy import BASELINE
from gallery_optimizer.report import VariantReport
from gallery_optimizer.target_measure import TargetMeasurement, TargetRecommendation


def recommend_per_target(variants: list[VariantReport], budget: float) -> dict[str, TargetRecommendation]:
    """One recommendation per target any variant was measured on, keyed by target, in first-seen order."""
    targets = list(dict.fromkeys(m.target for row in variants for m in row.measurements))
    return {target: _recommend(target, variants, budget) for target in targets}


def _recommend(target: str, variants: list[VariantReport], budget: float) -> TargetRecommendation:
    measured = [(row, m) for row in variants if row.ok for m in row.measurements if m.target == target and m.ok]
    if not measured:
        reasons = [f"{row.name}: {m.error}" for row in variants for m in row.measurements if m.target == target]
        return TargetRecommendation(target, None, "no variant could be measured on it (" + "; ".join(reasons) + ")")
    fp32 = next((m for row, m in measured if row.name == BASELINE), None)
    baseline_row = next((row for row in variants if row.name == BASELINE), None)
    reference = fp32.score if fp32 is not None else (baseline_row.score if baseline_row else None)
    score = "r2" if baseline_row is not None and baseline_row.r2 is not None else "accuracy"
    qualified: list[tuple[VariantReport, TargetMeasurement]] = [
        (row, m)
        for row, m in measured
        if reference is not None and m.score is not None and m.score - reference >= -budget - 1e-12
    ]
    if not qualified:
        return TargetRecommendation(
            target, None, f"no variant measured on it kept its {score} within {budget * 100:g} point(s) of FP32"
        )
    row, best = min(qualified, key=lambda pair: pair[1].latency_b32_p50_ms or math.inf)
    figure = f"p50 {best.latency_b32_p50_ms:,.3f} ms at batch 32"
    if fp32 is not None and fp32.latency_b32_p50_ms and row.name != BASELINE:
        figure += f", {fp32.latency_b32_p50_ms / (best.latency_b32_p50_ms or math.inf):.2f}x FP32 there"
    return TargetRecommendation(
        target,
        row.name,
        f"fastest on {target} ({figure}) among variants within {budget * 100:g} point(s) of FP32 {score} there",
    )
