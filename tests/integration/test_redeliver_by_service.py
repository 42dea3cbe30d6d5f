"""On a secured stack, a machine holding only the CLI's NATS password (an operator's laptop, on Kubernetes)
still puts dead letters back: `gallery events redeliver` asks the publishing service, an admin over its
REST API, and that service republishes the letter as itself. It sends only the letters of its own events,
read from the dead letters by number (no caller's bytes), and only to an admin."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_sandbox import gallery_async
from uvicorn_thread import running
from waiting import eventually

from gallery_cli.events_cmd import sample_trained
from gallery_common.app import ServiceResources, create_app
from gallery_common.audit import AuditAction, AuditRecord
from gallery_common.audit_log import AuditLog, AuditSettings
from gallery_common.audit_trail import open_service_trail
from gallery_common.bus import DLQ_STREAM, DeadLetter, EventBus
from gallery_common.consumer import MSG_ID_HEADER, ORIGINAL_SEQ_HEADER, PermanentError
from gallery_common.events import CloudEvent, ModelTrained, ModelValidated, Payload
from gallery_common.nats_auth import NatsCredentials, ensure_passwords
from gallery_common.nats_server import EmbeddedNats
from gallery_common.settings import GallerySettings

ADMIN, WRITER, ALPHA_ADMIN = "ops-admin", "ops-writer", "alpha-admin"


@pytest.fixture(scope="module")
def trainer(secured_nats: EmbeddedNats, secured_home: Path) -> Iterator[str]:
    """The trainer's REST API (the shared app a trainer runs), connected as the `trainer` NATS user."""
    settings = GallerySettings(
        service_name="trainer",
        home=secured_home,
        nats_url=secured_nats.url,
        api_tokens=f"{ADMIN}:admin,{WRITER}:writer,{ALPHA_ADMIN}:alpha:admin",  # type: ignore[arg-type]
    )

    async def keep_a_trail(resources: ServiceResources, stack: AsyncExitStack) -> object:
        resources.trail = await open_service_trail(settings, resources.bus, stack)  # as the trainer's startup does
        return resources.trail

    app = create_app(settings, title="trainer", startup=keep_a_trail)
    with running(app, ready_path="/readyz") as uvicorn_server:
        yield f"http://127.0.0.1:{uvicorn_server.config.port}"


@pytest.fixture
def operator(secured_home: Path, tmp_path: Path) -> Path:
    """A GALLERY_HOME holding the CLI's NATS password and no other."""
    users = tmp_path / "nats" / "users"
    users.mkdir(parents=True)
    shutil.copy(secured_home / "nats" / "users" / "cli.password", users / "cli.password")
    return tmp_path


def bus(server: EmbeddedNats, home: Path, user: str) -> EventBus:
    credentials = NatsCredentials(user, ensure_passwords(home, [user])[user])
    return EventBus(server.url, user, credentials=credentials, publish_deadline=2)


class GivesUpOnce:
    """A consumer's handler that dead-letters the event `event_id` the first time it sees it."""

    def __init__(self) -> None:
        self.event_id = str(uuid.uuid4())
        self.seen: list[str] = []

    async def __call__(self, event: CloudEvent[Any]) -> None:
        if event.id == self.event_id:  # the stream holds the module's other events too
            self.seen.append(event.id)
            if len(self.seen) == 1:
                raise PermanentError("project 'team-x' does not exist")

    async def letters(self, reader: EventBus) -> list[DeadLetter]:
        return [letter for letter in await reader.dead_letters() if letter.event_id == self.event_id]

    @asynccontextmanager
    async def dead_lettered(
        self, server: EmbeddedNats, home: Path, consumer: tuple[str, str, type[Payload]], publisher: str, data: Payload
    ) -> AsyncIterator[tuple[DeadLetter, EventBus]]:
        """`data` published as NATS user `publisher` and dead-lettered by this handler, run by the durable
        consumer `consumer` (its user, its name, the event it takes); yields the letter and a `cli` bus while
        the consumer still runs."""
        user, durable, event = consumer
        async with (
            bus(server, home, user) as consuming,
            bus(server, home, publisher) as publishing,
            bus(server, home, "cli") as cli,
        ):
            consuming.consumer(durable, self, events=[event]).start()
            await publishing.publish(data, event_id=self.event_id)
            await eventually(lambda: self.letters(cli), what="the dead letter")
            (letter,) = await self.letters(cli)
            yield letter, cli


async def test_a_cli_without_the_publishers_password_has_the_publisher_put_the_letter_back(
    secured_nats: EmbeddedNats, secured_home: Path, trainer: str, operator: Path
) -> None:
    gate = GivesUpOnce()
    gate_consumer = ("registry", "registry-gate", ModelTrained)
    trained = sample_trained("iris")
    async with gate.dead_lettered(secured_nats, secured_home, gate_consumer, "trainer", trained) as (letter, cli):
        # no token: the trainer refuses, and the letter stays where it was
        code, out = await gallery_async(
            secured_nats.url, "events", "redeliver", str(letter.seq), home=operator,
            extra_env={"GALLERY_TRAINER_URL": trainer},
        )  # fmt: skip
        assert code == 1 and "the trainer refused POST" in out and "(401)" in out, out
        assert await gate.letters(cli) == [letter]

        code, out = await gallery_async(
            secured_nats.url, "events", "redeliver", str(letter.seq), home=operator,
            extra_env={"GALLERY_TRAINER_URL": trainer, "GALLERY_TOKEN": ADMIN},
        )  # fmt: skip
        assert code == 0, out
        assert f"put back dead letter {letter.seq} " in out and "sent by the trainer service" in out, out
        await eventually(lambda: len(gate.seen) == 2, what="the gate to handle it again")
        assert await gate.letters(cli) == []

        async def recorded() -> list[AuditRecord]:
            records = await AuditLog(cli, AuditSettings()).records("default")
            return [r for r in records if r.target == f"dead-letter/{letter.seq}"]

        (record,) = await eventually(recorded, what="the put-back in the audit trail")
        assert record.action == AuditAction.event_redelivered and record.actor.startswith("admin-")
        assert record.model == "iris" and record.after["redelivered_to"] == "registry-gate"


