"""The bus is not open: a real nats-server configured as `gallery up` configures it refuses anonymous
clients and lets each NATS user publish only the subjects it owns."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
from cli_sandbox import gallery_async
from nats.aio.client import Client
from nats.errors import NoServersError
from waiting import eventually

from gallery_cli.events_cmd import sample_trained
from gallery_common.bus import EVENTS_STREAM, DeadLetter, EventBus
from gallery_common.consumer import PermanentError
from gallery_common.errors import Unavailable
from gallery_common.events import CloudEvent, ModelTrained
from gallery_common.nats_auth import NatsCredentials, ensure_passwords, principals, publisher_of
from gallery_common.nats_server import EmbeddedNats
from gallery_common.routes_kv import BUCKET, RouteChange, RoutesBucket, RoutesFollower
from gallery_common.routes_kv import STREAM as ROUTES_STREAM
from gallery_common.sessions_kv import SESSIONS_BUCKET
from gallery_web.sessions import Session, SessionStore

OWNERS = {
    "model.trained.default": "trainer",
    "model.validated.default": "registry",
    "model.rejected.default": "registry",
    "model.optimized.default": "optimizer",
    "model.deployed.default": "deployer",
    "model.rolled_back.default": "deployer",
    "model.deployment_failed.default": "deployer",
    "model.experiment_concluded.default": "deployer",
    "model.degraded.default": "monitor",
    "model.outcome.default": "gateway",
    "model.usage.default": "gateway",
}


def credentials(home: Path, user: str) -> NatsCredentials:
    return NatsCredentials(user, ensure_passwords(home, [user])[user])


class Violations:
    """The permission errors the server sent a connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))


async def publish_refused(connect, users: Sequence[str], subjects: Sequence[str], payload: bytes) -> list[Violations]:  # type: ignore[no-untyped-def]
    """Each of `users` publishes `payload` on each of `subjects`; the errors the server sent each, once it
    has sent one per subject to every user (10 s at most)."""
    seen: list[Violations] = []
    for user in users:
        seen.append(Violations())
        nc = await connect(user, seen[-1])
        for subject in subjects:
            await nc.publish(subject, payload)
        await nc.flush()
    deadline = asyncio.get_running_loop().time() + 10
    while any(len(violations.errors) < len(subjects) for violations in seen):
        assert asyncio.get_running_loop().time() < deadline, [v.errors for v in seen]
        await asyncio.sleep(0.05)
    return seen


@pytest.fixture
async def connect(secured_nats: EmbeddedNats, secured_home: Path) -> AsyncIterator[object]:
    opened: list[Client] = []

    async def as_user(user: str, violations: Violations | None = None) -> Client:
        creds = credentials(secured_home, user)
        nc = await nats.connect(
            secured_nats.url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            error_cb=(violations or Violations()).record,
            allow_reconnect=False,
        )
        opened.append(nc)
        return nc

    yield as_user
    for nc in opened:
        await nc.close()


async def test_an_anonymous_client_or_a_wrong_password_cannot_connect(secured_nats: EmbeddedNats) -> None:
    for options in ({}, {"user": "registry", "password": "guessed"}, {"user": "nobody", "password": "x"}):
        with pytest.raises((NoServersError, nats.errors.Error)):
            await nats.connect(secured_nats.url, allow_reconnect=False, max_reconnect_attempts=0, **options)


async def test_only_the_owner_of_a_lifecycle_subject_can_publish_on_it(
    secured_nats: EmbeddedNats, secured_home: Path, connect
) -> None:  # type: ignore[no-untyped-def]
    users = ["trainer", "registry", "optimizer", "deployer", "monitor", "gateway", "modelserver", "cli"]
    async with EventBus(secured_nats.url, "test", credentials=credentials(secured_home, "cli")) as reader:
        before = (await reader.js.stream_info(EVENTS_STREAM)).state.messages
        for user in users:
            nc = await connect(user)
            for subject in OWNERS:
                await nc.publish(subject, b"{}", headers={"Nats-Msg-Id": f"{user}-{subject}"})
            await nc.flush()
        await asyncio.sleep(0.3)
        stored = []
        info = await reader.js.stream_info(EVENTS_STREAM)
        for seq in range(before + 1, info.state.last_seq + 1):
            msg = await reader.js.get_msg(EVENTS_STREAM, seq)
            stored.append((msg.headers or {}).get("Nats-Msg-Id"))
    assert sorted(stored) == sorted(f"{owner}-{subject}" for subject, owner in OWNERS.items())


