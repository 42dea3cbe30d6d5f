"""Every few seconds: each served version's p99 and error rate against its model's SLO, each sampled
version's drift against its training reference, each version's online quality (feedback) against its
quality SLO; breaches become alert episodes and `model.degraded`.

A version without enough requests (or samples) in the window is not judged; for an open episode
that counts as calm, so an episode of a version that stopped serving closes after a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from gallery_common.events import FP32_VARIANT
from gallery_common.telemetry import counter, get_logger

from .alerts import Kind, Publish, publish_pending
from .core import Monitor, registry_version
from .quality import Reference, Tally, judge_quality, variant_breakdown
from .records import AlertPublic, Slo
from .series import Figures

log = get_logger(__name__)
ROUNDS = counter(
    "monitor_evaluations_total", "Evaluation rounds of SLOs and drift, by outcome (ok, failed).", ("outcome",)
)


def judge_slo(figures: Figures, slo: Slo, min_requests: int) -> tuple[bool, str, dict[str, Any]]:
    """(breached, reason, evidence) of one version's figures over the SLO window."""
    evidence = {
        "requests": figures.requests,
        "rps": figures.rps,
        "p50_ms": figures.p50_ms,
        "p95_ms": figures.p95_ms,
        "p99_ms": figures.p99_ms,
        "error_rate": figures.error_rate,
        "slo_p99_ms": slo.p99_ms,
        "slo_error_rate": slo.error_rate,
        "window_s": slo.window_s,
    }
    if figures.requests < min_requests:
        return False, "", evidence
    breaches = []
    if figures.p99_ms is not None and figures.p99_ms > slo.p99_ms:
        breaches.append(f"p99 {figures.p99_ms:.1f} ms > SLO {slo.p99_ms:g} ms")
    if figures.error_rate is not None and figures.error_rate > slo.error_rate:
        breaches.append(f"error rate {figures.error_rate:.2%} > SLO {slo.error_rate:.2%}")
    if not breaches:
        return False, "", evidence
    reason = f"{'; '.join(breaches)} over {slo.window_s:g} s ({figures.requests} requests)"
    return True, reason, evidence


async def evaluate(monitor: Monitor, publish: Publish | None) -> list[AlertPublic]:
    """One evaluation of every version the monitor sees; returns the alerts it opened."""
    now = monitor.clock()
    stored = await anyio.to_thread.run_sync(monitor.slos.all)
    opened: list[AlertPublic] = []

    def slo_of(model: str) -> Slo:
        return stored.get(model, monitor.slos.defaults)

    for model in sorted(monitor.series.models()):
        slo = slo_of(model)
        for label in sorted(monitor.series.versions(model)):
            version = registry_version(label)
            if version is None:
                continue
            figures = monitor.series.version_figures(model, label, slo.window_s, now)
            breached, reason, evidence = judge_slo(figures, slo, monitor.min_requests)
            await _observe(monitor, opened, model, version, "slo", breached, now, slo.window_s, reason, evidence)

    for model, label in sorted(monitor.samples.keys()):
        version = registry_version(label)
        if version is None:
            continue
        slo = slo_of(model)
        rule = monitor.rule(slo)
        report = await anyio.to_thread.run_sync(monitor.drift_report, model, label, slo.window_s, rule)
        # the three top-ranked findings name the drift; the evidence carries the top features
        shown = "; ".join(report.reasons[:3]) + (
            f"; and {len(report.reasons) - 3} more" if len(report.reasons) > 3 else ""
        )
        reason = f"drift over {slo.window_s:g} s ({report.samples} samples): {shown}"
        if report.ranked_by:
            reason += f" (features ranked by {report.ranked_by})"
        await _observe(
            monitor, opened, model, version, "drift", report.drifted, now, slo.window_s, reason, report.evidence(rule)
        )

    opened += await _evaluate_quality(monitor, stored, slo_of, now)

    monitor.samples.forget_before(now - monitor.series.retention_s)
    await anyio.to_thread.run_sync(monitor.quality.forget_before, now - monitor.quality.retention_s)
    if publish is not None:
        await publish_pending(monitor.alerts, publish)
    return opened


async def _observe(
    monitor: Monitor,
    opened: list[AlertPublic],
    model: str,
    version: int,
    kind: Kind,
    breached: bool,
    now: float,
    window_s: float,
    reason: str,
    evidence: dict[str, Any],
    variant: str = "",
) -> None:
    """One evaluation of one version (of one variant's answers, when given) into its alert episodes (blocking
    SQL in a worker thread); an episode it opens is added to `opened`."""
    observe = partial(
        monitor.alerts.observe, model, version, kind,
        breached=breached, now=now, window_s=window_s, reason=reason, evidence=evidence, variant=variant,
    )  # fmt: skip
    alert = await anyio.to_thread.run_sync(observe)
    if alert is not None:
        opened.append(alert)


