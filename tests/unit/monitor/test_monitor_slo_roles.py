"""Setting a model's SLOs needs the admin role: a breached SLO rolls the model back.

A writer setting an impossible SLO (p99 under a microsecond) would take a healthy model out of
service at the next evaluation; the real routes refuse it and keep the SLO as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gallery_common.app import create_app
from gallery_common.db import make_engine
from gallery_common.settings import GallerySettings
from gallery_monitor import routes
from gallery_monitor.migrations import upgrade
from gallery_monitor.records import Slo, SloPublic, SloUpdate
from gallery_monitor.slos import SloStore
from gallery_monitor.timeline import TimelineStore

DEFAULTS = Slo(p99_ms=100, error_rate=0.01, drift_psi=0.2, drift_min_samples=200, window_s=60)


@dataclass
class MonitorWithSlos:
    """The part of the monitor the SLO routes use: the SLOs, and the timeline for the model's project."""

    slos: SloStore
    timeline: TimelineStore

    def set_slo(self, model: str, update: SloUpdate, actor: str) -> SloPublic:
        return self.slos.update(model, update)  # the audit trail is the real monitor's (tested with NATS)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    upgrade(engine)
    slos = SloStore(engine, DEFAULTS, max_window_s=900, max_quality_window_s=86400)
    monitor = MonitorWithSlos(slos, TimelineStore(engine))
    settings = GallerySettings(
        home=tmp_path,
        service_name="monitor",
        api_tokens="w:writer,a:admin,r:reader",  # type: ignore[arg-type]
    )

    app = create_app(settings, title="monitor", routers=[routes.router], use_bus=False)
    app.dependency_overrides[routes.get_monitor] = lambda: monitor
    with TestClient(app) as test_client:
        yield test_client
    engine.dispose()


def test_a_writer_cannot_set_an_slo_that_would_roll_the_model_back(client: TestClient) -> None:
    impossible = {"p99_ms": 0.001, "window_s": 5}
    refused = client.put("/api/v1/slos/iris", json=impossible, headers={"Authorization": "Bearer w"})
    assert refused.status_code == 403
    assert refused.json() == {"error": "this request needs the admin role; your token has writer"}
    kept = client.get("/api/v1/slos/iris", headers={"Authorization": "Bearer r"}).json()
    assert (kept["p99_ms"], kept["window_s"]) == (100, 60)

    set_by_admin = client.put("/api/v1/slos/iris", json={"p99_ms": 250}, headers={"Authorization": "Bearer a"})
    assert set_by_admin.status_code == 200 and set_by_admin.json()["p99_ms"] == 250