def test_a_dead_letter_is_put_back_as_the_one_user_that_may_publish_its_subject() -> None:
    assert {subject: publisher_of(subject.split(".")[1]) for subject in OWNERS} == OWNERS


async def test_the_cli_puts_a_dead_letter_back_as_its_publisher_and_takes_it_out(
    secured_nats: EmbeddedNats, secured_home: Path
) -> None:
    event_id = str(uuid.uuid4())
    seen: list[str] = []

    async def gate(event: CloudEvent[Any]) -> None:
        if event.id == event_id:  # the stream holds other tests' events too
            seen.append(event.id)
            if len(seen) == 1:
                raise PermanentError("project 'team-x' does not exist")

    def bus(user: str) -> EventBus:
        return EventBus(secured_nats.url, user, credentials=credentials(secured_home, user), publish_deadline=2)

    async def ours(cli: EventBus) -> list[DeadLetter]:
        return [letter for letter in await cli.dead_letters() if letter.event_id == event_id]

    async with bus("registry") as registry, bus("trainer") as trainer, bus("cli") as cli:
        registry.consumer("registry-gate", gate, events=[ModelTrained]).start()
        await trainer.publish(sample_trained("iris"), event_id=event_id)
        await eventually(lambda: ours(cli), what="the dead letter")
        (letter,) = await ours(cli)
        outsider = await bus("gallery").connect(ensure_streams=False)
        try:
            with pytest.raises(Unavailable):  # the server refuses it: only the CLI and publishers take letters out
                await outsider.forget_dead_letter(letter.seq)
        finally:
            await outsider.close()
        with pytest.raises(Unavailable):  # and only the trainer may put back a model.trained
            await cli.redeliver(letter)

        # every dead letter of the fixed consumer (this one among them)
        code, out = await gallery_async(
            secured_nats.url, "events", "redeliver", "--consumer", "registry-gate", home=secured_home
        )
        assert code == 0 and f"put back dead letter {letter.seq} " in out, out
        await eventually(lambda: len(seen) == 2, what="the gate to handle it again")
        assert await ours(cli) == []


async def test_only_model_servers_can_answer_inference_and_only_the_gateway_sends_samples(connect) -> None:  # type: ignore[no-untyped-def]
    impostor_errors = Violations()
    impostor = await connect("gateway", impostor_errors)
    await impostor.subscribe("infer.digits", queue="modelserver.digits")
    await impostor.flush()
    await asyncio.sleep(0.2)
    assert any("permissions violation" in e.lower() and "infer.digits" in e for e in impostor_errors.errors)

    server = await connect("modelserver")

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"answer")

    await server.subscribe("infer.digits", queue="modelserver.digits", cb=answer)
    await server.flush()
    client = await connect("cli")
    assert (await client.request("infer.digits", b"{}", timeout=2)).data == b"answer"

    monitor = await connect("monitor")
    samples = await monitor.subscribe("inference.sample.>")
    forged = await connect("cli")
    await forged.publish("inference.sample.digits", b"forged")
    gateway = await connect("gateway")
    await gateway.publish("inference.sample.digits", b"real")
    await forged.flush()
    await gateway.flush()
    assert (await samples.next_msg(timeout=2)).data == b"real"
    with pytest.raises(nats.errors.TimeoutError):
        await samples.next_msg(timeout=0.3)


