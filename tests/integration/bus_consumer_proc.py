"""A consumer process for test_bus: records each delivery in SQLite and can hang before its ack.

usage: bus_consumer_proc.py NATS_URL DB_PATH HUNG_FLAG [--hang-first] [--ack-wait S]

The effect (one row per event id) is written idempotently; a counter keeps every delivery.
With --hang-first the handler writes HUNG_FLAG on an event's first delivery and never returns,
so the test can SIGKILL the process before the ack. SIGTERM stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gallery_common.bus import EventBus, install_signal_handlers
from gallery_common.events import CloudEvent

DURABLE = "worker"


def record_delivery(db: Path, event_id: str) -> int:
    """Apply the event's effect once and count this delivery; return the delivery count."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY)")
        conn.execute("CREATE TABLE IF NOT EXISTS deliveries (event_id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO effects (event_id) VALUES (?)", (event_id,))
        conn.execute(
            "INSERT INTO deliveries (event_id, n) VALUES (?, 1) ON CONFLICT(event_id) DO UPDATE SET n = n + 1",
            (event_id,),
        )
        (count,) = conn.execute("SELECT n FROM deliveries WHERE event_id = ?", (event_id,)).fetchone()
    return int(count)


async def main(args: argparse.Namespace) -> None:
    async with EventBus(args.url, "bus-test-worker") as bus:

        async def handle(event: CloudEvent[Any]) -> None:
            deliveries = await asyncio.to_thread(record_delivery, args.db, event.id)
            if args.hang_first and deliveries == 1:
                args.hung.write_text(event.id)
                await asyncio.Event().wait()

        consumer = bus.consumer(DURABLE, handle, ack_wait=args.ack_wait)
        install_signal_handlers(consumer.stop)
        await consumer.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("db", type=Path)
    parser.add_argument("hung", type=Path)
    parser.add_argument("--hang-first", action="store_true")
    parser.add_argument("--ack-wait", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
