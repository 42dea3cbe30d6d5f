"""kill -9 of nats-server while 1,000 events are published and consumed: nothing acknowledged is lost,
each event is handled once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaos_figures import Figures
from waiting import eventually

from gallery_common.bus import EVENTS_STREAM, EventBus
from gallery_common.events import CloudEvent, ModelValidated
from gallery_common.nats_server import EmbeddedNats

TOTAL = 1000
PUBLISHERS = 4
DOWN_FOR = 1.0  # seconds the killed server stays down before it starts again


def kill_and_restart(server: EmbeddedNats) -> float:
    """SIGKILL the server (no flush, no goodbye), start it again on the same store and ports; the outage in s."""
    assert server.process is not None
    killed = time.monotonic()
    server.process.kill()
    server.process.wait()
    time.sleep(DOWN_FOR)
    server.start(attempts=1)
    return time.monotonic() - killed


async def test_kill_9_nats_server_during_a_1000_event_publish(tmp_path: Path, figures: Figures) -> None:
    """kill -9 nats-server during a 1,000-event publish"""
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    deliveries: Counter[str] = Counter()
    effects: Counter[str] = Counter()  # what the idempotent handler applied, per event id
    acked: list[str] = []
    acked_at: list[float] = []

    async def handle(event: CloudEvent[Any]) -> None:
        deliveries[event.id] += 1
        if event.id not in effects:
            effects[event.id] += 1

    try:
        async with (
            EventBus(server.url, "chaos-publisher", publish_deadline=60) as publisher,
            EventBus(server.url, "chaos-consumer") as consuming,
        ):
            consumer = consuming.consumer("chaos-worker", handle, ack_wait=2.0, batch=50)
            consumer.start()

            async def publish(offset: int) -> None:
                for version in range(offset + 1, TOTAL + 1, PUBLISHERS):
                    event = await publisher.publish(ModelValidated(model="chaos", version=version))
                    acked.append(event.id)  # publish returns once the stream's PubAck arrived
                    acked_at.append(time.monotonic())

            publishing = asyncio.gather(*(publish(offset) for offset in range(PUBLISHERS)))
            await eventually(lambda: len(acked) >= TOTAL // 3, timeout=60, what="a third of the events acked")
            acked_before = len(acked)
            killed = time.monotonic()
            outage = await asyncio.to_thread(kill_and_restart, server)
            await asyncio.wait_for(publishing, 120)
            first_ack_after = next(t for t in acked_at[acked_before:] if t > killed + outage)
            await eventually(lambda: set(effects) >= set(acked), timeout=60, what="every acked event handled")
            caught_up = time.monotonic() - killed
            await eventually(lambda: consumer_settled(consuming), timeout=30, what="every delivery settled")
            stored = (await consuming.js.stream_info(EVENTS_STREAM)).state.messages
            await consumer.stop()
    finally:
        server.stop()

    lost = len(set(acked) - set(effects))
    figures.update(
        published=TOTAL,
        acked=len(acked),
        acked_before_kill=acked_before,
        stored=stored,
        lost=lost,
        delivered=sum(deliveries.values()),
        redelivered=sum(deliveries.values()) - len(deliveries),
        handled_once=sum(1 for n in effects.values() if n == 1),
        server_down_s=round(outage, 2),
        first_ack_after_restart_s=round(first_ack_after - killed, 2),
        all_handled_after_kill_s=round(caught_up, 2),
    )
    assert len(acked) == TOTAL and len(set(acked)) == TOTAL
    assert lost == 0
    assert stored == TOTAL, "a retried publish was stored twice (Nats-Msg-Id de-duplication failed)"
    assert set(effects) == set(acked) and all(n == 1 for n in effects.values())


async def consumer_settled(bus: EventBus) -> bool:
    info = await bus.js.consumer_info(EVENTS_STREAM, "chaos-worker")
    return info.num_ack_pending == 0 and info.num_pending == 0
