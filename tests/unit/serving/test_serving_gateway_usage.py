"""The gateway's usage reports when the bus refuses one: nothing counted is lost or sent twice."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gallery_common.bus import EventBus
from gallery_common.events import ModelUsage
from gallery_deployer.gateway.usage import UsageMeter, UsageReporter


class FlakyBus:
    """Takes reports, refusing the first `refusals` of them."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.stored: dict[str, ModelUsage] = {}

    async def publish(self, report: ModelUsage, *, event_id: str, **_: Any) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionError("the bus is down")
        self.stored[event_id] = report


async def test_a_report_at_shutdown_sends_what_waited_and_what_was_counted_since() -> None:
    bus = FlakyBus(refusals=1)
    meter = UsageMeter()
    reporter = UsageReporter(cast(EventBus, bus), meter, interval_s=60, replica="r")
    meter.record("iris", "1", "alice", rows=3, seconds=0.5)
    with pytest.raises(ConnectionError):
        await reporter.report()
    meter.record("iris", "1", "alice", rows=2, seconds=0.25)
    await reporter.close(timeout=5)
    tallies = [t for report in bus.stored.values() for t in report.tallies]
    assert sorted(bus.stored) == ["usage.r.0.iris", "usage.r.1.iris"]
    assert sum(t.requests for t in tallies) == 2 and sum(t.rows for t in tallies) == 5
