"""Monitor, online quality: what keeping feedback and reading it back costs, against a real database.

1. Record: `QualityStore.record` of N `model.outcome` events one by one (one transaction each, as the
   monitor's consumer stores them), answers spread over the last week, three versions.
2. View: `Monitor.online_quality` of the model over an hour, a day and a week (the Monitoring view's choices):
   sums per version and per bucket.
3. Evaluation: one round of `evaluate` with a quality SLO on the model (the monitor runs one every 5 s).
4. Through the bus: N `model.outcome` events stored in a real nats-server, then the monitor's own consumer
   (`app.timeline_events`) keeping them all, handled one at a time (one transaction each, as before) and
   64 at once (a transaction per batch, `quality_writer.OutcomeWriter`, as the monitor runs it).

SQLite in a temporary folder by default; `--database postgresql+psycopg://...` for another.

    .venv/bin/python bench/monitor_quality.py [--outcomes 100000] [--bus-outcomes 5000] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gallery_common import telemetry
from gallery_common.bus import EVENTS_STREAM, EventBus
from gallery_common.db import make_engine
from gallery_common.events import ModelOutcome, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_monitor.app import CONCURRENCY, timeline_events
from gallery_monitor.core import Monitor
from gallery_monitor.evaluator import evaluate
from gallery_monitor.migrations import upgrade
from gallery_monitor.quality import QualityStore
from gallery_monitor.records import Slo, SloUpdate
from gallery_monitor.references import ReferenceCache, ReferenceUnavailable, TrainingData
from gallery_monitor.samples import SampleBook
from gallery_monitor.series import SeriesBook

WEEK = 7 * 86400.0
SLO = Slo(p99_ms=100, error_rate=0.01, drift_psi=0.2, drift_min_samples=200, window_s=60)


def no_reference(model: str, version: int) -> TrainingData:
    raise ReferenceUnavailable("not used here")


def outcome(i: int, answered: float, correct: int) -> object:
    payload = ModelOutcome(
        model="digits", version=str(1 + i % 3), variant="fp32", request_id=f"r{i}", caller="app",
        given_by="labeller", answered_at=datetime.fromtimestamp(answered, UTC), rows=4, kind="label",
        label=[1, 2, 3, 4], correct=[k < correct for k in range(4)], correct_rows=correct,
    )  # fmt: skip
    return make_event(payload, "bench", event_id=f"outcome.r{i}")


async def evaluation_ms(monitor: Monitor) -> float:
    start = time.perf_counter()
    await evaluate(monitor, None)
    return (time.perf_counter() - start) * 1000


def new_monitor(url: str, store: QualityStore | None = None, now: float | None = None) -> Monitor:
    engine = store.engine if store is not None else make_engine(url)
    if store is None:
        upgrade(engine)
    clock = (lambda: now) if now is not None else time.time
    return Monitor(
        engine, default_slo=SLO, series=SeriesBook(900, 5), samples=SampleBook(1000),
        references=ReferenceCache(no_reference, max_rows=100, retry_s=30),
        quality=store or QualityStore(engine, retention_s=WEEK), ks_alpha=0.001, min_requests=20, clock=clock,
    )  # fmt: skip


async def through_the_bus(url: str, events: list[object], databases: Path) -> dict[int, float]:
    """Seconds for the monitor's consumer to keep every event, one at a time and CONCURRENCY at once."""
    taken: dict[int, float] = {}
    async with EventBus(url, "bench") as bus:
        published = 0
        for start in range(0, len(events), 500):
            await asyncio.gather(*(bus.publish_event(e) for e in events[start : start + 500]))  # type: ignore[arg-type]
            published += len(events[start : start + 500])
        for concurrency in (1, CONCURRENCY):
            monitor = new_monitor(f"sqlite:///{databases / f'bus-{concurrency}.db'}")
            consumer = timeline_events(monitor, concurrency).consumer(bus)
            start_s = time.perf_counter()
            consumer.start()
            while sum(t.outcomes for t in monitor.quality.by_version("digits", 0).values()) < published:
                await asyncio.sleep(0.05)
            taken[concurrency] = time.perf_counter() - start_s
            await consumer.stop()
            await bus.js.delete_consumer(EVENTS_STREAM, consumer.durable)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--bus-outcomes", type=int, default=5000, help="outcomes through nats-server (0: skip)")
    parser.add_argument("--database", help="an SQLAlchemy URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.database or f"sqlite:///{Path(tmp) / 'monitor.db'}")
        upgrade(engine)
        store = QualityStore(engine, retention_s=WEEK)
        now = time.time()
        monitor = new_monitor("", store, now)
        rng = np.random.default_rng(0)
        answered = now - rng.uniform(0, WEEK - 60, args.outcomes)
        correct = rng.binomial(4, 0.9, args.outcomes)
        events = [outcome(i, float(answered[i]), int(correct[i])) for i in range(args.outcomes)]
        start = time.perf_counter()
        for event in events:
            store.record(event)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        print(f"recorded {args.outcomes:,} outcomes one by one: {seconds:.1f} s, {args.outcomes / seconds:,.0f}/s")
        again = time.perf_counter()
        for event in events[:1000]:
            store.record(event)  # type: ignore[arg-type]
        print(f"1,000 redelivered outcomes refused: {(time.perf_counter() - again) * 1000:.0f} ms")

        for label, window in (("an hour", 3600.0), ("a day", 86400.0), ("a week", WEEK)):
            start = time.perf_counter()
            view = monitor.online_quality("digits", window)
            took = (time.perf_counter() - start) * 1000
            rows = sum(v.labelled_rows for v in view.versions)
            print(
                f"quality view over {label}: {took:.1f} ms ({rows:,} labelled rows, {len(view.series)} points, "
                f"accuracy v1 {view.versions[0].accuracy})"
            )
        monitor.slos.update("digits", SloUpdate(min_online_accuracy=0.95, quality_window_s=3600))
        rounds = [asyncio.run(evaluation_ms(monitor)) for _ in range(5)]
        print(f"evaluation round with a quality SLO (an hour's window): median {sorted(rounds)[2]:.1f} ms")
        if args.bus_outcomes:
            telemetry.configure_tracing("bench")  # real SDK spans, as in the service; nothing is exported
            server = EmbeddedNats(Path(tmp) / "nats")
            with server:
                taken = asyncio.run(through_the_bus(server.url, events[: args.bus_outcomes], Path(tmp)))
            one, many = taken[1], taken[CONCURRENCY]
            n = min(args.bus_outcomes, args.outcomes)
            print(f"{n:,} outcomes through nats-server into the monitor (SQLite):")
            print(f"  one at a time, a transaction each: {one:.2f} s, {n / one:,.0f}/s")
            print(
                f"  {CONCURRENCY} at once, a transaction per batch: {many:.2f} s, {n / many:,.0f}/s ({one / many:.1f}x)"
            )


if __name__ == "__main__":
    main()