def _judges_quality(slo: Slo) -> bool:
    limits = (slo.min_online_accuracy, slo.max_accuracy_drop, slo.max_online_rmse, slo.max_rmse_ratio)
    return any(limit is not None for limit in limits)


async def _evaluate_quality(
    monitor: Monitor, stored: dict[str, Slo], slo_of: Callable[[str], Slo], now: float
) -> list[AlertPublic]:
    """Online quality of every version with feedback in its model's quality window, for the models whose
    quality SLO judges anything. The version's own model (FP32, or a route that named no variant) and each
    optimized variant that answered are judged on their own answers, each with its own episodes: a variant
    against what the optimizer measured of it, the version's own model against the gate's figures. A variant
    with too little feedback, or whose model's quality SLO was switched off, counts as calm, so its open
    episode closes."""
    opened: list[AlertPublic] = []
    episodes = monitor.alerts.open_episodes("quality")
    models = set(episodes) | {model for model, slo in stored.items() if _judges_quality(slo)}
    defaults = monitor.slos.defaults
    if _judges_quality(defaults):  # every model with recent feedback, unless its own SLO says otherwise
        recent = await anyio.to_thread.run_sync(monitor.quality.models, now - defaults.quality_window_s)
        models |= {model for model in recent if model not in stored}
    for model in sorted(models):
        slo = slo_of(model)
        judged = _judges_quality(slo)
        since = now - slo.quality_window_s
        answered = await anyio.to_thread.run_sync(monitor.quality.by_variant, model, since)
        tallies = _by_answering_model(answered)
        for open_version, open_variant in episodes.get(model, set()):
            tallies.setdefault((str(open_version), open_variant), Tally())
        figures = await anyio.to_thread.run_sync(_test_figures, monitor, model) if judged else _TestFigures()
        for (label, variant), tally in sorted(tallies.items()):
            version = registry_version(label)
            if version is None:
                continue
            breached, reason, evidence = False, "", dict[str, Any]()
            if judged:
                gate, gate_rmse = figures.gate.get(label), figures.gate_rmse.get(label)
                reference = Reference.of(variant, gate, gate_rmse, figures.optimizer.get((version, variant), {}))
                breached, reason, evidence = judge_quality(tally, slo, gate, gate_rmse, reference)
            if breached:
                reason, evidence = _by_variant(label, variant, answered, figures, reason, evidence)
            await _observe(
                monitor, opened, model, version, "quality", breached, now, slo.quality_window_s, reason, evidence,
                variant=variant,
            )  # fmt: skip
    return opened


def _by_answering_model(answered: dict[tuple[str, str], Tally]) -> dict[tuple[str, str], Tally]:
    """Outcomes by (version, what answered): an optimized variant by its name, the version's own model (FP32, or
    a route that named no variant) as ""."""
    tallies: dict[tuple[str, str], Tally] = {}
    for (label, variant), tally in answered.items():
        key = (label, "" if variant == FP32_VARIANT else variant)
        tallies[key] = tallies.get(key, Tally()) + tally
    return tallies


@dataclass(frozen=True)
class _TestFigures:
    """What was measured offline of a model's versions: the gate's accuracy and rmse by version label, the
    optimizer's metrics by (version, variant)."""

    gate: dict[str, float] = field(default_factory=dict)
    gate_rmse: dict[str, float] = field(default_factory=dict)
    optimizer: dict[tuple[int, str], dict[str, object]] = field(default_factory=dict)


def _test_figures(monitor: Monitor, model: str) -> _TestFigures:
    """Blocking SQL: call from a worker thread."""
    return _TestFigures(
        monitor.gate_figure(model, "accuracy"),
        monitor.gate_figure(model, "rmse"),
        monitor.timeline.variant_metrics(model),
    )


def _by_variant(
    label: str,
    variant: str,
    answered: dict[tuple[str, str], Tally],
    figures: _TestFigures,
    reason: str,
    evidence: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """A quality breach's reason and evidence naming the optimized variant whose answers broke it, with every
    variant of the version that answered beside what the optimizer measured of it (when more than one
    answered or the route named it): an INT8 variant that answers worse than FP32 shows as such."""
    version = registry_version(label)
    variants = {name: t for (v, name), t in answered.items() if v == label}
    if not variants or (len(variants) == 1 and "" in variants):
        return reason, evidence
    measured = {name: m for (v, name), m in figures.optimizer.items() if v == version}
    line, breakdown = variant_breakdown(variants, measured)
    named = f"variant {variant}: " if variant else ""
    return f"{named}{reason}" + (f"; {line}" if line else ""), {**evidence, "variant": variant, "variants": breakdown}


async def run_evaluator(monitor: Monitor, publish: Publish | None, interval_s: float) -> None:
    """Evaluate every `interval_s` until cancelled; a failed round is logged and the next one runs."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await evaluate(monitor, publish)
        except Exception as exc:
            ROUNDS.labels("failed").inc()
            log.warning("evaluation_failed", reason=f"{type(exc).__name__}: {exc}", exc_info=exc)
        else:
            ROUNDS.labels("ok").inc()
