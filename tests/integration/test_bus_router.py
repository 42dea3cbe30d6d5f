"""The typed event router on a real nats-server: what the consumer asks for, and how domain errors settle."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import orjson
import pytest

from gallery_common.bus import EVENTS_STREAM, EventBus
from gallery_common.errors import NotFound, Unavailable
from gallery_common.events import ModelDegraded, ModelValidated
from gallery_common.nats_server import EmbeddedNats
from gallery_common.router import EventRouter


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[EventBus]:
    async with EventBus(nats_server.url, "test-router") as connected:
        yield connected


async def settled(bus: EventBus, durable: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await bus.js.consumer_info(EVENTS_STREAM, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"consumer {durable} did not settle within {timeout}s")


async def test_domain_errors_are_retried_or_dead_lettered_by_the_one_table(bus: EventBus) -> None:
    attempts: Counter[str] = Counter()
    done: list[str] = []
    events = EventRouter("rollout", max_deliver=3, backoff=(0.05, 0.1))

    @events.on(ModelValidated)
    async def validated(data: ModelValidated) -> None:
        attempts[data.model] += 1
        if data.model == "flaky" and attempts[data.model] < 3:
            raise Unavailable("the registry does not answer")
        if data.model == "orphan":
            raise NotFound(f"the registry has no version {data.model}:{data.version}")
        if data.model == "broken":
            raise RuntimeError("disk on fire")
        done.append(data.model)

    @events.on(ModelDegraded)
    async def degraded(data: ModelDegraded) -> None:
        done.append(f"degraded {data.model}")

    consumer = events.consumer(bus)
    async with consumer:
        for model in ("flaky", "orphan", "broken"):
            await bus.publish(ModelValidated(model=model, version=1))
        await bus.publish(ModelDegraded(model="iris", version=1, kind="slo", reason="p99 250 ms"))
        await settled(bus, "rollout")

    config = (await bus.js.consumer_info(EVENTS_STREAM, "rollout")).config
    assert sorted(config.filter_subjects or []) == ["model.degraded.*", "model.validated.*"]
    assert sorted(done) == ["degraded iris", "flaky"]
    assert attempts == {"flaky": 3, "orphan": 1, "broken": 3}
    letters = {orjson.loads(letter.data)["data"]["model"]: letter for letter in await bus.dead_letters()}
    assert set(letters) == {"orphan", "broken"}
    assert letters["orphan"].reason == "PermanentError: the registry has no version orphan:1"
    assert letters["orphan"].deliveries == 1
    assert letters["broken"].reason == "failed 3 times; last error RuntimeError: disk on fire"
    assert letters["broken"].consumer == "rollout"
