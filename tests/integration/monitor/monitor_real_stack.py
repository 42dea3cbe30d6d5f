"""The real monitor for the dashboard and CLI tests: fed by lifecycle events on a real nats-server and
scraping a real model server process that serves `digits-mlp` version 1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from monitor_service_harness import model_server, publish_events
from monitor_service_harness import serve as serve_until_ready

from gallery_common.events import (
    CloudEvent,
    ModelDeployed,
    ModelOutcome,
    ModelTrained,
    ModelValidated,
    Payload,
    make_event,
)
from gallery_common.netutil import free_port
from gallery_monitor.app import create
from gallery_monitor.settings import MonitorSettings

MODEL = "digits-mlp"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
_ONNX = {"uri": "file:///m/model.onnx", "sha256": "a" * 64}


@contextmanager
def real_monitor(home: Path, nats_url: str) -> Iterator[tuple[str, str]]:
    """A model server for MODEL v1 and the monitor scraping it twice a second; yields (monitor URL, server URL)."""
    with model_server(home, model=MODEL, version="1") as server:
        settings = MonitorSettings(
            home=home,
            nats_url=nats_url,
            artifact_root=(home / "artifacts").as_uri(),
            api_tokens={},
            registry_url=f"http://127.0.0.1:{free_port()}",  # no samples arrive, so no training reference is read
            deployer_url=None,
            gateway_url=None,
            scrape_targets=[server.url],
            scrape_interval_s=0.5,
        )
        with serve_until_ready(create(settings)) as url:
            yield url, server.url


def traced(payload: Payload, event_id: str) -> CloudEvent[Any]:
    """A lifecycle event in the one trace the tests follow."""
    event = make_event(payload, "/tests/monitor", event_id=event_id)
    event.traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    return event


def publish_first_deployment(nats_url: str) -> None:
    """MODEL trained, validated as version 1 and deployed to production, as the lifecycle does."""
    publish_events(nats_url, [
        traced(ModelTrained(model=MODEL, run_id="run-1", artifacts={"onnx": _ONNX}), "e-trained"),
        traced(ModelValidated(model=MODEL, version=1, semver="1.0.0", report={"accuracy": 0.95}), "e-validated"),
        traced(ModelDeployed(model=MODEL, version=1, deployment_id="d-1"), "e-deployed"),
    ])  # fmt: skip


def publish_canary(nats_url: str) -> None:
    """Version 2 deployed as a canary with 10 % of the traffic."""
    canary = ModelDeployed(model=MODEL, version=2, deployment_id="d-2", stage="canary", traffic_percent=10)
    publish_events(nats_url, [traced(canary, "e-canary")])


def publish_feedback(nats_url: str, version: int, count: int, right: int) -> None:
    """`count` one-row answers of `version` labelled by someone, the first `right` of them answered right, as
    the gateway publishes them (`model.outcome`)."""
    outcomes = [
        ModelOutcome(
            model=MODEL, version=str(version), variant="fp32", request_id=f"answer-{version}-{i}", caller="app",
            given_by="labeller", answered_at=datetime.now(UTC), rows=1, kind="label", label=[3],
            correct=[i < right], correct_rows=int(i < right),
        )
        for i in range(count)
    ]  # fmt: skip
    publish_events(nats_url, [make_event(o, "/tests/gateway", event_id=f"outcome.{o.request_id}") for o in outcomes])


def send_traffic(server_url: str, seconds: float) -> int:
    """Open Inference Protocol requests to the model server for `seconds`; returns how many were answered."""
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}
    answered = 0
    with httpx.Client(base_url=server_url) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            http.post(f"/v2/models/{MODEL}/infer", json=body).raise_for_status()
            answered += 1
            time.sleep(0.02)
    return answered
