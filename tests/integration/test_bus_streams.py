"""Stream limits and recovery against real nats-servers: what the streams keep, what an operator's
changes survive, and a consumer that carries on after its server comes back empty."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest
from waiting import eventually

from gallery_common.bus import DLQ_STREAM, EVENTS_STREAM, EventBus, StreamLimits, stream_configs
from gallery_common.events import CloudEvent, ModelValidated
from gallery_common.nats_server import EmbeddedNats, nats_server_binary
from gallery_common.netutil import free_port, wait_for_port
from gallery_common.settings import GallerySettings

DAY = 86_400.0


async def test_new_streams_get_the_default_limits(nats_server: EmbeddedNats) -> None:
    async with EventBus(nats_server.url, "test-bus") as bus:
        events = (await bus.js.stream_info(EVENTS_STREAM)).config
        dead = (await bus.js.stream_info(DLQ_STREAM)).config
    assert (events.max_age, events.max_bytes) == (90 * DAY, 1024**3)
    assert (dead.max_age, dead.max_bytes) == (30 * DAY, 256 * 1024**2)


async def test_limits_come_from_the_settings(nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_EVENTS_MAX_AGE_DAYS", "7")
    monkeypatch.setenv("GALLERY_DEAD_LETTERS_MAX_BYTES", "0")  # 0: no limit
    settings = GallerySettings(nats_url=nats_server.url)
    limits = StreamLimits.from_settings(settings)
    assert limits == StreamLimits(events_max_age=7 * DAY, dead_letters_max_bytes=0)
    async with EventBus.from_settings(settings) as bus:
        events = (await bus.js.stream_info(EVENTS_STREAM)).config
        dead = (await bus.js.stream_info(DLQ_STREAM)).config
    assert (events.max_age, events.max_bytes) == (7 * DAY, 1024**3)
    assert (dead.max_age, dead.max_bytes) == (30 * DAY, -1)


async def test_a_flood_of_dead_letters_stays_within_its_limit(nats_server: EmbeddedNats) -> None:
    limits = StreamLimits(dead_letters_max_bytes=64 * 1024)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for config in stream_configs(limits=limits):
        await js.add_stream(config)
    junk = b"x" * 4096
    for index in range(100):  # 400 KiB of dead letters
        await js.publish(f"dlq.model.trained.{index}", junk)
    state = (await js.stream_info(DLQ_STREAM)).state
    await nc.close()
    assert state.bytes <= 64 * 1024 and 0 < state.messages < 100
    assert state.last_seq == 100, "the newest are kept, the oldest dropped"


async def test_an_operators_limits_survive_a_restart_and_broken_settings_are_fixed(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    # created by an older version: wrong subjects and window, and limits an operator tuned since
    await js.add_stream(
        name=EVENTS_STREAM,
        subjects=["model.trained"],
        duplicate_window=5,
        max_age=400 * DAY,
        max_msgs=1_000_000,
        storage=nats.js.api.StorageType.FILE,
    )
    # created before there were limits: it gets the defaults
    await js.add_stream(name=DLQ_STREAM, subjects=["dlq.>"], storage=nats.js.api.StorageType.FILE)
    await nc.close()
    async with EventBus(nats_server.url, "test-bus") as bus:
        events = (await bus.js.stream_info(EVENTS_STREAM)).config
        dead = (await bus.js.stream_info(DLQ_STREAM)).config
        await bus.publish(ModelValidated(model="iris", version=1))
    assert (events.subjects, events.duplicate_window) == (["model.>"], 120)
    assert (events.max_age, events.max_msgs) == (400 * DAY, 1_000_000), "the operator's limits are kept"
    assert events.max_bytes == 1024**3, "a limit never set gets the default"
    assert (dead.max_age, dead.max_bytes) == (30 * DAY, 256 * 1024**2)


async def test_a_consumer_carries_on_after_its_server_comes_back_empty(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path / "first", log_file=tmp_path / "first.log").start()
    second = EmbeddedNats(tmp_path / "second", port=first.port, log_file=tmp_path / "second.log")
    handled: list[CloudEvent[Any]] = []

    async def handle(event: CloudEvent[Any]) -> None:
        handled.append(event)

    try:
        async with EventBus(first.url, "test-bus", publish_deadline=20) as bus:
            consumer = bus.consumer("watcher", handle, events=[ModelValidated])
            consumer.start()
            await bus.publish(ModelValidated(model="iris", version=1))
            await eventually(lambda: len(handled) == 1, what="the event before the restart")
            first.stop()
            await asyncio.to_thread(second.start)  # same port, nothing stored: no streams, no consumers
            await bus.publish(ModelValidated(model="iris", version=2))
            await eventually(lambda: len(handled) == 2, what="the event after the restart")
            assert [event.data.version for event in handled] == [1, 2]
            info = await bus.js.consumer_info(EVENTS_STREAM, "watcher")
            assert info.config.durable_name == "watcher"
            streams = {(await bus.js.stream_info(name)).config.max_bytes for name in (EVENTS_STREAM, DLQ_STREAM)}
            assert streams == {1024**3, 256 * 1024**2}, "the streams came back with their limits"
    finally:
        first.stop()
        second.stop()


async def test_a_publisher_alone_puts_the_streams_back_after_its_server_comes_back_empty(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path / "first").start()
    second = EmbeddedNats(tmp_path / "second", port=first.port)
    try:
        async with EventBus(first.url, "publisher", publish_deadline=20) as bus:
            first.stop()
            await asyncio.to_thread(second.start)
            await bus.publish(ModelValidated(model="iris", version=1))
            state = (await bus.js.stream_info(EVENTS_STREAM)).state
        assert state.messages == 1
    finally:
        first.stop()
        second.stop()


async def test_a_server_with_little_storage_gets_streams_that_fit(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "small.conf"
    store = tmp_path / "store"
    config.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{store}", max_file_store: 100MB }}\n')
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        assert wait_for_port("127.0.0.1", port, 15)
        async with EventBus(f"nats://127.0.0.1:{port}", "test-bus", publish_deadline=10) as bus:
            events = (await bus.js.stream_info(EVENTS_STREAM)).config.max_bytes
            dead = (await bus.js.stream_info(DLQ_STREAM)).config.max_bytes
            await bus.publish(ModelValidated(model="iris", version=1))
    finally:
        server.terminate()
        server.wait(10)
    # 1 GiB and 256 MiB cannot be reserved in 100 MB: each got the largest halving that fit
    assert (events, dead) == (64 * 1024**2, 32 * 1024**2)
