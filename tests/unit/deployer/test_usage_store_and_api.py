"""The usage store (a report applied once, sums per hour and day) and `GET /api/v1/usage` (JSON, CSV, a
reader token, 422 with the reason for a bad query), on SQLite; and the gateway's reporter, which resends
an unacknowledged report under the same event id and never sends a delta twice."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from gallery_common.app import create_app
from gallery_common.events import ModelUsage, Payload, UsageTally
from gallery_common.projects import ProjectRecord
from gallery_common.settings import GallerySettings
from gallery_deployer.deployer.migrations import upgrade as upgrade_deployments
from gallery_deployer.deployer.records import DeploymentRecord, DeploymentStore, Stage
from gallery_deployer.gateway.usage import UsageMeter, UsageReporter
from gallery_deployer.usage import api as usage_api
from gallery_deployer.usage.migrations import upgrade
from gallery_deployer.usage.records import UsageStore

READER, WRITER = "usage-reader", "usage-writer"
T0 = datetime(2026, 12, 6, 10, 58, tzinfo=UTC)


def report(replica: str, sequence: int, minute: datetime, *tallies: tuple[str, str, int, int, float]) -> ModelUsage:
    return ModelUsage(
        model="iris",
        replica=replica,
        sequence=sequence,
        minute=minute,
        tallies=[UsageTally(version=v, caller=c, requests=n, rows=r, compute_seconds=s) for v, c, n, r, s in tallies],
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, UsageStore]]:
    settings = GallerySettings(
        home=tmp_path,
        service_name="deployer",
        api_tokens=f"{READER}:reader",  # type: ignore[arg-type]
    )
    app = create_app(settings, title="usage", routers=[usage_api.router], use_bus=False, use_database=True)
    with TestClient(app) as test_client:
        engine = app.state.resources.engine
        upgrade_deployments(engine)  # a model's project comes from its deployments, in the same database
        upgrade(engine)
        yield test_client, UsageStore(engine)


def get(client: TestClient, token: str | None = READER, **query: str) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return client.get("/api/v1/usage", params=query, headers=headers)


def test_a_report_is_applied_once_and_summed_per_hour_and_day(client: tuple[TestClient, UsageStore]) -> None:
    http, store = client
    first = report("a", 0, T0, ("1", "alice", 3, 6, 0.25), ("2", "bob", 1, 32, 0.5))
    assert store.apply("usage.a.0.iris", first)
    assert not store.apply("usage.a.0.iris", first), "a redelivered report adds nothing"
    assert store.apply("usage.b.0.iris", report("b", 0, T0, ("1", "alice", 2, 2, 0.25)))
    assert store.apply("usage.a.1.iris", report("a", 1, T0 + timedelta(minutes=5), ("1", "alice", 1, 1, 0.125)))

    since, until = (T0 - timedelta(hours=2)).isoformat(), (T0 + timedelta(hours=2)).isoformat()
    hourly = get(http, since=since, until=until, period="hour").json()
    alice = [(r["period_start"], r["requests"], r["rows"]) for r in hourly["rows"] if r["caller"] == "alice"]
    assert alice == [("2026-12-06T10:00:00Z", 5, 8), ("2026-12-06T11:00:00Z", 1, 1)]
    assert hourly["totals"] == {"requests": 7, "rows": 41, "compute_seconds": 1.125}

    daily = get(http, since=since, until=until, period="day", caller="alice").json()
    assert [(r["period_start"], r["requests"], r["rows"]) for r in daily["rows"]] == [("2026-12-06T00:00:00Z", 6, 9)]

    table = get(http, since=since, until=until, format="csv", model="iris")
    assert table.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(table.text)))
    assert [(line["caller"], line["version"], line["requests"]) for line in lines] == [
        ("alice", "1", "5"),
        ("bob", "2", "1"),
        ("alice", "1", "1"),
    ]


def test_the_minute_under_way_is_in_the_report(client: tuple[TestClient, UsageStore]) -> None:
    http, store = client
    assert store.apply("usage.c.0.iris", report("c", 0, datetime.now(UTC), ("3", "carol", 2, 64, 0.5)))
    answer = get(http, since="5m").json()  # until: now, in the minute the report was filed under
    assert [(r["caller"], r["requests"], r["rows"]) for r in answer["rows"]] == [("carol", 2, 64)]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"since": "yesterday"}, "since='yesterday' is neither an ISO 8601 time"),
        ({"since": "24x"}, "since='24x' is neither"),
        ({"period": "week"}, "period='week' is not one of: hour, day"),
        ({"format": "xml"}, "format='xml' is not one of: json, csv"),
        ({"since": "1h", "until": "2h"}, "must be before until"),
    ],
)
def test_a_bad_query_is_422_with_the_reason(
    client: tuple[TestClient, UsageStore], query: dict[str, str], reason: str
) -> None:
    answer = get(client[0], **query)
    assert answer.status_code == 422
    assert reason in answer.json()["error"]


def test_usage_needs_a_reader_token(client: tuple[TestClient, UsageStore]) -> None:
    assert get(client[0], token=None).status_code == 401
    assert get(client[0]).status_code == 200


def test_a_project_member_sees_only_its_projects_usage(tmp_path: Path) -> None:
    settings = GallerySettings(
        home=tmp_path, service_name="deployer", api_tokens="root:reader,a-tok:alpha:reader,b-tok:beta:reader"
    )
    for name in ("alpha", "beta"):
        settings.project_directory().put(ProjectRecord.new(name, "", "root", {}))
    app = create_app(settings, title="usage", routers=[usage_api.router], use_bus=False, use_database=True)
    with TestClient(app) as http:
        engine = app.state.resources.engine
        upgrade_deployments(engine)
        upgrade(engine)
        DeploymentStore(engine).save(
            DeploymentRecord(
                id="iris-1",
                model="iris",
                project="alpha",
                version=1,
                stage=Stage.production,
                artifact_uri="file:///m",
                artifact_sha256="0" * 64,
            )
        )
        store = UsageStore(engine)
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        store.apply("e1", report("r1", 0, minute, ("1", "alice", 3, 3, 0.1)))
        since = (minute - timedelta(hours=1)).isoformat()
        assert get(http, token="root", since=since).json()["totals"]["requests"] == 3
        assert get(http, token="a-tok", since=since).json()["totals"]["requests"] == 3
        assert get(http, token="b-tok", since=since).json()["totals"]["requests"] == 0  # as if never metered
        assert get(http, token="b-tok", since=since, project="alpha").status_code == 404
        assert get(http, token="a-tok", since=since, project="alpha").json()["totals"]["requests"] == 3


async def test_the_reporter_sends_each_models_usage_in_its_project() -> None:
    meter = UsageMeter()
    bus = FlakyBus(failures=0)
    projects = {"iris": "alpha"}
    reporter = UsageReporter(bus, meter, 3600, replica="r1", project_of=lambda m: projects.get(m, "default"))  # type: ignore[arg-type]
    meter.record("iris", "1", "alice", 1, 0.1)
    meter.record("wine", "1", "alice", 1, 0.1)
    await reporter.report()
    assert {payload.model: payload.project for _, payload in bus.sent} == {"iris": "alpha", "wine": "default"}


class FlakyBus:
    """Publishes into `sent` (event id, payload); the first `failures` calls fail as a NATS outage would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, Payload]] = []

    async def publish(self, payload: Payload, *, event_id: str | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        assert event_id is not None
        self.sent.append((event_id, payload))


async def test_the_reporter_resends_under_the_same_id_and_sends_each_delta_once() -> None:
    meter = UsageMeter()
    bus = FlakyBus(failures=1)
    reporter = UsageReporter(bus, meter, interval_s=3600, replica="r1")  # type: ignore[arg-type]
    meter.record("iris", "1", "alice", 4, 0.5)
    meter.record("iris", "1", "alice", 2, 0.25)
    with pytest.raises(TimeoutError):
        await reporter.report()
    meter.record("iris", "2", "bob", 1, 0.125)  # counted while the first report waits
    assert await reporter.report() == 2, "the unacknowledged report goes first, then what was counted since"
    assert await reporter.report() == 0, "nothing new: nothing sent"
    ids = [event_id for event_id, _ in bus.sent]
    assert ids == ["usage.r1.0.iris", "usage.r1.1.iris"]
    tallies = [[t.model_dump() for t in p.tallies] for _, p in bus.sent]  # type: ignore[attr-defined]
    assert tallies == [
        [{"version": "1", "caller": "alice", "requests": 2, "rows": 6, "compute_seconds": 0.75}],
        [{"version": "2", "caller": "bob", "requests": 1, "rows": 1, "compute_seconds": 0.125}],
    ]


def test_prometheus_shows_the_meters_totals() -> None:
    meter = UsageMeter()
    meter.record("promo", "3", "inference-1234abcd", 32, 0.5)
    meter.record("promo", "3", "inference-1234abcd", 1, 0.25)
    text = generate_latest(REGISTRY).decode()
    labels = 'caller="inference-1234abcd",model="promo",version="3"'
    assert f"gallery_usage_requests_total{{{labels}}} 2.0" in text
    assert f"gallery_usage_rows_total{{{labels}}} 33.0" in text
    assert f"gallery_usage_compute_seconds_total{{{labels}}} 0.75" in text
