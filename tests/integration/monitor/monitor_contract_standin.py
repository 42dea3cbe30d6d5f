"""A stand-in for the monitor's REST API with canned, realistic data, for testing its clients.

It answers the `/api/v1` contract of services/monitor (models, timeline, figures, drift, online
quality, alerts, SLOs, canary) from a mutable `MonitorScene`, so a test can change what the monitor "saw" and check
that the Monitoring view or `gallery monitor` shows the change. Everything the scene holds and every route
answers is one of the monitor's own view types (`gallery_monitor.records` and `.views`), so a change
to the contract breaks the stand-in instead of leaving it answering an older shape. The app comes
from gallery_common's factory (auth, `{"error": ...}` answers); the Gallery's Monitoring view reaches
it through the gallery's proxy (GALLERY_MONITOR_URL). It tests the clients of the monitor, not the monitor.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query
from uvicorn_thread import served

from gallery_common.app import create_app
from gallery_common.contracts.serving_metrics import CanaryComparison
from gallery_common.errors import InvalidRequest, NotFound
from gallery_common.settings import GallerySettings
from gallery_monitor.drift import FeatureDrift
from gallery_monitor.records import AlertPublic, ModelOverview, SloPublic, TimelineItem, VersionOverview
from gallery_monitor.series import Figures
from gallery_monitor.views import (
    CanaryView,
    DriftView,
    FiguresView,
    QualityFigures,
    QualityPoint,
    QualityView,
    SeriesPoint,
    VariantQuality,
)

MODEL = "digits-mlp"
SCRAPE_S = 2.0
RETENTION_S = 600.0  # the stand-in keeps 10 minutes of series; a longer window is refused, as the monitor does
# The scene's story starts two hours before the tests run, so "ago" columns read naturally.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
DEFAULT_SLO = {
    "p99_ms": 50.0, "error_rate": 0.01, "drift_psi": 0.2, "drift_min_samples": 500, "window_s": 300.0,
    "max_accuracy_drop": 0.05, "quality_min_rows": 50, "quality_window_s": 3600.0,
}  # fmt: skip
QUALITY_RETENTION_S = 7 * 86400.0


def trace(version: int) -> str:
    """The 32-hex trace id shared by every lifecycle step of one version."""
    return f"4bf92f3577b34da6a3ce929d0e0e{version:04x}"


def _version(
    version: int, last_event: str, minutes: int, stage: str | None, variant: str | None, traffic: float | None
) -> VersionOverview:
    return VersionOverview(
        version=version,
        last_event=last_event,
        last_event_at=START + timedelta(minutes=minutes),
        stage=stage,
        variant=variant,
        traffic_percent=traffic,
    )


def _event(version: int | None, event: str, minutes: int, n: int, summary: str, traced: bool = True) -> TimelineItem:
    return TimelineItem(
        version=version,
        event=event,
        time=START + timedelta(minutes=minutes),
        event_id=f"0000{n:04d}-0000-4000-8000-{n:012d}",
        trace_id=trace(version or 0) if traced else None,
        summary=summary,
    )


def _load(version: int, variant: str, rps: float, error_rate: float, p50: float, p95: float, p99: float,
          batch: float) -> Figures:  # fmt: skip
    """The traffic one served version sees over a minute, as the figures endpoint reports it."""
    return Figures(str(version), variant, int(rps * 60), rps, error_rate, p50, p95, p99, batch)


@dataclass
class MonitorScene:
    """What the stand-in monitor has seen; tests change it and watch the clients follow."""

    models: list[ModelOverview] = field(default_factory=list)
    timelines: dict[str, list[TimelineItem]] = field(default_factory=dict)
    load: dict[str, list[Figures]] = field(default_factory=dict)
    drift: dict[str, DriftView] = field(default_factory=dict)
    alerts: list[AlertPublic] = field(default_factory=list)
    quality: dict[str, list[QualityFigures]] = field(default_factory=dict)  # per model, each version's
    cache_hit_rate: float | None = 0.184
    lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str) -> ModelOverview:
        for model in self.models:
            if model.model == name:
                return model
        raise NotFound(f"the monitor has seen no event about model {name!r}")

    def deploy_canary(self, version: int, variant: str, percent: float) -> None:
        """Version `version` arrives as a canary next to production, as after a `model.deployed`."""
        with self.lock:
            model = self.model(MODEL)
            model.versions.append(_version(version, "deployed", 95, "canary", variant, percent))
            production = next(v for v in model.versions if v.stage == "production")
            production.traffic_percent = 100 - percent
            events = self.timelines[MODEL]
            n = len(events) + 1
            events += [
                _event(version, "trained", 80, n, f"trained with DeepSpeed, val accuracy 0.978 (run run-{version})"),
                _event(version, "validated", 82, n + 1, "passed the gate: test accuracy 0.975 ≥ 0.95"),
                _event(version, "deployed", 95, n + 2, f"{variant} canary with {percent:g}% of traffic"),
            ]
            self.load[MODEL].append(_load(version, variant, 3.9, 0.0, 2.4, 5.1, 8.8, 1.4))

    def shift_inputs(self) -> None:
        """The gateway's samples drift away from the training data and the monitor opens a drift alert."""
        with self.lock:
            drift = self.drift[MODEL]
            drift.features[20:24] = [
                dataclasses.replace(f, psi=0.41, ks=0.37, p_value=2.0e-9) for f in drift.features[20:24]
            ]
            drift.drifted, drift.prediction_psi = True, 0.27
            drift.reasons = ["4 features over PSI 0.2: 20, 21, 22, 23"]
            self.alerts.insert(
                0,
                AlertPublic(
                    id="alert-0002",
                    model=MODEL,
                    version=2,
                    kind="drift",
                    reason="input drift: 4 features over PSI 0.2",
                    evidence={"max_psi": 0.41, "samples": drift.samples, "window_s": drift.window_s},
                    opened_at=datetime.now(UTC),
                    closed_at=None,
                    event_id="0000aaaa-0000-4000-8000-000000000002",
                ),
            )

    def sour_feedback(self) -> None:
        """Labels on v2's answers turn out worse than its gate promised, and the monitor opens a quality alert of
        the INT8 variant that gave most of them."""
        with self.lock:
            figures = self.quality[MODEL]
            figures[:] = [
                f if f.version != "2" else _quality("2", 1240, 0.874, 0.969, V2_SOUR_VARIANTS) for f in figures
            ]
            self.alerts.insert(
                0,
                AlertPublic(
                    id="alert-0003",
                    model=MODEL,
                    version=2,
                    kind="quality",
                    variant="int8-dynamic",
                    reason="variant int8-dynamic: online accuracy 87.0% is 9.6 points below the optimizer's 96.6% "
                    "(SLO: at most 5) over 3600 s",
                    evidence={"labelled_rows": 1200, "online_accuracy": 0.870, "reference_accuracy": 0.966},
                    opened_at=datetime.now(UTC),
                    closed_at=None,
                    event_id="degraded:digits-mlp:2:quality:int8-dynamic:1",
                ),
            )


