"""The usage store on SQLite and PostgreSQL alike: reports from two replicas applied at once add up (none
lost to the other's update), a redelivered one adds nothing, and a minute keeps its UTC instant whatever
the database session's time zone."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gallery_common.db import make_engine
from gallery_common.events import ModelUsage, UsageTally
from gallery_deployer.usage.migrations import upgrade
from gallery_deployer.usage.records import UsageStore

MINUTE = datetime(2026, 12, 6, 23, 59, tzinfo=UTC)  # the last minute of a UTC day


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_server").new_database())

        @event.listens_for(engine, "connect")
        def far_from_utc(connection, _record) -> None:  # type: ignore[no-untyped-def]
            with connection.cursor() as cursor:
                cursor.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14: another day

    upgrade(engine)
    yield engine
    engine.dispose()


def report(replica: str, sequence: int, requests: int) -> ModelUsage:
    tally = UsageTally(
        version="1", caller="inference-0f0f0f0f", requests=requests, rows=2 * requests, compute_seconds=0.5
    )
    return ModelUsage(model="iris", replica=replica, sequence=sequence, minute=MINUTE, tallies=[tally])


def test_reports_applied_at_once_add_up_once_each(engine: Engine) -> None:
    store = UsageStore(engine)
    reports = [(f"usage.{r}.{s}.iris", report(r, s, 1 + s)) for r in ("a", "b") for s in range(10)]
    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(lambda item: store.apply(*item), reports))
    assert applied == [True] * 20
    assert not store.apply(*reports[3]), "a redelivered report adds nothing"

    day = store.usage(MINUTE - timedelta(days=1), MINUTE + timedelta(days=1), "day")
    assert [(line.period_start, line.requests, line.rows) for line in day] == [
        (datetime(2026, 12, 6, tzinfo=UTC), 110, 220)
    ]
    assert day[0].compute_seconds == 10.0
    hour = store.usage(MINUTE, MINUTE + timedelta(minutes=1), "hour")
    assert [line.period_start for line in hour] == [datetime(2026, 12, 6, 23, tzinfo=UTC)]
    assert store.usage(MINUTE + timedelta(minutes=1), MINUTE + timedelta(hours=1), "hour") == []
