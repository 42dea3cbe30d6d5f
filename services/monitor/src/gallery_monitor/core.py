"""The monitor's core, independent of HTTP and NATS: what it knows and the views the API shows.

Lifecycle events, SLOs and alerts live in the database (blocking: worker threads); serving series
and sample windows live in memory and are touched on the event loop only, apart from sample
windows, which copy themselves out under a lock for drift computations in worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.engine import Engine

from gallery_common.audit import AuditAction, AuditChange, new_dedupe_key
from gallery_common.audit_trail import AuditTrail
from gallery_common.contracts.serving_metrics import compare
from gallery_common.errors import InvalidRequest, NotFound

from .alerts import AlertBook
from .drift import DriftReport, DriftRule, Reference, evaluate_drift
from .quality import QualityStore, Tally, bucket_minutes, measured
from .records import ModelOverview, Slo, SloPublic, SloUpdate
from .references import ReferenceCache, ReferenceUnavailable
from .samples import SampleBook
from .series import Figures, SeriesBook
from .slos import SloStore
from .text_drift import TextReference, TextSamples, evaluate_text_drift
from .timeline import TimelineStore
from .views import (
    CanaryView,
    DriftView,
    FiguresView,
    QualityFigures,
    QualityPoint,
    QualityView,
    SeriesPoint,
    VariantQuality,
)


def registry_version(label: str | None) -> int | None:
    """The registry's version number behind a metric or sample label ("3"), None when it is not one."""
    if label and label.isdigit() and int(label) >= 1:
        return int(label)
    return None