def _quality(
    version: str, labelled: int, accuracy: float, gate: float, variants: tuple[tuple[str, int, float, float], ...] = ()
) -> QualityFigures:
    """A version's feedback over the last hour: one-row answers, each labelled; `variants` (name, rows,
    online accuracy, the optimizer's accuracy) say which variant gave them."""
    return QualityFigures(
        version=version, outcomes=labelled, labelled_rows=labelled, accuracy=accuracy, gate_accuracy=gate,
        valued_rows=0, rmse=None, gate_rmse=None, rewarded=0, mean_reward=None,
        variants=[
            VariantQuality(
                variant=name, outcomes=rows, labelled_rows=rows, accuracy=online, test_accuracy=test,
                valued_rows=0, rmse=None, test_rmse=None, rewarded=0, mean_reward=None,
            )
            for name, rows, online, test in variants
        ],
    )  # fmt: skip


# v2 serves INT8 with FP32 as its fallback: most answers are INT8's, a few the fallback's
V2_VARIANTS = (("int8-dynamic", 1200, 0.962, 0.966), ("fp32", 40, 0.95, 0.969))
V2_SOUR_VARIANTS = (("int8-dynamic", 1200, 0.870, 0.966), ("fp32", 40, 0.95, 0.969))


def demo_scene() -> MonitorScene:
    """The demo's digits classifier: v1 retired, v2 in production (INT8), and an iris model the gate rejected."""
    digits = ModelOverview(
        model=MODEL,
        versions=[
            _version(1, "deployed", 20, "retired", "fp32", 0.0),
            _version(2, "deployed", 60, "production", "int8-dynamic", 100.0),
        ],
        aliases={"production": 2},
    )
    iris = ModelOverview(
        model="iris-mlp", versions=[_version(1, "rejected", 5, None, None, None)], aliases={"production": None}
    )
    timeline = [
        _event(1, "trained", 0, 1, "trained with DeepSpeed ZeRO-2 on 2 ranks, val accuracy 0.961"),
        _event(1, "validated", 2, 2, "passed the gate: test accuracy 0.958 ≥ 0.95"),
        _event(1, "optimized", 10, 3, "int8-dynamic 3.6x faster, accuracy -0.002"),
        _event(1, "deployed", 20, 4, "fp32 production with 100% of traffic"),
        _event(2, "trained", 40, 5, "trained with DeepSpeed ZeRO-2 on 2 ranks, val accuracy 0.972"),
        _event(2, "validated", 42, 6, "passed the gate: test accuracy 0.969 ≥ 0.95"),
        _event(2, "optimized", 50, 7, "int8-dynamic 3.4x faster, accuracy -0.001"),
        _event(2, "deployed", 60, 8, "int8-dynamic production with 100% of traffic"),
        _event(1, "deployed", 61, 9, "fp32 retired: v2 serves all traffic", traced=False),
    ]
    features = [
        FeatureDrift(i, round(0.004 + 0.0013 * (i % 17), 4), round(0.012 + 0.001 * (i % 11), 4),
                     round(0.35 + 0.009 * (i % 31), 3))
        for i in range(64)
    ]  # fmt: skip
    drift = DriftView(
        model=MODEL, version=2, window_s=300.0, samples=4812, features=features, prediction_psi=0.012,
        drifted=False, reasons=[],
    )  # fmt: skip
    alert = AlertPublic(
        id="alert-0001",
        model=MODEL,
        version=1,
        kind="slo",
        reason="p99 latency 61.0 ms over the SLO of 50 ms for 60 s",
        evidence={"p99_ms": 61.0, "slo_p99_ms": 50.0, "window_s": 60.0},
        opened_at=START + timedelta(minutes=30),
        closed_at=START + timedelta(minutes=33),
        event_id="0000aaaa-0000-4000-8000-000000000001",
    )
    return MonitorScene(
        models=[digits, iris],
        timelines={
            MODEL: timeline,
            "iris-mlp": [
                _event(1, "trained", 0, 1, "val accuracy 0.71"),
                _event(1, "rejected", 3, 2, "test accuracy 0.70 < 0.90"),
            ],
        },
        load={MODEL: [_load(2, "int8-dynamic", 41.5, 0.001, 2.1, 4.8, 7.9, 3.2)], "iris-mlp": []},
        drift={MODEL: drift},
        alerts=[alert],
        quality={MODEL: [_quality("2", 1240, 0.962, 0.969, V2_VARIANTS)]},
    )


