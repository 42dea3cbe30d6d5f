"""Usage metering for pay-per-use serving: requests, rows and compute seconds per model, version and caller.

The request path adds to a plain tally (one dict lookup, three additions); Prometheus reads the tallies
when it scrapes (`gallery_usage_*_total`, labels model, version, caller), so a request pays for no
counter lock. Rows and compute seconds are what the model server says the request cost
(`x-gallery-rows`, `x-gallery-compute-seconds` on its answer). Only answers a model server gave with 200
are metered; cached answers and failures are not.

`UsageReporter` sends each replica's deltas as `model.usage` events (one per model, every
GALLERY_USAGE_REPORT_S and at shutdown). A report keeps its event id (`usage.<replica>.<sequence>.<model>`)
until JetStream acknowledges it, so a resend after a lost acknowledgement is stored once, and what could
not be sent waits for the next try, adding nothing twice.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gallery_common.bus import EventBus
from gallery_common.contracts.oip import USAGE_ROWS_HEADER, USAGE_SECONDS_HEADER
from gallery_common.events import ModelUsage, UsageTally
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import get_logger

log = get_logger(__name__)

Key = tuple[str, str, str]  # model, version, caller
LABELS = ("model", "version", "caller")


def rows_and_seconds(headers: Mapping[str, str]) -> tuple[int, float]:
    """The rows and compute seconds a model server's answer reports (0 where it reports none)."""
    rows = headers.get(USAGE_ROWS_HEADER)
    seconds = headers.get(USAGE_SECONDS_HEADER)
    try:
        return (int(rows) if rows else 0), (float(seconds) if seconds else 0.0)
    except ValueError:
        return 0, 0.0


class UsageMeter:
    """Running totals per (model, version, caller) since the process started."""

    def __init__(self) -> None:
        self._tallies: dict[Key, list[float]] = {}
        _METERS.add(self)

    def record(self, model: str, version: str, caller: str, rows: int, seconds: float) -> None:
        """Count one answered request."""
        key = (model, version, caller)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = [0, 0, 0.0]
        tally[0] += 1
        tally[1] += rows
        tally[2] += seconds

    def totals(self) -> dict[Key, tuple[int, int, float]]:
        """A copy of the totals: requests, rows, compute seconds per key."""
        return {key: (int(t[0]), int(t[1]), t[2]) for key, t in list(self._tallies.items())}


_METERS: weakref.WeakSet[UsageMeter] = weakref.WeakSet()


class _UsageCollector(Collector):
    """The `gallery_usage_*_total` counters, read from every meter of this process at scrape time."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        summed: dict[Key, list[float]] = {}
        for meter in list(_METERS):
            for key, (requests, rows, seconds) in meter.totals().items():
                tally = summed.setdefault(key, [0, 0, 0.0])
                tally[0] += requests
                tally[1] += rows
                tally[2] += seconds
        families = (
            CounterMetricFamily("gallery_usage_requests", "Inference requests answered, by caller", labels=LABELS),
            CounterMetricFamily("gallery_usage_rows", "Rows (batch dimension) inferred, by caller", labels=LABELS),
            CounterMetricFamily(
                "gallery_usage_compute_seconds", "Model server seconds spent on the requests, by caller", labels=LABELS
            ),
        )
        for key, values in summed.items():
            for family, value in zip(families, values, strict=True):
                family.add_metric(list(key), value)
        yield from families


REGISTRY.register(_UsageCollector())


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


class UsageReporter:
    """Sends the meter's deltas as `model.usage` events every `interval_s` and once more at `close`."""

    def __init__(
        self,
        bus: EventBus,
        meter: UsageMeter,
        interval_s: float,
        replica: str | None = None,
        project_of: Callable[[str], str] = lambda model: DEFAULT_PROJECT,
    ) -> None:
        self._bus = bus
        self._meter = meter
        self._project_of = project_of  # a report goes out in its model's project (its subjects)
        self._interval_s = interval_s
        self.replica = replica or uuid.uuid4().hex[:16]
        self._sent: dict[Key, tuple[int, int, float]] = {}  # totals up to the last report handed to JetStream
        self._pending: list[tuple[str, ModelUsage]] = []  # (event id, report) built and not yet acknowledged
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._report_forever(), name="gateway-usage")

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.report()
            except Exception as exc:  # the bus is down: the same reports go out on a later try
                log.warning("usage_report_not_sent", reason=f"{type(exc).__name__}: {exc}")

    def _build(self) -> None:
        """Turn what was counted since the last report into pending reports, one per model."""
        totals = self._meter.totals()
        by_model: dict[str, list[UsageTally]] = {}
        for key, (requests, rows, seconds) in totals.items():
            before = self._sent.get(key, (0, 0, 0.0))
            if requests == before[0]:
                continue
            model, version, caller = key
            tally = UsageTally(
                version=version,
                caller=caller,
                requests=requests - before[0],
                rows=rows - before[1],
                compute_seconds=max(seconds - before[2], 0.0),
            )
            by_model.setdefault(model, []).append(tally)
        if not by_model:
            return
        minute = _minute(datetime.now(UTC))
        sequence = self._sequence
        self._sequence += 1
        for model, tallies in sorted(by_model.items()):
            report = ModelUsage(
                model=model,
                project=self._project_of(model),
                replica=self.replica,
                sequence=sequence,
                minute=minute,
                tallies=tallies,
            )
            self._pending.append((f"usage.{self.replica}.{sequence}.{model}", report))
        self._sent = totals

    async def report(self) -> int:
        """Send what was counted since the last report (and what an earlier try could not send); returns
        the number of events JetStream acknowledged. Raises when the bus refuses; nothing is lost then."""
        async with self._lock:
            sent = await self._send_pending()
            # built only once the earlier reports are out: an outage leaves one report per model waiting
            self._build()
            return sent + await self._send_pending()

    async def _send_pending(self) -> int:
        sent = 0
        while self._pending:
            event_id, report = self._pending[0]
            await self._bus.publish(report, event_id=event_id)
            self._pending.pop(0)
            sent += 1
        return sent

    async def close(self, timeout: float) -> None:
        """Stop reporting and send the last deltas if the bus takes them within `timeout` s."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(timeout):
                await self.report()
        except Exception as exc:
            log.warning("usage_not_reported", reason=f"{type(exc).__name__}: {exc}", reports=len(self._pending))
