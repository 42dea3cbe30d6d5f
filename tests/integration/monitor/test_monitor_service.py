"""The monitor service against a real nats-server, a real registry and a real model server process.

Lifecycle events become the timeline and the models' stages; samples published as the gateway
publishes them become drift figures, and a shifted distribution one `model.degraded` (drift); a
model server scraped for real breaching a tiny p99 SLO gives exactly one `model.degraded` (slo);
feedback (`model.outcome`) far below the gate's accuracy gives exactly one `model.degraded` (quality).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from monitor_service_harness import (
    WEIGHTS,
    ModelServer,
    model_server,
    publish_events,
    publish_samples,
    put_file,
    serve,
    stored_events,
)
from waiting import wait_for

from gallery_common.events import ModelDeployed, ModelOutcome, ModelTrained, ModelValidated, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_monitor.app import create
from gallery_monitor.settings import MonitorSettings
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
WINDOW_S = 4.0


def training_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(0, 1, size=(n, 4)).astype(np.float32)
    x[:, 2] += shift
    return x


@dataclass
class Stack:
    monitor: str
    nats_url: str
    server: ModelServer

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.monitor}{path}", params=params, timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    with model_server(tmp_path_factory.mktemp("modelserver")) as running:
        yield running


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats, server: ModelServer) -> Iterator[Stack]:
    artifact_root = (tmp_path / "artifacts").as_uri()
    registry_settings = RegistrySettings(
        home=tmp_path, nats_url=nats_server.url, artifact_root=artifact_root, api_tokens={}
    )
    x = training_rows(np.random.default_rng(0), 2000)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x @ WEIGHTS).argmax(axis=1))
    split = put_file(tmp_path, "iris/1/train.npz", buffer.getvalue())
    settings = MonitorSettings(
        home=tmp_path,
        nats_url=nats_server.url,
        artifact_root=artifact_root,
        api_tokens={},
        deployer_url=None,
        gateway_url=None,
        scrape_targets=[server.url],
        scrape_interval_s=0.5,
        evaluate_interval_s=0.5,
        slo_window_s=WINDOW_S,
        slo_min_requests=5,
        slo_drift_min_samples=100,
    )
    with serve(create_app_for(registry_settings, with_bus=False)) as registry:
        httpx.post(f"{registry}/api/v1/models", json={"name": "iris"}).raise_for_status()
        version = {"artifacts": {"train_split": split}}
        httpx.post(f"{registry}/api/v1/models/iris/versions", json=version).raise_for_status()
        with serve(create(settings.model_copy(update={"registry_url": registry}))) as monitor:
            yield Stack(monitor, nats_server.url, server)


def test_lifecycle_events_become_the_timeline_and_the_models_stages(stack: Stack) -> None:
    ref = {"uri": "file:///m/model.onnx", "sha256": "a" * 64}
    events = [
        make_event(ModelTrained(model="iris", run_id="run-7", artifacts={"onnx": ref}), "/t", event_id="e-trained"),
        make_event(ModelValidated(model="iris", version=1, semver="1.0.0"), "/t", event_id="e-validated"),
        make_event(
            ModelDeployed(model="iris", version=1, deployment_id="iris-1", stage="production"), "/t", event_id="e-dep"
        ),
    ]
    for event in events:
        event.traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    publish_events(stack.nats_url, events)
    publish_events(stack.nats_url, [events[1]])  # a repeat is stored once

    timeline = wait_for(
        "three timeline items", lambda: len(r := stack.get("/api/v1/models/iris/timeline").json()) == 3 and r, 30
    )
    assert [(i["version"], i["event"], i["event_id"]) for i in timeline] == [
        (None, "trained", "e-trained"), (1, "validated", "e-validated"), (1, "deployed", "e-dep"),
    ]  # fmt: skip
    assert all(i["trace_id"] == TRACE_ID for i in timeline)
    assert timeline[2]["summary"] == "deployed fp32 as production with 100% of traffic (local)"
    [model] = [m for m in stack.get("/api/v1/models").json() if m["model"] == "iris"]
    assert model["aliases"] == {"production": 1}
    assert model["versions"][0] | {"last_event_at": None} == {
        "version": 1, "last_event": "deployed", "last_event_at": None, "stage": "production",
        "variant": "fp32", "traffic_percent": 100.0,
    }  # fmt: skip
    for path in ("timeline", "figures", "drift"):
        missing = stack.get(f"/api/v1/models/wine/{path}")
        assert missing.status_code == 404 and "'wine'" in missing.json()["error"]
    assert stack.get("/api/v1/canary/wine").status_code == 404
    # a model known from its events alone has no figures, and no samples to judge drift on
    publish_events(stack.nats_url, [make_event(ModelValidated(model="digits", version=1), "/t", event_id="e-d")])
    wait_for("digits' timeline", lambda: stack.get("/api/v1/models/digits/timeline").status_code == 200, 30)
    figures = stack.get("/api/v1/models/digits/figures").json()
    assert figures == {"model": "digits", "window_s": 60.0, "versions": [], "cache_hit_rate": None, "series": []}
    drift = stack.get("/api/v1/models/digits/drift").json()
    assert drift["samples"] == 0 and drift["version"] is None and drift["reasons"] == ["no samples of digits yet"]


def sample_messages(rows: np.ndarray, per_message: int = 1) -> list[bytes]:
    messages = []
    for start in range(0, len(rows), per_message):
        chunk = rows[start : start + per_message]
        logits = chunk @ WEIGHTS
        doc = {
            "model": "iris",
            "version": "1",
            "variant": "fp32",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.tolist()}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.tolist()}],
            "latency_ms": 1.0,
            "time": time.time(),
        }
        messages.append(orjson.dumps(doc))
    return messages


def test_a_shifted_input_distribution_drifts_and_publishes_one_degraded(stack: Stack) -> None:
    rng = np.random.default_rng(1)
    publish_samples(stack.nats_url, "inference.sample.iris", sample_messages(training_rows(rng, 300), per_message=3))
    drift = wait_for(
        "300 samples", lambda: (d := stack.get("/api/v1/models/iris/drift").json())["samples"] == 300 and d, 30
    )
    assert drift["version"] == 1 and drift["window_s"] == WINDOW_S
    # ranked by PSI, the largest first: this registry's version carries no feature importance from the gate
    assert sorted(f["feature"] for f in drift["features"]) == [0, 1, 2, 3]
    assert [f["psi"] for f in drift["features"]] == sorted((f["psi"] for f in drift["features"]), reverse=True)
    assert drift["ranked_by"] == "PSI: the gate recorded no feature importance for this version"
    assert not drift["drifted"] and drift["reasons"] == []
    assert max(f["psi"] for f in drift["features"]) < 0.2 and drift["prediction_psi"] < 0.2

    # feature 2 moves by two standard deviations, and keeps coming for several evaluations
    deadline = time.monotonic() + 4 * WINDOW_S
    while time.monotonic() < deadline:
        publish_samples(stack.nats_url, "inference.sample.iris", sample_messages(training_rows(rng, 100, shift=2.0)))
        time.sleep(0.5)
    drift = stack.get("/api/v1/models/iris/drift").json()
    assert drift["drifted"] and drift["reasons"][0].startswith("feature 2: PSI ")

    degraded = [e for e in stored_events(stack.nats_url, "model.degraded") if e.data.kind == "drift"]
    assert len(degraded) == 1, [e.id for e in degraded]
    event = degraded[0]
    assert event.id == "degraded:iris:1:drift:1" and event.data.version == 1
    assert event.data.evidence["features"][0]["feature"] == 2 and event.data.evidence["samples"] >= 100
    assert event.data.window_seconds == WINDOW_S
    [alert] = stack.get("/api/v1/alerts", model="iris", open="true").json()
    assert alert["kind"] == "drift" and alert["event_id"] == event.id and alert["closed_at"] is None
    # the event itself comes back through the lifecycle stream into the timeline
    wait_for(
        "a degraded event",
        lambda: any(i["event"] == "degraded" for i in stack.get("/api/v1/models/iris/timeline").json()),
        30,
    )


def test_a_model_server_over_its_p99_slo_gives_exactly_one_degraded(stack: Stack) -> None:
    bad = httpx.put(f"{stack.monitor}/api/v1/slos/iris", json={"p99_ms": -1, "colour": "red"})
    assert bad.status_code == 422 and "p99_ms" in bad.json()["error"] and "colour" in bad.json()["error"]
    slo = httpx.put(f"{stack.monitor}/api/v1/slos/iris", json={"p99_ms": 0.001}).json()
    assert slo == {"model": "iris", "p99_ms": 0.001, "error_rate": 0.01, "drift_psi": 0.2,
                   "drift_min_samples": 100, "window_s": WINDOW_S, "min_online_accuracy": None,
                   "max_accuracy_drop": None, "max_online_rmse": None, "max_rmse_ratio": None, "quality_min_rows": 50,
                   "quality_window_s": 3600.0}  # fmt: skip
    assert stack.get("/api/v1/slos/iris").json() == slo

    publish_events(stack.nats_url, [
        make_event(ModelDeployed(model="iris", version=1, deployment_id="iris-1"), "/t", event_id="d1"),
        make_event(
            ModelDeployed(model="iris", version=2, deployment_id="iris-2", stage="canary", traffic_percent=10),
            "/t", event_id="d2",
        ),
    ])  # fmt: skip
    rows = np.random.default_rng(2).normal(size=(1, 4)).astype(np.float32)
    with httpx.Client(timeout=5) as client:
        deadline = time.monotonic() + 3 * WINDOW_S
        while time.monotonic() < deadline:
            assert stack.server.infer(client, rows).status_code == 200
            time.sleep(0.02)

    canary = stack.get("/api/v1/canary/iris", window_s=WINDOW_S).json()
    assert canary["canary"]["version"] == "2" and canary["canary"]["requests"] == 0
    assert canary["baseline"]["version"] == "1" and canary["baseline"]["variant"] == "fp32"
    assert canary["baseline"]["requests"] > 0
    # the figures the deployer's canary analysis judges, from the same windows
    comparison = canary["comparison"]
    assert (comparison["canary_requests"], comparison["canary_error_rate"]) == (0, None)
    assert comparison["baseline_requests"] == canary["baseline"]["requests"]
    assert comparison["baseline_p99_ms"] == canary["baseline"]["p99_ms"]
    degraded = [e for e in stored_events(stack.nats_url, "model.degraded") if e.data.kind == "slo"]
    assert len(degraded) == 1, [e.id for e in degraded]
    event = degraded[0]
    assert event.id == "degraded:iris:1:slo:1"
    assert event.data.reason.startswith("p99 ") and "> SLO 0.001 ms" in event.data.reason
    assert event.data.evidence["p99_ms"] > 0.001 and event.data.evidence["requests"] >= 5

    figures = stack.get("/api/v1/models/iris/figures", window_s=WINDOW_S).json()
    [version] = figures["versions"]
    assert (version["version"], version["variant"]) == ("1", "fp32")
    assert version["rps"] > 5 and version["error_rate"] == 0 and version["p99_ms"] > 0
    assert version["batch_size_mean"] == 1
    assert figures["series"] and {p["version"] for p in figures["series"]} == {"1"}
    assert figures["cache_hit_rate"] is None
    too_long = stack.get("/api/v1/models/iris/figures", window_s=10_000)
    assert too_long.status_code == 422 and "900 s" in too_long.json()["error"]


def outcome(request: str, correct: bool) -> Any:
    payload = ModelOutcome(
        model="iris",
        version="1",
        variant="fp32",
        request_id=request,
        caller="app",
        given_by="labeller",
        answered_at=datetime.now(UTC),
        rows=1,
        kind="label",
        label=[2],
        correct=[correct],
        correct_rows=int(correct),
    )
    return make_event(payload, "/gateway", event_id=f"outcome.{request}")


def test_feedback_far_below_the_gate_degrades_the_version_once_and_stays_out_of_the_timeline(stack: Stack) -> None:
    report = {"accuracy": 0.95, "macro_f1": 0.94}
    validated = make_event(ModelValidated(model="iris", version=1, report=report), "/t", event_id="q-validated")
    slo = httpx.put(f"{stack.monitor}/api/v1/slos/iris", json={"max_accuracy_drop": 0.1, "quality_min_rows": 20})
    assert slo.status_code == 200 and slo.json()["max_accuracy_drop"] == 0.1
    outcomes = [outcome(f"q{i}", correct=i % 2 == 0) for i in range(40)]  # half right: 45 points below the gate
    publish_events(stack.nats_url, [validated, *outcomes, outcomes[0]])  # the repeat is counted once

    quality = wait_for(
        "40 labelled rows",
        lambda: (
            (q := stack.get("/api/v1/models/iris/quality").json())["versions"]
            and q["versions"][0]["labelled_rows"] == 40
            and q
        ),
        30,
    )
    [version] = quality["versions"]
    assert (version["version"], version["accuracy"], version["gate_accuracy"]) == ("1", 0.5, 0.95)
    assert quality["window_s"] == 3600.0 and sum(p["labelled_rows"] for p in quality["series"]) == 40
    # 41 outcomes, none a timeline line (the degraded event may have come back already)
    assert [i["event"] for i in stack.get("/api/v1/models/iris/timeline").json()][:1] == ["validated"]
    assert "outcome" not in {i["event"] for i in stack.get("/api/v1/models/iris/timeline").json()}

    wait_for("the quality alert", lambda: stack.get("/api/v1/alerts", model="iris", open="true").json(), 30)
    degraded = [e for e in stored_events(stack.nats_url, "model.degraded") if e.data.kind == "quality"]
    assert [e.id for e in degraded] == ["degraded:iris:1:quality:1"]
    assert degraded[0].data.reason.startswith("online accuracy 50.0% is 45.0 points below the gate's 95.0%")
    assert degraded[0].data.evidence["labelled_rows"] == 40

    assert stack.get("/api/v1/models/wine/quality").status_code == 404
    too_long = stack.get("/api/v1/models/iris/quality", window_s=30 * 86400)
    assert too_long.status_code == 422 and "GALLERY_OUTCOME_RETENTION_S" in too_long.json()["error"]
