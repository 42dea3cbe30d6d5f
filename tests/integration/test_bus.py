"""The JetStream event bus against a real nats-server: delivery, retries, dead letters, restarts."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY
from waiting import eventually

from gallery_common import consumer as consumer_module
from gallery_common import telemetry
from gallery_common.bus import EVENTS_STREAM, EventBus, PermanentError, TransientError
from gallery_common.events import ArtifactRef, CloudEvent, ModelTrained, ModelValidated, make_event
from gallery_common.nats_server import EmbeddedNats

WORKER = Path(__file__).with_name("bus_consumer_proc.py")


@pytest.fixture(autouse=True)
def _telemetry() -> None:
    # Spans must reach a real SDK provider for the trace-continuation assertions.
    telemetry.configure_logging("test-bus")
    telemetry.configure_tracing("test-bus")


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[EventBus]:
    async with EventBus(nats_server.url, "test-bus") as connected:
        yield connected


async def nothing_pending(bus: EventBus, durable: str) -> bool:
    info = await bus.js.consumer_info(EVENTS_STREAM, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


def trained(run_id: str = "run-1") -> ModelTrained:
    weights = ArtifactRef(uri="file:///tmp/weights.safetensors", sha256="ab" * 32)
    return ModelTrained(model="iris", run_id=run_id, artifacts={"weights": weights})


async def test_connect_brings_an_existing_stream_up_to_date(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(name=EVENTS_STREAM, subjects=["model.trained"], duplicate_window=5)
    await nc.close()

    async with EventBus(nats_server.url, "test-bus") as bus:
        config = (await bus.js.stream_info(EVENTS_STREAM)).config
        await bus.publish(ModelValidated(model="iris", version=1))
    assert (config.subjects, config.duplicate_window) == (["model.>"], 120)


async def test_round_trip_continues_the_publishers_trace(bus: EventBus) -> None:
    received: list[tuple[CloudEvent[Any], str]] = []

    async def handle(event: CloudEvent[Any]) -> None:
        received.append((event, format(trace.get_current_span().get_span_context().trace_id, "032x")))

    bus.consumer("roundtrip", handle, events=[ModelValidated]).start()
    with telemetry.tracer().start_as_current_span("train") as span:
        sent = await bus.publish(ModelValidated(model="iris", version=3, semver="1.2.0"))
    trace_id = format(span.get_span_context().trace_id, "032x")

    await eventually(lambda: bool(received), what="the handler")
    event, handler_trace_id = received[0]
    assert event.id == sent.id
    assert isinstance(event.data, ModelValidated)
    assert event.data == sent.data
    assert event.subject == "iris/3"
    assert telemetry.trace_id_of(event.traceparent) == trace_id
    assert handler_trace_id == trace_id
    await eventually(lambda: nothing_pending(bus, "roundtrip"), what="the ack")


async def test_event_of_a_killed_consumer_is_redelivered_and_applied_once(
    bus: EventBus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    db, hung = tmp_path / "effects.db", tmp_path / "hung"

    def worker(*flags: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(WORKER), nats_server.url, str(db), str(hung), *flags])

    first = worker("--hang-first")
    try:
        event = await bus.publish(ModelValidated(model="iris", version=1))
        await eventually(hung.exists, timeout=30, what="the first worker to take the event")
    finally:
        first.kill()
        first.wait()
    assert hung.read_text() == event.id

    second = worker()
    try:
        await eventually(lambda: nothing_pending(bus, "worker"), timeout=30, what="the redelivery to be acked")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        second.kill()
    with sqlite3.connect(db) as conn:
        effects = conn.execute("SELECT event_id FROM effects").fetchall()
        deliveries = dict(conn.execute("SELECT event_id, n FROM deliveries").fetchall())
    assert effects == [(event.id,)]
    assert deliveries[event.id] >= 2


async def test_same_event_published_twice_is_delivered_once(bus: EventBus) -> None:
    handled: list[str] = []

    async def handle(event: CloudEvent[Any]) -> None:
        handled.append(event.id)

    bus.consumer("dedupe", handle).start()
    payload = ModelValidated(model="iris", version=1)
    await bus.publish(payload, event_id="validated-iris-1")
    await bus.publish(payload, event_id="validated-iris-1")
    marker = await bus.publish(ModelValidated(model="iris", version=2))

    await eventually(lambda: marker.id in handled, what="the marker event")
    assert handled == ["validated-iris-1", marker.id]
    assert (await bus.js.stream_info(EVENTS_STREAM)).state.messages == 2


async def test_malformed_payloads_are_dead_lettered_and_the_consumer_goes_on(bus: EventBus) -> None:
    handled: list[str] = []

    async def handle(event: CloudEvent[Any]) -> None:
        handled.append(event.id)

    consumer = bus.consumer("strict", handle, events=[ModelTrained])
    consumer.start()
    await bus.publish_raw("model.trained.default", b"{not json", {"Nats-Msg-Id": "garbled-1"})
    invalid = orjson.loads(make_event(trained(), "test").to_json())
    invalid["data"]["run_id"] = ""
    await bus.publish_raw("model.trained.default", orjson.dumps(invalid), {"Nats-Msg-Id": invalid["id"]})
    good = await bus.publish(trained("run-2"))

    await eventually(lambda: good.id in handled, what="the good event")
    await eventually(lambda: nothing_pending(bus, "strict"), what="every delivery to be settled")
    letters = await bus.dead_letters()
    assert handled == [good.id]
    assert [letter.subject for letter in letters] == ["dlq.model.trained.default", "dlq.model.trained.default"]
    garbled, schema = letters
    assert garbled.reason.startswith("not JSON")
    assert (garbled.event_id, garbled.data, garbled.original_subject) == (
        "garbled-1",
        b"{not json",
        "model.trained.default",
    )
    assert schema.reason.startswith("invalid trained event: data.run_id")
    assert schema.event_id == invalid["id"]
    assert orjson.loads(schema.data) == invalid
    raw = await bus.js.get_msg("DEAD_LETTERS", seq=garbled.seq)
    assert raw.headers is not None and raw.headers["Gallery-Error"] == garbled.reason
    assert (await bus.js.consumer_info(EVENTS_STREAM, "strict")).num_redelivered == 0


async def test_failing_handlers_are_retried_then_dead_lettered(bus: EventBus) -> None:
    attempts: Counter[str] = Counter()
    succeeded: list[str] = []

    async def handle(event: CloudEvent[Any]) -> None:
        model = event.data.model
        attempts[model] += 1
        if model == "flaky" and attempts[model] < 3:
            raise TransientError("registry database is locked")
        if model == "broken":
            raise RuntimeError("disk on fire")
        if model == "hopeless":
            raise PermanentError("opset 99 is not supported")
        succeeded.append(model)

    bus.consumer("picky", handle, max_deliver=3, backoff=[0.05, 0.1]).start()
    for model in ("flaky", "broken", "hopeless"):
        await bus.publish(ModelValidated(model=model, version=1))

    await eventually(lambda: nothing_pending(bus, "picky"), what="every event to be settled")
    letters = {letter.event_id: letter for letter in await bus.dead_letters()}
    by_model = {orjson.loads(letter.data)["data"]["model"]: letter for letter in letters.values()}
    assert succeeded == ["flaky"]
    assert attempts == {"flaky": 3, "broken": 3, "hopeless": 1}
    assert set(by_model) == {"broken", "hopeless"}
    assert by_model["broken"].reason == "failed 3 times; last error RuntimeError: disk on fire"
    assert by_model["broken"].deliveries == 3
    assert by_model["hopeless"].reason == "PermanentError: opset 99 is not supported"
    assert by_model["hopeless"].deliveries == 1
    assert by_model["hopeless"].consumer == "picky"


async def test_a_concurrent_consumer_handles_many_at_once_each_settled_on_its_own(bus: EventBus) -> None:
    """With concurrency 8, eight slow handlers run side by side; a failing one is retried alone, and
    stop() finishes the deliveries in hand before it returns."""
    running, most, handled = 0, 0, Counter[str]()
    release = asyncio.Event()
    attempts: Counter[str] = Counter()

    async def handle(event: CloudEvent[Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
            attempts[event.id] += 1
            if (event.data.model, event.data.version) == ("iris", 3) and attempts[event.id] == 1:
                raise TransientError("the database is busy")
            handled[event.id] += 1
        finally:
            running -= 1

    consumer = bus.consumer("wide", handle, batch=32, concurrency=8, backoff=[0.05])
    consumer.start()
    published = [await bus.publish(ModelValidated(model="iris", version=v)) for v in range(1, 21)]
    await eventually(lambda: running == 8, what="eight handlers in hand at once")
    await asyncio.sleep(0.2)
    assert running == 8, "never more than the consumer's concurrency"
    release.set()
    await eventually(lambda: sum(handled.values()) == 20, what="every event handled")
    await eventually(lambda: nothing_pending(bus, "wide"), what="every delivery acked")
    assert set(handled) == {e.id for e in published} and set(handled.values()) == {1}, "each once"
    assert most == 8 and attempts[published[2].id] == 2  # the failed one alone came back
    assert await bus.dead_letters() == []

    # stop() while deliveries are in hand: they finish and are acked, nothing comes back
    release.clear()
    late = [await bus.publish(ModelValidated(model="wine", version=v)) for v in range(1, 4)]
    await eventually(lambda: running == 3, what="three handlers in hand")
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done(), "stop waits for the handlers in hand"
    release.set()
    await stopping
    assert all(handled[e.id] == 1 for e in late)
    await eventually(lambda: nothing_pending(bus, "wide"), what="the late ones acked")


async def test_event_whose_handler_never_finished_is_dead_lettered_not_dropped(bus: EventBus) -> None:
    entered = asyncio.Event()
    later_calls: list[str] = []

    async def hang(event: CloudEvent[Any]) -> None:
        entered.set()
        await asyncio.Event().wait()

    async def handle(event: CloudEvent[Any]) -> None:
        later_calls.append(event.id)

    crashing = bus.consumer("fragile", hang, max_deliver=1).start()
    event = await bus.publish(ModelValidated(model="iris", version=1))
    await asyncio.wait_for(entered.wait(), 10)
    crashing.cancel()
    await asyncio.wait([crashing])

    bus.consumer("fragile", handle, max_deliver=1).start()
    await eventually(lambda: nothing_pending(bus, "fragile"), what="the second delivery to be settled")
    [letter] = await bus.dead_letters()
    assert letter.event_id == event.id
    assert letter.reason.startswith("no outcome after 1 deliveries")
    assert later_calls == []


async def test_tail_follows_the_stream(bus: EventBus) -> None:
    first = await bus.publish(ModelValidated(model="iris", version=1))
    seen: list[str] = []

    async def follow() -> None:
        async for event in bus.tail(deliver="all"):
            seen.append(event.id)
            if len(seen) == 2:
                return

    follower = asyncio.create_task(follow())
    await eventually(lambda: seen == [first.id], what="the stored event")
    second = await bus.publish(trained())
    await asyncio.wait_for(follower, 10)
    assert seen == [first.id, second.id]


@pytest.mark.slow
async def test_no_event_is_lost_when_the_server_restarts_mid_stream(bus: EventBus, nats_server: EmbeddedNats) -> None:
    total, publishers = 1000, 4
    received: set[str] = set()
    published: list[str] = []
    halfway = asyncio.Event()

    async def handle(event: CloudEvent[Any]) -> None:
        received.add(event.id)

    async def publish(offset: int) -> None:
        for version in range(offset + 1, total + 1, publishers):
            published.append((await bus.publish(ModelValidated(model="iris", version=version))).id)
            if len(published) >= total // 3:
                halfway.set()
            await asyncio.sleep(0.004)

    bus.consumer("survivor", handle, ack_wait=2.0, batch=50).start()
    publishing = asyncio.gather(*(publish(offset) for offset in range(publishers)))
    await halfway.wait()
    handled_before = len(received)
    await asyncio.to_thread(nats_server.restart)
    published_by_restart = len(published)
    await asyncio.wait_for(publishing, 60)

    await eventually(lambda: len(received) >= total, timeout=30, what="all events after the restart")
    assert handled_before < total and published_by_restart < total
    assert len(published) == total
    assert received == set(published)
    await eventually(lambda: nothing_pending(bus, "survivor"), what="every delivery to be settled")


async def test_stored_events_are_every_event_up_to_now_in_order_and_the_read_ends(bus: EventBus) -> None:
    published = [await bus.publish(trained(f"run-{i}")) for i in range(3)]
    # a message on an event subject that is no event is skipped, as tail() skips it
    await bus.js.publish("model.trained.default", b"not an event")
    assert [event.id for event in await bus.stored_events()] == [event.id for event in published]
    later = await bus.publish(trained("run-3"))
    assert [event.id for event in await bus.stored_events()][-1] == later.id


async def test_a_consumers_unfinished_events_show_on_its_metrics(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "BACKLOG_EVERY", 0.1)
    release = asyncio.Event()

    async def stuck(_: CloudEvent[Any]) -> None:
        await release.wait()

    def unfinished() -> float | None:
        return REGISTRY.get_sample_value("modelgallery_bus_consumer_unfinished_events", {"durable": "backlog"})

    for n in range(5):
        await bus.publish(trained(f"run-{n}"))
    consumer = bus.consumer("backlog", stuck, events=[ModelTrained])
    consumer.start()
    try:
        # the one in hand and the four fetched behind it: none acknowledged
        await eventually(lambda: unfinished() == 5, what="five unfinished events on the metrics")
        release.set()
        await eventually(lambda: unfinished() == 0, what="the backlog to drain on the metrics")
    finally:
        await consumer.stop()
    assert unfinished() is None, "a stopped consumer (a replica that lost its leadership) reports no stale backlog"