def _version_order(label: str) -> tuple[int, str]:
    number = registry_version(label)
    return (number if number is not None else 0, label)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class Monitor:
    """Timeline, SLOs, alerts, serving series and sample windows of every model, and the views over them."""

    def __init__(
        self,
        engine: Engine,
        *,
        default_slo: Slo,
        series: SeriesBook,
        samples: SampleBook,
        references: ReferenceCache,
        quality: QualityStore,
        ks_alpha: float,
        min_requests: int,
        text_psi_threshold: float = 0.25,
        text_warn_psi: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeline = TimelineStore(engine)
        self.slos = SloStore(
            engine, default_slo, max_window_s=series.retention_s, max_quality_window_s=quality.retention_s
        )
        self.quality = quality
        self.alerts = AlertBook(engine, self.timeline.project_of)
        self.series = series
        self.samples = samples
        self.references = references
        self.ks_alpha = ks_alpha
        self.text_psi_threshold = text_psi_threshold
        self.text_warn_psi = text_warn_psi
        self.min_requests = min_requests
        self.clock = clock
        # where SLO changes are recorded (the app sets it once the bus is open); None: not recorded
        self.trail: AuditTrail | None = None

    def knows(self, model: str) -> bool:
        """Whether the monitor saw the model at all: an event, a scraped figure or a sample (blocking)."""
        return (
            self.series.knows(model)
            or self.samples.knows(model)
            or self.timeline.knows(model)
            or self.quality.knows(model)
        )

    def set_slo(self, model: str, update: SloUpdate, actor: str) -> SloPublic:
        """Change the model's SLOs and record the change in its project's audit chain (blocking)."""
        before = self.slos.get(model)
        after = self.slos.update(model, update)
        if self.trail is not None:
            self.trail.record_threadsafe(
                AuditChange(
                    project=self.timeline.project_of(model),
                    actor=actor,
                    action=AuditAction.policy_change,
                    model=model,
                    target=f"{model}/slos",
                    before=before.model_dump(mode="json"),
                    after=after.model_dump(mode="json"),
                    dedupe_key=new_dedupe_key(),
                )
            )
        return after

    @staticmethod
    def unknown(model: str) -> NotFound:
        """The answer for a model the monitor never saw, and for one in a project the caller cannot see."""
        return NotFound(f"the monitor has seen nothing of model {model!r}: no lifecycle event, figure or sample")

    def require(self, model: str) -> None:
        if not self.knows(model):
            raise self.unknown(model)

    def rule(self, slo: Slo) -> DriftRule:
        return DriftRule(
            psi_threshold=slo.drift_psi,
            ks_alpha=self.ks_alpha,
            min_samples=slo.drift_min_samples,
            text_psi_threshold=self.text_psi_threshold,
            text_warn_psi=self.text_warn_psi,
        )

    def figures(self, model: str, window_s: float) -> FiguresView:
        """Serving figures per version and variant over the window, the cache hit rate and the series."""
        now = self.clock()
        series = [
            SeriesPoint(t=iso(t), version=f.version, rps=f.rps, error_rate=f.error_rate, p99_ms=f.p99_ms)
            for t, f in self.series.points(model, window_s, now)
        ]
        return FiguresView(
            model=model,
            window_s=window_s,
            versions=self.series.figures(model, window_s, now),
            cache_hit_rate=self.series.cache_hit_rate(model, window_s, now),
            series=series,
        )

    def gate_figure(self, model: str, name: str) -> dict[str, float]:
        """The gate's `name` (accuracy, rmse) of each version of the model, by version label."""
        figures = {
            str(version): measured(report.get(name)) for version, report in self.timeline.gate_reports(model).items()
        }
        return {version: value for version, value in figures.items() if value is not None}

    def online_quality(self, model: str, window_s: float) -> QualityView:
        """Each version's online accuracy, rmse and mean reward over the window, beside the gate's, and a
        series of them for the chart (blocking)."""
        self.require(model)
        if window_s > self.quality.retention_s:
            raise InvalidRequest(
                f"window_s {window_s:g} is longer than the {self.quality.retention_s:g} s of feedback the monitor "
                "keeps (GALLERY_OUTCOME_RETENTION_S)"
            )
        since = self.clock() - window_s
        minutes = bucket_minutes(window_s)
        accuracy, rmse = self.gate_figure(model, "accuracy"), self.gate_figure(model, "rmse")
        optimizer = {
            (str(version), name): metrics for (version, name), metrics in self.timeline.variant_metrics(model).items()
        }
        per_variant: dict[str, list[tuple[str, Tally]]] = {}
        for (version, variant), tally in self.quality.by_variant(model, since).items():
            per_variant.setdefault(version, []).append((variant, tally))

        def variant_figures(version: str, variant: str, tally: Tally) -> VariantQuality:
            metrics = optimizer.get((version, variant), {})
            return VariantQuality(
                variant=variant,
                test_accuracy=measured(metrics.get("accuracy")),
                test_rmse=measured(metrics.get("rmse")),
                **tally.online(),
            )

        def figures(version: str, variants: list[tuple[str, Tally]]) -> QualityFigures:
            variants = sorted(variants, key=lambda item: (-item[1].outcomes, item[0]))
            return QualityFigures(
                version=version,
                gate_accuracy=accuracy.get(version),
                gate_rmse=rmse.get(version),
                variants=[variant_figures(version, name, t) for name, t in variants],
                **sum((t for _, t in variants), Tally()).online(),
            )

        series = [
            QualityPoint(
                t=iso(start),
                version=version,
                labelled_rows=tally.labelled_rows,
                accuracy=tally.accuracy,
                valued_rows=tally.valued_rows,
                rmse=tally.rmse,
                rewarded=tally.rewarded,
                mean_reward=tally.mean_reward,
            )
            for start, version, tally in self.quality.buckets(model, since, minutes)
        ]
        versions = sorted(per_variant.items(), key=lambda item: _version_order(item[0]))
        return QualityView(
            model=model,
            window_s=window_s,
            bucket_s=minutes * 60.0,
            versions=[figures(version, variants) for version, variants in versions],
            series=series,
        )

    def canary(self, model: str, window_s: float, overview: ModelOverview) -> CanaryView:
        """The canary's figures beside the baseline's (production) over the window, and the comparison the
        deployer's canary analysis judges (`gallery_common.contracts.serving_metrics.compare`)."""
        now = self.clock()
        stages = {v.version: v for v in overview.versions}
        canaries = [v for v in overview.versions if v.stage == "canary"]
        canary = canaries[-1].version if canaries else None
        baseline = overview.aliases.get("production")
        counts = {
            version: self.series.version_counts(model, str(version), window_s, now)
            for version in (canary, baseline)
            if version is not None
        }

        def of(version: int | None) -> Figures | None:
            if version is None:
                return None
            variant = stages[version].variant if version in stages else None
            served, seconds = counts[version]
            return Figures.of(str(version), variant or "", served, seconds)

        compared = None
        if canary is not None and baseline is not None:
            compared = compare(counts[canary][0], counts[baseline][0])
        return CanaryView(model=model, window_s=window_s, canary=of(canary), baseline=of(baseline), comparison=compared)

    def drift_report(self, model: str, version: str, window_s: float, rule: DriftRule) -> DriftReport:
        """Drift of the version's samples (rows, or a text model's texts) over the last window (blocking:
        may load the reference)."""
        window = self.samples.window(model, version)
        if window is None:
            return DriftReport(samples=0, reasons=[f"no samples of {model} version {version or '?'} yet"])
        seen, predictions = window.window(self.clock() - window_s)
        number = registry_version(version)
        if number is None:
            reason = f"samples are labelled version {version!r}, not a registry version: no training reference"
            return DriftReport(samples=len(seen), reasons=[reason])
        try:
            reference = self.references.get(model, number)
        except ReferenceUnavailable as exc:
            return DriftReport(samples=len(seen), reasons=[f"no training reference: {exc}"])
        if isinstance(seen, TextSamples) and isinstance(reference, TextReference):
            return evaluate_text_drift(reference, seen, predictions, rule)
        if isinstance(seen, np.ndarray) and isinstance(reference, Reference):
            return evaluate_drift(reference, seen, predictions, rule)
        kinds = ("texts", "numeric features") if isinstance(seen, TextSamples) else ("numeric features", "texts")
        reason = f"samples hold {kinds[0]}, the training reference {kinds[1]}: not compared"
        return DriftReport(samples=len(seen), reasons=[reason])

    def drift(self, model: str, version: int | None, window_s: float | None) -> DriftView:
        """The drift view of one version (default: the one sampled last) over its SLO window (blocking)."""
        self.require(model)
        slo = self.slos.get(model)
        window = window_s or slo.window_s
        label = str(version) if version is not None else self.samples.latest_version(model)
        if label is None:
            report = DriftReport(samples=0, reasons=[f"no samples of {model} yet"])
        else:
            report = self.drift_report(model, label, window, self.rule(slo))
        return DriftView(
            model=model,
            version=registry_version(label),
            window_s=window,
            samples=report.samples,
            features=report.features,
            prediction_psi=report.prediction_psi,
            drifted=report.drifted,
            reasons=report.reasons,
            ranked_by=report.ranked_by,
            text=report.text,
        )
