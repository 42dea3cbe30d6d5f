"""The evaluator over real series, sample windows and SQLite: SLO and drift breaches become one event each."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import orjson
import pytest
from monitor_core import SLO, sqlite_monitor
from prometheus_client import CollectorRegistry, generate_latest

from gallery_common.contracts.serving_metrics import parse_page
from gallery_common.events import ModelDegraded
from gallery_deployer.modelserver.metrics import ServingMetrics
from gallery_monitor.core import Monitor
from gallery_monitor.evaluator import evaluate, judge_slo
from gallery_monitor.records import SloUpdate
from gallery_monitor.references import ReferenceUnavailable, TrainingData
from gallery_monitor.series import Figures

REFERENCE_X = np.random.default_rng(0).normal(size=(2000, 3)).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def load_split(model: str, version: int) -> TrainingData:
    if version != 1:
        raise ReferenceUnavailable(f"{model}:{version} has no train_split artifact in the registry")
    return TrainingData(REFERENCE_X)


@pytest.fixture
def monitor(tmp_path: Path) -> Monitor:
    return sqlite_monitor(tmp_path / "monitor.db", load_split, Clock())


class Published(list[tuple[ModelDegraded, str]]):
    async def __call__(self, payload: ModelDegraded, event_id: str) -> None:
        self.append((payload, event_id))


def test_judge_slo_names_every_breach_and_ignores_thin_traffic() -> None:
    slow = Figures("3", "fp32", 200, 3.3, 0.05, 20.0, 90.0, 250.0, 4.0)
    breached, reason, evidence = judge_slo(slow, SLO, min_requests=20)
    assert breached
    assert reason == "p99 250.0 ms > SLO 100 ms; error rate 5.00% > SLO 1.00% over 60 s (200 requests)"
    assert evidence["p99_ms"] == 250.0 and evidence["slo_p99_ms"] == 100 and evidence["requests"] == 200
    thin = Figures("3", "fp32", 5, 0.1, 1.0, 500.0, 500.0, 500.0, 1.0)
    assert judge_slo(thin, SLO, min_requests=20)[0] is False
    fine = Figures("3", "fp32", 200, 3.3, 0.0, 2.0, 5.0, 9.0, 1.0)
    assert judge_slo(fine, SLO, min_requests=20) == (False, "", judge_slo(fine, SLO, 20)[2])


async def test_a_slow_version_is_degraded_once_and_others_are_left_alone(monitor: Monitor) -> None:
    clock: Clock = monitor.clock  # type: ignore[assignment]
    registries = {label: CollectorRegistry() for label in ("1", "2", "1.0.0")}
    servers = {label: ServingMetrics("iris", label, "fp32", r) for label, r in registries.items()}
    published = Published()

    def scrape() -> None:
        pages = {label: parse_page(generate_latest(r).decode()) for label, r in registries.items()}
        monitor.series.record(clock.now, pages)

    scrape()
    for _ in range(6):  # a minute of traffic, evaluated every 10 s
        clock.now += 10
        for _ in range(50):
            servers["1"].request("ok", 0.3)  # 300 ms: over the 100 ms SLO
            servers["2"].request("ok", 0.003)
            servers["1.0.0"].request("ok", 0.3)  # not a registry version: nothing to degrade
        scrape()
        await evaluate(monitor, published)
    assert [event_id for _, event_id in published] == ["degraded:iris:1:slo:1"]
    payload = published[0][0]
    assert payload.kind == "slo" and payload.version == 1 and payload.reason.startswith("p99 ")
    assert payload.evidence["p99_ms"] > 100

    # the SLO is raised: calm for a whole window closes the episode, no new event
    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate(p99_ms=1000))
    for _ in range(8):
        clock.now += 10
        scrape()
        await evaluate(monitor, published)
    assert len(published) == 1
    assert monitor.alerts.recent("iris", open_only=True) == []


async def test_drift_of_sampled_rows_is_degraded_once_and_a_missing_reference_is_said(monitor: Monitor) -> None:
    clock: Clock = monitor.clock  # type: ignore[assignment]
    rng = np.random.default_rng(1)
    published = Published()

    def ingest(version: str, rows: np.ndarray) -> None:
        for row in rows:
            message = {"model": "iris", "version": version, "inputs": [{"shape": [1, 3], "data": row.tolist()}]}
            assert monitor.samples.ingest(orjson.dumps(message), clock.now)

    ingest("1", rng.normal(size=(300, 3)))
    ingest("2", rng.normal(size=(300, 3)))
    await evaluate(monitor, published)
    assert published == []
    view = await anyio.to_thread.run_sync(monitor.drift, "iris", 2, None)
    assert view.samples == 300 and not view.drifted
    assert view.reasons == ["no training reference: iris:2 has no train_split artifact in the registry"]

    for _ in range(5):
        clock.now += 10
        shifted = rng.normal(size=(100, 3))
        shifted[:, 1] += 1.5
        ingest("1", shifted)
        await evaluate(monitor, published)
    assert [event_id for _, event_id in published] == ["degraded:iris:1:drift:1"]
    assert published[0][0].evidence["features"][0]["feature"] == 1
    view = await anyio.to_thread.run_sync(monitor.drift, "iris", None, None)  # the version sampled last
    assert view.version == 1 and view.drifted and view.reasons[0].startswith("feature 1: PSI")
