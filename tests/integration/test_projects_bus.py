"""Projects on the bus, against a real nats-server: subjects `model.<event>.<project>`, consumers scoped to
projects, events whose payload lies about their project dead-lettered, and project-bound NATS users that the
server itself keeps out of other projects' events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import nats
import pytest
from nats.aio.client import Client
from nats.js import api
from waiting import eventually

from gallery_common.bus import DLQ_STREAM, EVENTS_STREAM, EventBus
from gallery_common.events import ArtifactRef, CloudEvent, ModelTrained, make_event
from gallery_common.nats_auth import (
    NatsCredentials,
    authorization_block,
    credentials_for,
    ensure_passwords,
    principals,
)
from gallery_common.nats_server import EmbeddedNats
from gallery_common.settings import GallerySettings

PROJECTS = ["alpha", "beta"]


def trained(run_id: str, project: str = "default") -> ModelTrained:
    weights = ArtifactRef(uri="file:///tmp/weights.safetensors", sha256="ab" * 32)
    return ModelTrained(model="iris", run_id=run_id, project=project, artifacts={"weights": weights})


class Seen:
    """What a consumer's handler was given, in order."""

    def __init__(self) -> None:
        self.events: list[CloudEvent[Any]] = []

    async def handle(self, event: CloudEvent[Any]) -> None:
        self.events.append(event)

    def runs(self) -> list[str]:
        return [event.data.run_id for event in self.events]


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[EventBus]:
    async with EventBus(nats_server.url, "test-projects") as connected:
        yield connected


async def test_events_are_stored_under_their_project(bus: EventBus) -> None:
    for run, project in (("a1", "alpha"), ("b1", "beta"), ("d1", "default")):
        await bus.publish(trained(run, project))
    stored = await bus.stored_events()
    assert [e.nats_subject for e in stored] == ["model.trained.alpha", "model.trained.beta", "model.trained.default"]
    assert [e.data.run_id for e in await bus.stored_events(project="beta")] == ["b1"]


async def test_a_consumer_scoped_to_alpha_never_receives_betas_events(nats_server: EmbeddedNats, bus: EventBus) -> None:
    scoped_bus = await EventBus(nats_server.url, "registry").connect()
    scoped_bus.projects = ("alpha",)
    alpha, everything = Seen(), Seen()
    scoped = scoped_bus.consumer("registry-gate", alpha.handle, [ModelTrained])
    installation = bus.consumer("registry-gate", everything.handle, [ModelTrained])
    try:
        for run, project in (("a1", "alpha"), ("b1", "beta"), ("d1", "default"), ("a2", "alpha")):
            await bus.publish(trained(run, project))
        scoped.start()
        installation.start()
        await eventually(lambda: len(everything.events) == 4, timeout=10)
        await eventually(lambda: alpha.runs() == ["a1", "a2"], timeout=10)
        # the sentinel comes after beta's events: once it is in, beta's would have been too
        await bus.publish(trained("a3", "alpha"))
        await eventually(lambda: alpha.runs() == ["a1", "a2", "a3"], timeout=10)
        info = await bus.js.consumer_info(EVENTS_STREAM, "registry-gate_alpha")
        assert info.config.filter_subject == "model.trained.alpha"
        assert everything.runs()[:4] == ["a1", "b1", "d1", "a2"], "the default installation reads every project"
    finally:
        await scoped_bus.close()


async def test_a_scoped_consumer_of_several_events_skips_the_others_of_its_project(
    nats_server: EmbeddedNats, bus: EventBus
) -> None:
    from gallery_common.events import ModelDegraded, ModelValidated

    scoped_bus = await EventBus(nats_server.url, "deployer").connect()
    scoped_bus.projects = ("alpha",)
    seen = Seen()
    consumer = scoped_bus.consumer("deployer", seen.handle, [ModelValidated, ModelDegraded])
    try:
        await bus.publish(trained("a1", "alpha"))  # not one of its events
        await bus.publish(ModelValidated(model="iris", version=1, project="beta"))
        await bus.publish(ModelValidated(model="iris", version=2, project="alpha"))
        consumer.start()
        await eventually(lambda: len(seen.events) == 1, timeout=10)
        await asyncio.sleep(0.3)
        assert [(e.event, e.data.project, e.data.version) for e in seen.events] == [("validated", "alpha", 2)]
        assert (await bus.dead_letters()) == [], "an event it does not handle is skipped, not dead-lettered"
    finally:
        await scoped_bus.close()


