"""Every few seconds: each served version's p99 and error rate against its model's SLO, each sampled
version's drift against its training reference, each version's online quality (feedback) against its
quality SLO; breaches become alert episodes and `model.degraded`.

A version without enough requests (or samples) in the window is not judged; for an open episode
that counts as calm, so an episode of a version that stopped serving closes after a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from gallery_common.events import FP32_VARIANT
from gallery_common.telemetry import counter, get_logger

from .alerts import Kind, Publish, publish_pending
from .core import Monitor, registry_version
from .quality import Tally, judge_quality, variant_breakdown
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
) -> None:
    """One evaluation of one version into its alert episodes (blocking SQL in a worker thread); an episode it
    opens is added to `opened`."""
    observe = partial(
        monitor.alerts.observe, model, version, kind,
        breached=breached, now=now, window_s=window_s, reason=reason, evidence=evidence,
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
    quality SLO judges anything. A version with too little feedback, or whose model's quality SLO was
    switched off, counts as calm, so its open episode closes."""
    opened: list[AlertPublic] = []
    episodes = monitor.alerts.open_versions("quality")
    models = set(episodes) | {model for model, slo in stored.items() if _judges_quality(slo)}
    defaults = monitor.slos.defaults
    if _judges_quality(defaults):  # every model with recent feedback, unless its own SLO says otherwise
        recent = await anyio.to_thread.run_sync(monitor.quality.models, now - defaults.quality_window_s)
        models |= {model for model in recent if model not in stored}
    for model in sorted(models):
        slo = slo_of(model)
        judged = _judges_quality(slo)
        tallies = await anyio.to_thread.run_sync(monitor.quality.by_version, model, now - slo.quality_window_s)
        for episode in episodes.get(model, set()):
            tallies.setdefault(str(episode), Tally())
        gate = await anyio.to_thread.run_sync(monitor.gate_figure, model, "accuracy") if judged else {}
        gate_rmse = await anyio.to_thread.run_sync(monitor.gate_figure, model, "rmse") if judged else {}
        for label, tally in sorted(tallies.items()):
            version = registry_version(label)
            if version is None:
                continue
            breached, reason, evidence = (
                judge_quality(tally, slo, gate.get(label), gate_rmse.get(label)) if judged else (False, "", {})
            )
            if breached:
                reason, evidence = await _by_variant(
                    monitor, model, label, now - slo.quality_window_s, reason, evidence
                )
            await _observe(
                monitor, opened, model, version, "quality", breached, now, slo.quality_window_s, reason, evidence
            )
    return opened


async def _by_variant(
    monitor: Monitor, model: str, label: str, since: float, reason: str, evidence: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A quality breach's reason and evidence with which variant gave the answers, when more than one did or the
    route named it: an INT8 variant that answers worse than FP32 shows as such in the alert."""

    def read() -> tuple[dict[str, Tally], dict[str, dict[str, object]]]:
        variants = {name: t for (v, name), t in monitor.quality.by_variant(model, since).items() if v == label}
        measured = {name: m for (v, name), m in monitor.timeline.variant_metrics(model).items() if str(v) == label}
        return variants, measured

    variants, measured = await anyio.to_thread.run_sync(read)
    if not variants or (len(variants) == 1 and "" in variants):
        return reason, evidence
    line, figures = variant_breakdown(variants, measured)
    if any(name not in ("", FP32_VARIANT) for name in variants):  # what a person can do short of a rollback
        line += f" (to serve FP32 instead: gallery variants {model}:{label} --serve {FP32_VARIANT})"
    return (f"{reason}; {line}" if line else reason), {**evidence, "variants": figures}


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