async def test_a_service_sends_only_its_own_events_and_only_for_an_admin(
    secured_nats: EmbeddedNats, secured_home: Path, trainer: str
) -> None:
    gate = GivesUpOnce()
    validated = ModelValidated(model="iris", version=1)
    deployer = ("deployer", "deployer", ModelValidated)
    async with (
        gate.dead_lettered(secured_nats, secured_home, deployer, "registry", validated) as (letter, _),
        httpx.AsyncClient(base_url=trainer, timeout=30) as client,
    ):

        async def put_back(seq: int, token: str) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"}
            return await client.post(f"/admin/dead-letters/{seq}/redeliver", headers=headers)

        async def listed(token: str) -> list[dict[str, Any]]:
            answer = await client.get("/admin/dead-letters", headers={"authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            return [row for row in answer.json() if row["event_id"] == gate.event_id]

        (row,) = await listed(ADMIN)
        assert (row["seq"], row["subject"], row["project"], row["consumer"], row["publisher"]) == (
            letter.seq, "model.validated.default", "default", "deployer", "registry"
        )  # fmt: skip
        assert row["reason"] == letter.reason and "team-x" in row["reason"]
        assert row["event_seq"] == letter.original_seq and letter.original_seq is not None
        assert await listed(ALPHA_ADMIN) == []  # an admin of another project does not see it

        refused = await put_back(letter.seq, WRITER)
        assert refused.status_code == 403 and "needs the admin role" in refused.json()["error"]
        not_ours = await put_back(letter.seq, ADMIN)
        assert not_ours.status_code == 409
        assert not_ours.json()["error"] == (
            f"dead letter {letter.seq} is a model.validated, which only the registry publishes: ask the registry"
        )
        missing = await put_back(10**9, ADMIN)
        assert missing.status_code == 404 and missing.json()["error"] == f"no dead letter {10**9}"
        assert gate.seen == [gate.event_id]  # nothing was sent again


async def test_a_letter_that_is_not_a_copy_of_a_stored_event_is_not_sent(
    secured_nats: EmbeddedNats, secured_home: Path, trainer: str, operator: Path
) -> None:
    """Any service may write a dead letter, only the trainer a model.trained: a letter another service forged
    (its own bytes under a real event's number), or one that names no event, is refused, and the trainer
    sends the genuine letter as the stream stored its event."""
    gate = GivesUpOnce()
    gate_consumer = ("registry", "registry-gate", ModelTrained)
    trained = sample_trained("iris")
    async with (
        gate.dead_lettered(secured_nats, secured_home, gate_consumer, "trainer", trained) as (letter, cli),
        bus(secured_nats, secured_home, "monitor") as monitor,
        httpx.AsyncClient(base_url=trainer, timeout=30, headers={"authorization": f"Bearer {ADMIN}"}) as client,
    ):
        stored = await cli.js.get_msg(DLQ_STREAM, letter.seq)
        headers = {k: v for k, v in (stored.headers or {}).items() if k != MSG_ID_HEADER}
        evil = letter.data.replace(b"file:///samples/", b"file:///attacker/")
        assert evil != letter.data
        forged = await monitor.publish_raw(letter.subject, evil, headers)
        unnamed = await monitor.publish_raw(
            letter.subject, letter.data, {k: v for k, v in headers.items() if k != ORIGINAL_SEQ_HEADER}
        )

        refused = await client.post(f"/admin/dead-letters/{forged.seq}/redeliver")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == (
            f"dead letter {forged.seq} does not match the event it names "
            f"(#{letter.original_seq} of MODEL_EVENTS, model.trained.default): not sent"
        )
        refused = await client.post(f"/admin/dead-letters/{unnamed.seq}/redeliver")
        assert refused.status_code == 409 and "does not name the event it copies" in refused.json()["error"]
        assert {forged.seq, unnamed.seq} <= {x.seq for x in await cli.dead_letters()}  # both kept
        assert gate.seen == [gate.event_id]  # nothing was sent

        # the CLI asking the trainer says why the letter stays
        code, out = await gallery_async(
            secured_nats.url, "events", "redeliver", str(forged.seq), home=operator,
            extra_env={"GALLERY_TRAINER_URL": trainer, "GALLERY_TOKEN": ADMIN},
        )  # fmt: skip
        assert code == 1 and f"kept dead letter {forged.seq}: dead letter {forged.seq} does not match" in out, out
        # the CLI sending as the trainer itself refuses the same; one kept letter does not stop the others
        code, out = await gallery_async(
            secured_nats.url, "events", "redeliver", str(unnamed.seq), str(letter.seq), home=secured_home
        )
        assert code == 1 and f"kept dead letter {unnamed.seq}: " in out and "does not name the event" in out, out
        assert f"put back dead letter {letter.seq} " in out and "1 of 2 dead letter(s) kept" in out, out
        await eventually(lambda: len(gate.seen) == 2, what="the gate to handle the genuine letter again")
        assert gate.seen == [gate.event_id] * 2