async def test_an_event_whose_payload_names_another_project_than_its_subject_is_dead_lettered(bus: EventBus) -> None:
    seen = Seen()
    consumer = bus.consumer("registry-gate", seen.handle, [ModelTrained])
    smuggled = make_event(trained("smuggled", "beta"), "/modelgallery/trainer")
    await bus.publish_raw("model.trained.alpha", smuggled.to_json(), {"Nats-Msg-Id": smuggled.id})
    await bus.publish(trained("honest", "alpha"))
    async with consumer:
        await eventually(lambda: seen.runs() == ["honest"], timeout=10)
        letters = await eventually(bus.dead_letters, timeout=10)
    [letter] = letters
    assert letter.original_subject == "model.trained.alpha" and letter.event_id == smuggled.id
    assert letter.reason == (
        "project mismatch: the payload's project 'beta' is not its subject's project 'alpha'"
        " (model.trained.alpha); an event may act only in the project it was published in"
    )


async def test_a_durable_consumer_with_the_old_filter_is_brought_to_the_new_one(bus: EventBus) -> None:
    old = api.ConsumerConfig(
        name="registry-gate",
        durable_name="registry-gate",
        ack_policy=api.AckPolicy.EXPLICIT,
        filter_subject="model.trained",
    )
    await bus.js.add_consumer(EVENTS_STREAM, config=old)
    seen = Seen()
    async with bus.consumer("registry-gate", seen.handle, [ModelTrained]):
        await bus.publish(trained("after-upgrade", "alpha"))
        await eventually(lambda: seen.runs() == ["after-upgrade"], timeout=10)
    info = await bus.js.consumer_info(EVENTS_STREAM, "registry-gate")
    assert info.config.filter_subject == "model.trained.*"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("projects-home")


@pytest.fixture(scope="module")
def secured(home: Path) -> Iterator[EmbeddedNats]:
    """A nats-server with every user of an installation with projects alpha and beta."""
    table = principals(projects=PROJECTS)
    passwords = ensure_passwords(home, table)
    hashes = {user: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode() for user, pw in passwords.items()}
    with EmbeddedNats(home / "nats", authorization=authorization_block(table, hashes)) as running:
        yield running


def creds(home: Path, user: str) -> NatsCredentials:
    return NatsCredentials(user, ensure_passwords(home, [user])[user])


class Violations:
    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))


@pytest.fixture
async def installation(secured: EmbeddedNats, home: Path) -> AsyncIterator[EventBus]:
    """The installation-wide trainer and the CLI's reader: they create the streams and publish everywhere."""
    async with EventBus(secured.url, "trainer", credentials=creds(home, "trainer")) as trainer:
        yield trainer


async def raw_client(secured: EmbeddedNats, home: Path, user: str, violations: Violations) -> Client:
    account = creds(home, user)
    return await nats.connect(
        secured.url,
        user=account.user,
        password=account.password,
        inbox_prefix=account.inbox_prefix,
        error_cb=violations.record,
        allow_reconnect=False,
    )


async def stored_runs(secured: EmbeddedNats, home: Path) -> list[tuple[str, str]]:
    async with EventBus(secured.url, "cli", credentials=creds(home, "cli")) as reader:
        return [(e.nats_subject, e.data.run_id) for e in await reader.stored_events()]


async def test_a_project_bound_user_may_publish_only_in_its_project(
    secured: EmbeddedNats, home: Path, installation: EventBus
) -> None:
    violations = Violations()
    nc = await raw_client(secured, home, "trainer_alpha", violations)
    try:
        for project in ("alpha", "beta", "default"):
            event = make_event(trained(f"bound-{project}", project), "/modelgallery/trainer")
            await nc.publish(event.nats_subject, event.to_json())
        await nc.publish("dlq.model.trained.beta", b"{}")
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    runs = [run for _, run in await stored_runs(secured, home) if run.startswith("bound-")]
    assert runs == ["bound-alpha"]
    refused = " ".join(violations.errors)
    for subject in ("model.trained.beta", "model.trained.default", "dlq.model.trained.beta"):
        assert f'permissions violation for publish to "{subject}"' in refused


async def test_a_project_bound_service_consumes_its_projects_events_and_no_others(
    secured: EmbeddedNats, home: Path, installation: EventBus
) -> None:
    await installation.publish(trained("for-beta", "beta"))
    await installation.publish(trained("for-alpha", "alpha"))
    bound = EventBus(secured.url, "registry", credentials=creds(home, "registry_alpha"))
    bound.projects = ("alpha",)
    seen = Seen()
    async with bound, bound.consumer("registry-gate", seen.handle, [ModelTrained]):
        await eventually(lambda: "for-alpha" in seen.runs(), timeout=10)
        await installation.publish(trained("late-beta", "beta"))
        await installation.publish(trained("late-alpha", "alpha"))
        await eventually(lambda: "late-alpha" in seen.runs(), timeout=10)
    assert {e.data.project for e in seen.events} == {"alpha"}
    assert "for-beta" not in seen.runs() and "late-beta" not in seen.runs()