async def test_a_model_server_cannot_submit_batch_jobs_or_publish_lifecycle_events(connect) -> None:  # type: ignore[no-untyped-def]
    errors = Violations()
    nc = await connect("modelserver", errors)
    for subject in ("infer.jobs.digits", "model.deployed.default", "dlq.model.trained.default"):
        await nc.publish(subject, b"{}")
    await nc.flush()
    await asyncio.sleep(0.2)
    refused = " ".join(errors.errors)
    assert all(
        subject in refused for subject in ("infer.jobs.digits", "model.deployed.default", "dlq.model.trained.default")
    )


def test_every_service_connects_with_a_user_of_its_own() -> None:
    table = principals(["echo"])
    users = {"trainer", "registry", "optimizer", "deployer", "monitor", "gateway", "modelserver", "cli", "gallery"}
    assert users | {"echo"} <= set(table)
    # the generic user of another installed service owns no lifecycle subject
    assert not [s for s in table["echo"].publish if s.startswith("model.")]
    assert all(s.startswith("_INBOX.echo.") for s in table["echo"].subscribe)


async def test_only_the_deployer_writes_routes_and_a_gateway_only_follows_them(
    secured_nats: EmbeddedNats, secured_home: Path, connect
) -> None:  # type: ignore[no-untyped-def]
    deployer = await EventBus(
        secured_nats.url, "test-deployer", credentials=credentials(secured_home, "deployer")
    ).connect(ensure_streams=False)
    gateway = await EventBus(
        secured_nats.url, "test-gateway", credentials=credentials(secured_home, "gateway")
    ).connect(ensure_streams=False)
    try:
        bucket = await RoutesBucket.open(deployer)
        written = await bucket.put("iris.v2", b'{"backends": []}')
        subjects = (f"$KV.{BUCKET}.iris=v2", f"$KV.{BUCKET}.forged")
        forgers = await publish_refused(
            connect, ("gateway", "cli", "monitor"), subjects, b'{"backends": [{"id": "evil"}]}'
        )
        changes: list[RouteChange] = []

        async def apply(batch: Sequence[RouteChange], synced: bool) -> None:
            changes.extend(batch)

        follower = RoutesFollower(gateway, apply).start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not follower.synced:
                assert asyncio.get_running_loop().time() < deadline, "the gateway never read the bucket"
                await asyncio.sleep(0.05)
        finally:
            await follower.close()
        stored = (await deployer.js.stream_info(ROUTES_STREAM)).state.messages
    finally:
        await gateway.close()
        await deployer.close()
    assert changes == [RouteChange("iris.v2", b'{"backends": []}', written)]  # read, and nothing forged
    assert stored == 1
    for violations in forgers:  # the server says so to each of them
        refused = " ".join(violations.errors).lower()
        assert refused.count("permissions violation") == 2 and f"$kv.{BUCKET}.forged" in refused


async def test_only_the_gallery_keeps_and_reads_the_sign_in_sessions(
    secured_nats: EmbeddedNats, secured_home: Path, connect
) -> None:  # type: ignore[no-untyped-def]
    gallery = await EventBus(
        secured_nats.url, "test-gallery", credentials=credentials(secured_home, "gallery")
    ).connect(ensure_streams=False)
    try:
        store = SessionStore(gallery, max_age_s=3600, max_bytes=8 * 1024**2)
        cookie = await store.open(Session("oidc:ann", "a.b.c", None, time.time() + 60, None, time.time() + 3600))
        found = await store.get(cookie)
        assert found is not None and found[0].name == "oidc:ann"
        subjects = (
            f"$JS.API.STREAM.MSG.GET.KV_{SESSIONS_BUCKET}",
            f"$JS.API.DIRECT.GET.KV_{SESSIONS_BUCKET}.$KV.{SESSIONS_BUCKET}.x",
            f"$KV.{SESSIONS_BUCKET}.forged",
        )
        prying = await publish_refused(connect, ("gateway", "cli", "registry"), subjects, b"{}")
        stored = (await gallery.js.stream_info(f"KV_{SESSIONS_BUCKET}")).state.messages
    finally:
        await gallery.close()
    assert stored == 1  # nothing forged
    for violations in prying:
        assert " ".join(violations.errors).lower().count("permissions violation") == 3
