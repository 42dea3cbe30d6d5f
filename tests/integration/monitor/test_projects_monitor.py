"""Projects in the monitor: a model's timeline, figures, drift, SLOs and alerts belong to the project
its lifecycle events carry; a drift alert and its model.degraded carry it; a caller of another
project gets the answer of a model the monitor never saw. Real monitor and registry apps with
tokens, a real nats-server, samples published as the gateway publishes them."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from monitor_service_harness import WEIGHTS, publish_events, publish_samples, put_file, serve, stored_events
from test_monitor_service import sample_messages, training_rows
from waiting import wait_for

from gallery_common.audit import AuditRecord
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus
from gallery_common.events import ModelDeployed, ModelValidated, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_common.projects import ProjectRecord
from gallery_common.settings import GallerySettings
from gallery_monitor.app import create
from gallery_monitor.settings import MonitorSettings
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

WINDOW_S = 4.0
TOKENS = "root:admin,a:alpha:reader,aa:alpha:admin,b:beta:writer,bb:beta:admin"


def with_projects(settings: GallerySettings) -> None:
    for name in ("alpha", "beta"):
        settings.project_directory().put(ProjectRecord.new(name, f"team {name}", "test", {}))


@dataclass
class Stack:
    monitor: str
    nats_url: str

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.monitor}{path}", headers=headers, timeout=10, **kwargs)

    def get(self, path: str, token: str, **params: Any) -> httpx.Response:
        return self.call("GET", path, token, params=params)


def audit_records(nats_url: str, project: str) -> list[AuditRecord]:
    async def read() -> list[AuditRecord]:
        async with EventBus(nats_url, "auditor") as bus:
            return await AuditLog(bus).records(project)

    return asyncio.run(read())


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Stack]:
    artifact_root = (tmp_path / "artifacts").as_uri()
    registry_settings = RegistrySettings(home=tmp_path, artifact_root=artifact_root, api_tokens={})
    with_projects(registry_settings)
    x = training_rows(np.random.default_rng(0), 2000)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x @ WEIGHTS).argmax(axis=1))
    split = put_file(tmp_path, "iris/1/train.npz", buffer.getvalue())
    settings = MonitorSettings(
        home=tmp_path,
        nats_url=nats_server.url,
        artifact_root=artifact_root,
        api_tokens=TOKENS,
        deployer_url=None,
        gateway_url=None,
        scrape_targets=[],
        scrape_interval_s=0.5,
        evaluate_interval_s=0.5,
        slo_window_s=WINDOW_S,
        slo_min_requests=5,
        slo_drift_min_samples=100,
    )
    with_projects(settings)
    with serve(create_app_for(registry_settings, with_bus=False)) as registry:
        httpx.post(f"{registry}/api/v1/models", json={"name": "iris", "project": "alpha"}).raise_for_status()
        httpx.post(
            f"{registry}/api/v1/models/iris/versions", json={"artifacts": {"train_split": split}}
        ).raise_for_status()
        with serve(create(settings.model_copy(update={"registry_url": registry}))) as monitor:
            yield Stack(monitor, nats_server.url)


def test_a_models_views_and_alerts_belong_to_its_project(stack: Stack) -> None:
    events = [
        make_event(ModelValidated(model="iris", project="alpha", version=1), "/t", event_id="e-validated"),
        make_event(
            ModelDeployed(model="iris", project="alpha", version=1, deployment_id="iris-1", stage="production"),
            "/t",
            event_id="e-deployed",
        ),
    ]
    publish_events(stack.nats_url, events)
    wait_for("iris' timeline", lambda: len(stack.get("/api/v1/models/iris/timeline", "a").json()) == 2, 30)
    [model] = stack.get("/api/v1/models", "a").json()
    assert model["model"] == "iris" and model["project"] == "alpha"

    # beta's callers see nothing of alpha's model: each answer is that of a model never seen
    assert stack.get("/api/v1/models", "b").json() == []
    listed = stack.get("/api/v1/models", "b", project="alpha")
    assert listed.status_code == 404 and listed.json()["error"] == "project 'alpha' not found"
    for path in (
        "/api/v1/models/{}/timeline",
        "/api/v1/models/{}/figures",
        "/api/v1/models/{}/drift",
        "/api/v1/slos/{}",
    ):
        hidden, unknown = stack.get(path.format("iris"), "b"), stack.get(path.format("wine"), "b")
        assert hidden.status_code == unknown.status_code == 404, path
        assert hidden.json()["error"].replace("iris", "X") == unknown.json()["error"].replace("wine", "X"), path
    assert stack.get("/api/v1/canary/iris", "b").status_code == 404
    refused = stack.call("PUT", "/api/v1/slos/iris", "bb", json={"drift_psi": 0.1})
    assert refused.status_code == 404
    # alpha's admin sets the SLO; its reader reads it
    assert stack.call("PUT", "/api/v1/slos/iris", "aa", json={"drift_psi": 0.3}).status_code == 200
    assert stack.get("/api/v1/slos/iris", "a").json()["drift_psi"] == 0.3
    # the change is in alpha's audit chain, with who made it and the value before and after
    [slo_change] = [r for r in audit_records(stack.nats_url, "alpha") if r.target == "iris/slos"]
    assert slo_change.action == "policy_change" and slo_change.actor.startswith("token-")
    assert slo_change.before["drift_psi"] != 0.3 and slo_change.after["drift_psi"] == 0.3

    # a shifted distribution opens a drift alert in alpha; model.degraded carries alpha
    rng = np.random.default_rng(1)
    publish_samples(stack.nats_url, "inference.sample.iris", sample_messages(training_rows(rng, 300), per_message=3))
    wait_for("300 samples", lambda: stack.get("/api/v1/models/iris/drift", "a").json()["samples"] == 300, 30)
    deadline = time.monotonic() + 4 * WINDOW_S
    while time.monotonic() < deadline and not stack.get("/api/v1/alerts", "a").json():
        publish_samples(stack.nats_url, "inference.sample.iris", sample_messages(training_rows(rng, 100, shift=2.0)))
        time.sleep(0.5)
    [alert] = stack.get("/api/v1/alerts", "a").json()
    assert alert["kind"] == "drift" and alert["project"] == "alpha"
    degraded = wait_for("model.degraded", lambda: stored_events(stack.nats_url, "model.degraded"), 30)
    assert [(e.data.model, e.data.project) for e in degraded] == [("iris", "alpha")]

    # beta sees no alert of alpha's; an installation-wide token sees it, and filters by project
    assert stack.get("/api/v1/alerts", "b").json() == []
    assert stack.get("/api/v1/alerts", "b", project="alpha").status_code == 404
    assert [a["id"] for a in stack.get("/api/v1/alerts", "root").json()] == [alert["id"]]
    assert stack.get("/api/v1/alerts", "root", project="beta").json() == []
