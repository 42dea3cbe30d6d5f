"""Event bus overhead: publish→handled latency and sustained throughput, EventBus vs bare nats-py.

Starts its own nats-server (JetStream, `sync_interval: always`, as shipped) in a temp dir and
measures, in one run and against the same server:

- latency: one event at a time, from `publish()` to the handler having it (p50 / p99);
- throughput: many publishers in flight, from the first publish to the last event handled.

"gallery" is EventBus.publish + Consumer (validation, trace context, metrics, ack);
"bare" is nats-py alone: js.publish with Nats-Msg-Id, a durable pull fetch loop, ack.

    .venv/bin/python bench/bus.py [--events 10000] [--samples 1000] [--store-dir /dev/shm] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext, api

from gallery_common import telemetry
from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent, ModelValidated, make_event
from gallery_common.nats_server import EmbeddedNats

P50_OVERHEAD_TARGET_MS = 1.0
THROUGHPUT_TARGET = 5000.0
PUBLISHERS = 64
WARMUP = 200


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    events_per_s: float


def payload(i: int) -> ModelValidated:
    return ModelValidated(model="iris", version=i + 1, semver="1.0.0", report={"accuracy": 0.97, "f1": 0.95})


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Tally:
    """What the handler saw: wakes the latency loop per event and the throughput run at its last."""

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.handled = 0
        self.target = -1
        self.all_handled: asyncio.Future[None] | None = None

    def handle(self, event_id: str) -> None:
        self.handled += 1
        done = self.waiters.pop(event_id, None)
        if done is not None:
            done.set_result(None)
        if self.handled == self.target and self.all_handled is not None:
            self.all_handled.set_result(None)


def event_id_for(i: int, samples: int) -> str:
    return f"lat-{i}" if i < WARMUP + samples else f"tp-{i}"


async def measure(publish: Callable[[int], Awaitable[None]], tally: Tally, samples: int, events: int) -> Result:
    """Latency one event at a time, then throughput with PUBLISHERS publishing concurrently."""
    loop = asyncio.get_running_loop()
    latencies = []
    for i in range(WARMUP + samples):
        tally.waiters[event_id_for(i, samples)] = done = loop.create_future()
        started = time.perf_counter()
        await publish(i)
        await done
        if i >= WARMUP:
            latencies.append(time.perf_counter() - started)

    tally.all_handled = loop.create_future()
    tally.target = tally.handled + events

    async def publisher(offset: int) -> None:
        for i in range(offset, events, PUBLISHERS):
            await publish(WARMUP + samples + i)

    started = time.perf_counter()
    await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))
    await tally.all_handled
    elapsed = time.perf_counter() - started
    return Result(percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3, events / elapsed)


async def bench_gallery(url: str, samples: int, events: int) -> Result:
    tally = Tally()

    async def handle(event: CloudEvent[Any]) -> None:
        tally.handle(event.id)

    async with EventBus(url, "bench") as bus:
        bus.consumer("bench", handle, batch=100).start()

        async def publish(i: int) -> None:
            await bus.publish(payload(i), event_id=event_id_for(i, samples))

        return await measure(publish, tally, samples, events)


async def bench_bare(url: str, samples: int, events: int) -> Result:
    tally = Tally()
    nc = await nats.connect(url, name="bench-bare")
    js = nc.jetstream()
    await js.add_stream(name="BARE", subjects=["bare.>"], storage=api.StorageType.FILE, duplicate_window=120)
    # The same bytes an EventBus publish sends, built once: bare pays no serialisation.
    body = make_event(payload(0), "bench").to_json()
    sub = await js.pull_subscribe("bare.>", durable="bench", stream="BARE")
    batch = [1]

    async def consume(sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(batch[0], timeout=5)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                tally.handle((msg.headers or {})["Nats-Msg-Id"])

    consumer = asyncio.create_task(consume(sub))

    async def publish(i: int) -> None:
        if i == WARMUP + samples:
            batch[0] = 100  # throughput phase: fetch in batches, as a bare user would
        await js.publish("bare.validated", body, headers={"Nats-Msg-Id": event_id_for(i, samples)})

    try:
        return await measure(publish, tally, samples, events)
    finally:
        consumer.cancel()
        await nc.drain()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


async def run(url: str, samples: int, events: int) -> tuple[Result, Result]:
    bare = await bench_bare(url, samples, events)
    gallery = await bench_gallery(url, samples, events)
    return bare, gallery


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000, help="events in the throughput run")
    parser.add_argument("--samples", type=int, default=1000, help="one-at-a-time events for latency")
    parser.add_argument("--store-dir", type=Path, help="parent of the JetStream store (default: system temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    telemetry.configure_tracing("bench")  # real SDK spans, as in a service; nothing is exported

    with tempfile.TemporaryDirectory(prefix="bench-bus-", dir=args.store_dir) as tmp:
        server = EmbeddedNats(Path(tmp) / f"nats-{uuid.uuid4().hex[:6]}")
        with server:
            bare, gallery = asyncio.run(run(server.url, args.samples, args.events))

    overhead = gallery.p50_ms - bare.p50_ms
    store = args.store_dir or tempfile.gettempdir()
    print(f"JetStream store under {store} (sync_interval: always); {os.cpu_count()} CPUs")
    print(f"latency: {args.samples} events one at a time; throughput: {args.events} events, {PUBLISHERS} publishers")
    print()
    print(f"{'':10}{'p50 ms':>10}{'p99 ms':>10}{'events/s':>12}")
    for name, r in (("bare", bare), ("gallery", gallery)):
        print(f"{name:10}{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}{r.events_per_s:>12,.0f}")
    ratio = gallery.events_per_s / bare.events_per_s
    print(f"{'overhead':10}{overhead:>+10.3f}{gallery.p99_ms - bare.p99_ms:>+10.3f}{ratio:>11.0%} of bare")
    print()
    p50_ok = overhead <= P50_OVERHEAD_TARGET_MS
    rate_ok = gallery.events_per_s >= THROUGHPUT_TARGET
    print(f"{verdict(p50_ok)}  p50 overhead {overhead:+.3f} ms (target <= {P50_OVERHEAD_TARGET_MS} ms)")
    print(f"{verdict(rate_ok)}  sustained {gallery.events_per_s:,.0f} events/s (target >= {THROUGHPUT_TARGET:,.0f})")
    if not rate_ok and bare.events_per_s < THROUGHPUT_TARGET:
        print(f"      bare nats-py reaches {bare.events_per_s:,.0f} events/s on this store: the server is the limit")
    return 1 if args.strict and not (p50_ok and rate_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
