"""Real apps on uvicorn in background threads, and event helpers over a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from uvicorn_thread import served

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent, Payload


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """Serve `app` on a loopback port until the block ends; yields the base URL once /readyz answers 200."""
    with served(app, port, ready_path="/readyz") as bound:
        yield f"http://127.0.0.1:{bound}"


def publish(nats_url: str, payload: Payload, event_id: str) -> None:
    async def go() -> None:
        async with EventBus(nats_url, "test") as bus:
            await bus.publish(payload, event_id=event_id)

    asyncio.run(go())


def stored_events(nats_url: str, subject: str, *, at_least: int = 1, timeout: float = 120) -> list[CloudEvent[Any]]:
    """Every event `subject` names (`model.optimized`: that event of every project) stored in the
    stream, waiting up to `timeout` s for `at_least` of them (then a short quiet spell). Matched on the
    event's name, so it reads either subject layout (`model.<event>`, `model.<event>.<project>`)."""
    event_name = subject.removeprefix("model.")

    async def stored() -> list[CloudEvent[Any]]:
        async with EventBus(nats_url, "test") as bus:
            return [e for e in await bus.stored_events() if e.event == event_name]

    deadline = time.monotonic() + timeout
    while len(asyncio.run(stored())) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    return asyncio.run(stored())