def _figures(scene: MonitorScene, model: str, window_s: float) -> FiguresView:
    now = datetime.now(UTC)
    series = []
    steps = int(window_s // SCRAPE_S)
    for load in scene.load.get(model, []):
        for step in range(steps, -1, -1):
            wobble = 1 + 0.15 * math.sin(step / 3 + float(load.version))
            series.append(SeriesPoint(
                t=(now - timedelta(seconds=step * SCRAPE_S)).isoformat().replace("+00:00", "Z"),
                version=load.version,
                rps=round(load.rps * wobble, 3),
                error_rate=load.error_rate,
                p99_ms=round((load.p99_ms or 0.0) * wobble, 3),
            ))  # fmt: skip
    return FiguresView(
        model=model,
        window_s=window_s,
        versions=list(scene.load.get(model, [])),
        cache_hit_rate=scene.cache_hit_rate,
        series=series,
    )


def _online_quality(scene: MonitorScene, model: str, window_s: float) -> QualityView:
    """Each version's feedback spread over the window's buckets, its accuracy wobbling around the figure."""
    bucket_s = max(1, math.ceil(window_s / 60 / 30)) * 60.0
    start = datetime.now(UTC).timestamp() - window_s
    first = math.floor(start / bucket_s) * bucket_s
    series = []
    versions = scene.quality.get(model, [])
    buckets = math.ceil(window_s / bucket_s)
    for figures in versions:
        for b in range(buckets + 1):
            accuracy = None if figures.accuracy is None else min(1.0, figures.accuracy + 0.01 * math.sin(b / 2))
            series.append(QualityPoint(
                t=datetime.fromtimestamp(first + b * bucket_s, UTC).isoformat().replace("+00:00", "Z"),
                version=figures.version, labelled_rows=figures.labelled_rows // (buckets + 1), accuracy=accuracy,
                valued_rows=0, rmse=None, rewarded=0, mean_reward=None,
            ))  # fmt: skip
    return QualityView(model=model, window_s=window_s, bucket_s=bucket_s, versions=list(versions), series=series)


def _comparison(canary: Figures | None, baseline: Figures | None) -> CanaryComparison | None:
    if canary is None or baseline is None:
        return None
    return CanaryComparison(
        canary_requests=canary.requests,
        baseline_requests=baseline.requests,
        canary_error_rate=canary.error_rate,
        baseline_error_rate=baseline.error_rate,
        canary_p99_ms=canary.p99_ms,
        baseline_p99_ms=baseline.p99_ms,
    )


def contract_router(scene: MonitorScene) -> APIRouter:
    """The monitor's `/api/v1` answered from `scene`."""
    api = APIRouter(prefix="/api/v1")
    slos: dict[str, SloPublic] = {}

    @api.get("/models")
    def models() -> list[ModelOverview]:
        with scene.lock:
            return scene.models

    @api.get("/models/{model}/timeline")
    def timeline(model: str) -> list[TimelineItem]:
        with scene.lock:
            scene.model(model)
            return scene.timelines.get(model, [])

    @api.get("/models/{model}/figures")
    def figures(model: str, window_s: float = 60.0) -> FiguresView:
        if window_s > RETENTION_S:
            raise InvalidRequest(f"window_s {window_s:g} is longer than the {RETENTION_S:g} s of series kept")
        with scene.lock:
            scene.model(model)
            return _figures(scene, model, window_s)

    @api.get("/models/{model}/drift")
    def drift(model: str) -> DriftView:
        with scene.lock:
            scene.model(model)
            empty = DriftView(model=model, version=None, window_s=300.0, samples=0, features=[],
                              prediction_psi=None, drifted=False, reasons=[])  # fmt: skip
            return scene.drift.get(model, empty)

    @api.get("/models/{model}/quality")
    def quality(model: str, window_s: float | None = None) -> QualityView:
        window = window_s or float(DEFAULT_SLO["quality_window_s"])
        if window > QUALITY_RETENTION_S:
            raise InvalidRequest(f"window_s {window:g} is longer than the {QUALITY_RETENTION_S:g} s of feedback kept")
        with scene.lock:
            scene.model(model)
            return _online_quality(scene, model, window)

    @api.get("/alerts")
    def alerts(
        model: str | None = None, open_only: Annotated[bool | None, Query(alias="open")] = None
    ) -> list[AlertPublic]:
        with scene.lock:
            return [
                a
                for a in scene.alerts
                if (model is None or a.model == model) and (open_only is None or (a.closed_at is None) == open_only)
            ]

    @api.get("/slos/{model}")
    def slo(model: str) -> SloPublic:
        with scene.lock:
            scene.model(model)
        return slos.get(model, SloPublic(model=model, **DEFAULT_SLO))  # type: ignore[arg-type]

    @api.get("/canary/{model}")
    def canary(model: str, window_s: float = 60.0) -> CanaryView:
        with scene.lock:
            stages = {str(v.version): v.stage for v in scene.model(model).versions}
            figures = _figures(scene, model, window_s).versions
        pick = {
            stage: next((f for f in figures if stages.get(f.version) == stage), None)
            for stage in ("canary", "production")
        }
        return CanaryView(
            model=model,
            window_s=window_s,
            canary=pick["canary"],
            baseline=pick["production"],
            comparison=_comparison(pick["canary"], pick["production"]),
        )

    return api


def standin_app(scene: MonitorScene, home: Path, tokens: str = "") -> FastAPI:
    """The stand-in monitor: the contract routes, no bus."""
    settings = GallerySettings(home=home, service_name="monitor", api_tokens=tokens)  # type: ignore[arg-type]
    return create_app(settings, title="monitor (stand-in)", routers=[contract_router(scene)], use_bus=False)


@contextmanager
def serve(app: FastAPI, port: int) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:`port` until the block ends; yields the base URL."""
    with served(app, port) as bound:
        yield f"http://127.0.0.1:{bound}"
