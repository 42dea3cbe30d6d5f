"""`gallery events ...` against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_sandbox import gallery_async
from waiting import eventually

from gallery_cli.events_cmd import sample_trained
from gallery_common.bus import EventBus
from gallery_common.consumer import DLQ_PREFIX, ERROR_HEADER, EVENT_ID_HEADER, ORIGINAL_SUBJECT_HEADER, PermanentError
from gallery_common.events import CloudEvent, ModelDegraded, ModelTrained
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

GALLERY = Path(sys.executable).parent / "gallery"


def gallery(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(GALLERY_NATS_URL=nats_url, COLUMNS="200")
    return subprocess.run([str(GALLERY), *args], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_published_sample_shows_up_in_tail_with_its_trace(nats_server: EmbeddedNats) -> None:
    published = gallery(nats_server.url, "events", "publish-sample", "--model", "iris")
    assert published.returncode == 0, published.stderr
    tailed = gallery(nats_server.url, "events", "tail", "--all", "--count", "1")
    assert tailed.returncode == 0, tailed.stderr
    line = tailed.stdout.strip()
    assert line == published.stdout.strip()
    fields = line.split()
    assert fields[1] == "model.trained.default" and fields[2].startswith("iris/sample-")
    assert len(fields[4].removeprefix("trace=")) == 32, "the sample carries a trace id"
    assert "artifacts=[onnx]" in line


def test_tail_filters_by_subject(nats_server: EmbeddedNats) -> None:
    assert gallery(nats_server.url, "events", "publish-sample").returncode == 0
    tailed = gallery(nats_server.url, "events", "tail", "--all", "-s", "model.trained.*", "-n", "1")
    assert " model.trained.default " in tailed.stdout


def test_tail_leaves_out_the_kinds_of_event_asked(nats_server: EmbeddedNats) -> None:
    """With feedback on, every labelled answer is a model.outcome line: --skip outcome leaves them out."""

    async def publish() -> None:
        async with EventBus(nats_server.url, "test") as bus:
            await bus.publish(sample_trained("iris-skipped").model_copy(update={"project": "skipping"}))
            degraded = ModelDegraded(model="iris-skipped", version=1, kind="drift", reason="feature 2 drifted")
            await bus.publish(degraded.model_copy(update={"project": "skipping"}))

    asyncio.run(publish())
    tail = ["events", "tail", "--all", "--project", "skipping", "-n", "1"]
    first = gallery(nats_server.url, *tail)
    assert first.returncode == 0 and " model.trained.skipping " in first.stdout, first.stderr
    skipped = gallery(nats_server.url, *tail, "--skip", "trained", "--skip", "outcome")
    assert skipped.returncode == 0 and " model.degraded.skipping " in skipped.stdout, skipped.stderr
    refused = gallery(nats_server.url, "events", "tail", "--skip", "outcomes")
    assert refused.returncode != 0 and "--skip: outcomes is not an event kind (" in refused.stderr + refused.stdout


def test_tail_filters_by_project(nats_server: EmbeddedNats) -> None:
    async def publish() -> None:
        async with EventBus(nats_server.url, "test") as bus:
            for project in ("alpha", "beta"):
                await bus.publish(sample_trained(f"iris-{project}").model_copy(update={"project": project}))

    asyncio.run(publish())
    tailed = gallery(nats_server.url, "events", "tail", "--all", "--project", "beta", "-n", "1")
    assert " model.trained.beta " in tailed.stdout and "iris-beta/" in tailed.stdout
    assert "iris-alpha" not in tailed.stdout
    refused = gallery(nats_server.url, "events", "tail", "--project", "Beta!")
    assert refused.returncode != 0 and "--project: 'Beta!' is not a project name" in refused.stderr + refused.stdout


def test_dlq_lists_dead_letters_with_their_reason(nats_server: EmbeddedNats) -> None:
    async def dead_letter() -> None:
        async with EventBus(nats_server.url, "test") as bus:
            headers = {
                ERROR_HEADER: "invalid trained event: data.run_id: Field required",
                ORIGINAL_SUBJECT_HEADER: "model.trained.default",
                EVENT_ID_HEADER: "0badc0de-1111-4000-8000-000000000000",
            }
            await bus.publish_raw(DLQ_PREFIX + "model.trained.default", b'{"broken": true}', headers)

    assert gallery(nats_server.url, "events", "dlq").stdout.strip() == "no dead letters"
    asyncio.run(dead_letter())
    table = gallery(nats_server.url, "events", "dlq")
    assert table.returncode == 0, table.stderr
    assert "model.trained.default" in table.stdout and "0badc0de" in table.stdout and "Field required" in table.stdout
    [row] = json.loads(gallery(nats_server.url, "events", "dlq", "--json").stdout)
    assert row["reason"] == "invalid trained event: data.run_id: Field required"
    assert row["data"] == '{"broken": true}'
    assert row["event_seq"] is None, "a letter written by hand names no stored event"


def test_without_a_server_the_bus_commands_say_so_at_once() -> None:
    result = gallery(f"nats://127.0.0.1:{free_port()}", "events", "tail")
    assert result.returncode == 1
    assert "is the stack running? (`gallery up`)" in result.stderr


@pytest.mark.parametrize("name", ["trained", "model.trained", "io.modelgallery.model.trained.v1"])
def test_schema_of_one_event(name: str) -> None:
    result = gallery("nats://127.0.0.1:1", "events", "schema", name)
    schema = json.loads(result.stdout)
    assert schema["properties"]["data"] == {"$ref": "#/$defs/ModelTrained"}
    assert "run_id" in schema["$defs"]["ModelTrained"]["required"]


def test_schema_of_every_event_and_an_unknown_one() -> None:
    every = json.loads(gallery("nats://127.0.0.1:1", "events", "schema").stdout)
    assert "io.modelgallery.model.degraded.v1" in every
    unknown = gallery("nats://127.0.0.1:1", "events", "schema", "exploded")
    assert unknown.returncode == 1 and "unknown event 'exploded'" in unknown.stderr


async def test_a_dead_letter_put_back_reaches_only_the_consumer_that_gave_up_on_it(nats_server: EmbeddedNats) -> None:
    handled: dict[str, list[str]] = {"picky": [], "easy": []}
    fixed = asyncio.Event()

    async def picky(event: CloudEvent[Any]) -> None:
        if not fixed.is_set():
            raise PermanentError("project 'team-x' does not exist")
        handled["picky"].append(event.id)

    async def easy(event: CloudEvent[Any]) -> None:
        handled["easy"].append(event.id)

    async with EventBus(nats_server.url, "test") as bus:
        bus.consumer("picky", picky, events=[ModelTrained]).start()
        bus.consumer("easy", easy, events=[ModelTrained]).start()
        event = await bus.publish(sample_trained("iris"))
        await eventually(lambda: _dead_letters(bus, 1), what="the dead letter")
        (letter,) = await bus.dead_letters()
        assert letter.consumer == "picky" and letter.event_id == event.id

        code, out = await gallery_async(nats_server.url, "events", "dlq")
        assert code == 0, out
        row = next(line for line in out.splitlines() if "picky" in line)
        assert row.split("│")[1].strip() == str(letter.seq), "the table names the seq to put back"
        code, out = await gallery_async(nats_server.url, "events", "dlq", "--consumer", "easy")
        assert code == 0 and "no dead letters" in out, out
        code, out = await gallery_async(nats_server.url, "events", "dlq", "--consumer", "picky", "--json")
        assert [row["seq"] for row in json.loads(out)] == [letter.seq]
        fixed.set()
        code, out = await gallery_async(nats_server.url, "events", "redeliver", str(letter.seq))
        assert code == 0, out
        assert f"put back dead letter {letter.seq} (model.trained.default, event {event.id[:8]}) for picky" in out
        await eventually(lambda: handled["picky"], what="the consumer that gave up to handle it")
        assert handled["picky"] == [event.id]
        await asyncio.sleep(0.5)  # time enough for the other consumer to have taken it too, had it
        assert handled["easy"] == [event.id], "the other consumer handled it the first time and passes it over"
        assert await bus.dead_letters() == []
        assert [e.id for e in await bus.stored_events()] == [event.id], "the event history holds it once"

        again, out = await gallery_async(nats_server.url, "events", "redeliver", str(letter.seq))
        assert again == 1 and f"no dead letter {letter.seq}" in out
        code, out = await gallery_async(nats_server.url, "events", "redeliver")
        assert code != 0 and "or give --consumer or --all" in out


async def _dead_letters(bus: EventBus, count: int) -> bool:
    return len(await bus.dead_letters()) >= count
