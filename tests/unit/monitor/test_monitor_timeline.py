"""The timeline of lifecycle events, what the monitor learns from it, and per-model SLOs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gallery_common.db import make_engine
from gallery_common.errors import InvalidRequest, NotFound
from gallery_common.events import (
    ArtifactRef,
    CloudEvent,
    ModelDeployed,
    ModelRejected,
    ModelRolledBack,
    ModelTrained,
    ModelValidated,
    Payload,
    make_event,
)
from gallery_monitor.migrations import upgrade
from gallery_monitor.records import Slo, SloUpdate
from gallery_monitor.slos import SloStore
from gallery_monitor.timeline import TimelineStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REF = ArtifactRef(uri="file:///tmp/model.onnx", sha256="0" * 64)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    upgrade(engine)
    return engine


def event(payload: Payload, minute: int, event_id: str, traceparent: str | None = TRACE) -> CloudEvent[Any]:
    built = make_event(payload, "/test", event_id=event_id)
    built.time = T0 + timedelta(minutes=minute)
    built.traceparent = traceparent
    return built


def deployed(version: int, stage: str, traffic: float, variant: str = "fp32") -> ModelDeployed:
    return ModelDeployed(
        model="iris", version=version, deployment_id=f"iris-{version}", stage=stage, traffic_percent=traffic,
        variant=variant,
    )  # fmt: skip


def test_events_are_stored_once_with_their_trace_and_a_summary(engine: Engine) -> None:
    store = TimelineStore(engine)
    trained = ModelTrained(model="iris", run_id="run-1", artifacts={"onnx": REF}, metrics={"accuracy": 0.9333})
    assert store.record(event(trained, 0, "e1"))
    assert not store.record(event(trained, 0, "e1"))  # a redelivery changes nothing
    store.record(event(ModelValidated(model="iris", version=1, semver="1.0.0"), 1, "e2", traceparent=None))
    store.record(
        event(ModelRejected(model="iris", version=2, reasons=["accuracy 0.5 < 0.7", "p99 80 ms > 50"]), 2, "e3")
    )
    items = store.timeline("iris")
    assert [(i.version, i.event, i.event_id) for i in items] == [
        (None, "trained", "e1"), (1, "validated", "e2"), (2, "rejected", "e3"),
    ]  # fmt: skip
    assert items[0].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and items[1].trace_id is None
    assert items[0].summary == "trained by run run-1 (accuracy 0.933)"
    assert items[1].summary == "validated as version 1 (semver 1.0.0)"
    assert items[2].summary == "rejected: accuracy 0.5 < 0.7; p99 80 ms > 50"
    assert items[0].time == T0
    with pytest.raises(NotFound, match="no lifecycle event of model 'wine'"):
        store.timeline("wine")


def test_stages_traffic_and_the_production_alias_follow_the_deployer(engine: Engine) -> None:
    store = TimelineStore(engine)
    store.record(event(deployed(1, "production", 100), 0, "d1"))
    store.record(event(ModelValidated(model="iris", version=2), 1, "v2"))
    store.record(event(deployed(2, "canary", 10), 2, "d2"))
    overview = store.overview("iris")
    assert overview.aliases == {"production": 1}
    assert [(v.version, v.stage, v.traffic_percent, v.last_event) for v in overview.versions] == [
        (1, "production", 100, "deployed"), (2, "canary", 10, "deployed"),
    ]  # fmt: skip

    store.record(event(deployed(2, "production", 100, "int8_dynamic"), 3, "d3"))  # promoted
    overview = store.overview("iris")
    assert overview.aliases == {"production": 2}
    assert [(v.version, v.stage, v.variant) for v in overview.versions] == [
        (1, "previous", "fp32"), (2, "production", "int8_dynamic"),
    ]  # fmt: skip

    store.record(event(ModelRolledBack(model="iris", version=2, to_version=1, reason="degraded"), 4, "r1"))
    overview = store.overview("iris")
    assert overview.aliases == {"production": 1}
    assert [(v.version, v.stage, v.traffic_percent, v.last_event) for v in overview.versions] == [
        (1, "production", 100, "deployed"), (2, "rolled_back", 0, "rolled_back"),
    ]  # fmt: skip
    assert store.timeline("iris")[-1].summary == "rolled back to version 1: degraded"
    assert [m.model for m in store.overviews()] == ["iris"]


def test_a_model_never_deployed_has_no_production_alias(engine: Engine) -> None:
    store = TimelineStore(engine)
    store.record(event(ModelValidated(model="wine", version=1), 0, "w1"))
    overview = store.overview("wine")
    assert overview.aliases == {"production": None}
    assert overview.versions[0].stage is None and overview.versions[0].last_event == "validated"


def test_slos_default_from_settings_and_change_field_by_field(engine: Engine) -> None:
    defaults = Slo(p99_ms=100, error_rate=0.01, drift_psi=0.2, drift_min_samples=200, window_s=60)
    store = SloStore(engine, defaults, max_window_s=900, max_quality_window_s=86400)
    assert store.get("iris").model_dump() == {"model": "iris", **defaults.model_dump()}
    updated = store.update("iris", SloUpdate(p99_ms=25))
    assert updated.p99_ms == 25 and updated.error_rate == 0.01
    updated = store.update("iris", SloUpdate(window_s=120, drift_psi=0.3))
    assert (updated.p99_ms, updated.window_s, updated.drift_psi) == (25, 120, 0.3)
    assert store.get("iris") == updated
    assert store.all() == {"iris": Slo(**updated.model_dump(exclude={"model"}))}
    assert store.get("wine").p99_ms == 100
    with pytest.raises(InvalidRequest, match="window_s 1000 is longer than the 900 s"):
        store.update("iris", SloUpdate(window_s=1000))