async def test_a_project_bound_consumer_of_several_events_filters_all_of_its_project(
    secured: EmbeddedNats, home: Path, installation: EventBus
) -> None:
    from gallery_common.events import ModelDegraded, ModelValidated

    async with EventBus(secured.url, "registry", credentials=creds(home, "registry")) as registry:
        await registry.publish(ModelValidated(model="iris", version=1, project="beta"))
        await registry.publish(ModelValidated(model="iris", version=2, project="alpha"))
    bound = EventBus(secured.url, "deployer", credentials=creds(home, "deployer_alpha"))
    bound.projects = ("alpha",)
    seen = Seen()
    async with bound, bound.consumer("deployer", seen.handle, [ModelValidated, ModelDegraded]) as consumer:
        await eventually(lambda: len(seen.events) == 1, timeout=10)
        assert consumer.subjects == ["model.*.alpha"]
    assert [(e.event, e.data.project, e.data.version) for e in seen.events] == [("validated", "alpha", 2)]


@pytest.mark.parametrize(
    "filter_subject",
    ["model.trained.beta", "model.>", "model.*.*", "model.trained.*", None],
    ids=["beta", "all", "all-events", "one-event-all-projects", "filterless"],
)
async def test_the_server_refuses_a_project_bound_user_a_consumer_beyond_its_project(
    secured: EmbeddedNats, home: Path, installation: EventBus, filter_subject: str | None
) -> None:
    violations = Violations()
    nc = await raw_client(secured, home, "registry_alpha", violations)
    try:
        js = nc.jetstream(timeout=1.0)
        config = api.ConsumerConfig(
            name="registry-gate_alpha",
            durable_name="registry-gate_alpha",
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=filter_subject,
        )
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.add_consumer(EVENTS_STREAM, config=config)
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    # nats.py reports the server's error in lower case
    assert any(
        'permissions violation for publish to "$js.api.consumer.create.model_events' in e for e in violations.errors
    )
    # whatever the bound user's own consumer was before, it was not widened
    async with EventBus(secured.url, "cli", credentials=creds(home, "cli")) as reader:
        try:
            info = await reader.js.consumer_info(EVENTS_STREAM, "registry-gate_alpha")
        except nats.js.errors.NotFoundError:
            return
    assert info.config.filter_subject == "model.trained.alpha"


async def test_the_server_refuses_a_project_bound_user_a_direct_read_or_a_stream_change(
    secured: EmbeddedNats, home: Path, installation: EventBus
) -> None:
    await installation.publish(trained("secret-beta", "beta"))
    violations = Violations()
    nc = await raw_client(secured, home, "trainer_alpha", violations)
    try:
        js = nc.jetstream(timeout=1.0)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.get_msg(EVENTS_STREAM, seq=1)
        stream = (await js.stream_info(EVENTS_STREAM)).config  # its state it may read
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.update_stream(stream)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.get_msg(DLQ_STREAM, seq=1)
    finally:
        await nc.close()
    refused = " ".join(violations.errors)  # nats.py reports the server's error in lower case
    for subject in (f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}", f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}"):
        assert f'permissions violation for publish to "{subject.lower()}"' in refused


async def test_a_process_scoped_to_one_project_connects_as_its_project_bound_user(
    secured: EmbeddedNats, home: Path, installation: EventBus
) -> None:
    settings = GallerySettings(home=home, service_name="trainer", project_scope="alpha", nats_url=secured.url)
    assert credentials_for(settings) == creds(home, "trainer_alpha")
    assert credentials_for(settings.model_copy(update={"project_scope": ""})) == creds(home, "trainer")
    bus = EventBus.from_settings(settings)
    assert bus.project_bound and bus.projects == ("alpha",)
    async with bus:  # finds the streams without the right to create them
        await bus.publish(trained("scoped-publish", "alpha"))
    assert ("model.trained.alpha", "scoped-publish") in await stored_runs(secured, home)


def test_a_project_scope_that_is_not_a_project_name_is_refused() -> None:
    from gallery_common.nats_auth import project_scope

    assert project_scope(GallerySettings(project_scope=" beta, alpha,beta ")) == ("alpha", "beta")
    with pytest.raises(ValueError, match=r"GALLERY_PROJECT_SCOPE: 'Alpha\.x' is not a project name"):
        project_scope(GallerySettings(project_scope="Alpha.x"))


def test_gallery_up_makes_the_project_bound_users_the_settings_name(tmp_path: Path) -> None:
    from gallery_cli.stack import stack_authorization
    from gallery_common.nats_auth import password_path
    from gallery_common.settings import GallerySettings

    settings = GallerySettings(home=tmp_path, nats_project_users="alpha, beta")
    block = stack_authorization(tmp_path, [], settings.nats_project_user_list)
    for user in ("trainer_alpha", "registry_beta", "trainer"):
        assert f"user: {user}" in block or f'"{user}"' in block, user
        assert password_path(tmp_path, user).exists()
    assert "trainer_gamma" not in block
    with pytest.raises(Exception, match="project name"):
        _ = GallerySettings(home=tmp_path, nats_project_users="Team A").nats_project_user_list
