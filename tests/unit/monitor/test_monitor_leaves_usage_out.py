"""The monitor's timeline consumer takes every lifecycle event but the gateways' usage reports, which come
every few seconds from each replica and are the deployer's to keep."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from gallery_common.events import ModelDegraded, ModelUsage, UsageTally, make_event
from gallery_monitor.app import timeline_events


async def test_usage_reports_stay_out_of_the_timeline() -> None:
    recorded: list[Any] = []
    monitor: Any = SimpleNamespace(timeline=SimpleNamespace(record=recorded.append), quality=None)
    router = timeline_events(monitor)
    tally = UsageTally(version="1", caller="local", requests=3, rows=3, compute_seconds=0.01)
    usage = ModelUsage(model="iris", replica="r", sequence=0, minute=datetime.now(UTC), tallies=[tally])
    degraded = ModelDegraded(model="iris", version=1, kind="slo", reason="p99 over 50 ms")
    await router.dispatch(make_event(usage, "gateway"))
    await router.dispatch(make_event(degraded, "monitor"))
    assert [event.data for event in recorded] == [degraded]
