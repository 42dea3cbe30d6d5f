"""`gallery events ...`: the lifecycle event schemas and, through the bus, the events themselves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import typer
from nats import errors as nats_errors
from nats.js import errors as js_errors
from pydantic import ValidationError
from rich.table import Table

from gallery_common.bus import DeadLetter, EventBus
from gallery_common.errors import Conflict, GalleryError, InvalidRequest, Unavailable
from gallery_common.events import (
    ANY_PROJECT,
    PAYLOADS,
    SUBJECT_PREFIX,
    TYPE_PREFIX,
    ArtifactRef,
    CloudEvent,
    Lineage,
    ModelTrained,
    json_schemas,
    subject_for,
    type_for,
)
from gallery_common.nats_auth import credentials_for, publisher_of_subject
from gallery_common.projects import PROJECT_PATTERN, PROJECT_RULE
from gallery_common.settings import GallerySettings
from gallery_common.telemetry import configure_logging, configure_tracing, tracer

from .console import cli_settings, console, fail, say
from .event_lines import event_line
from .records import LOCAL_HOST
from .service_client import client_for, error_of

app = typer.Typer(help="Lifecycle events: schemas, live tail, dead letters.", no_args_is_help=True)

CLI_SERVICE = "gallery-cli"
CLI_USER = "cli"
CONNECT_DEADLINE = 5.0
REDELIVER_ALL_LIMIT = 1000
T = TypeVar("T")


def _event_type(name: str) -> str:
    """Accept `trained`, `model.trained` or the full CloudEvent type."""
    short = name.removeprefix(TYPE_PREFIX + ".").removeprefix(SUBJECT_PREFIX + ".").removesuffix(".v1")
    if short not in PAYLOADS:
        fail(f"unknown event {name!r}; known: {', '.join(PAYLOADS)}")
    return type_for(short)


@app.command()
def schema(
    event: Annotated[str | None, typer.Argument(help="One event (e.g. trained); all when omitted.")] = None,
) -> None:
    """Print the JSON Schema of every lifecycle event (CloudEvent envelope included), or of one."""
    schemas = json_schemas()
    doc = schemas[_event_type(event)] if event else schemas
    typer.echo(json.dumps(doc, indent=2))


def _reachable(nats_url: str) -> bool:
    """Whether any server in the URL list accepts TCP at all (the bus itself would retry for seconds)."""
    for url in nats_url.split(","):
        parts = urlsplit(url.strip())
        try:
            with socket.create_connection((parts.hostname or LOCAL_HOST, parts.port or 4222), timeout=1.0):
                return True
        except OSError:
            continue
    return False


@asynccontextmanager
async def _connected(settings: GallerySettings, user: str = CLI_USER) -> AsyncIterator[EventBus]:
    """The bus as NATS user `user` (the CLI's own, unless an event only another may publish is sent)."""
    # The services' long publish deadline suits a server restart, not a person waiting at a prompt.
    bus = EventBus.from_settings(settings, user=user, source="/modelgallery/cli", publish_deadline=CONNECT_DEADLINE)
    bus.service = CLI_SERVICE
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


def _run(coro: Coroutine[Any, Any, T], settings: GallerySettings) -> T:
    """Run one bus conversation; connection trouble becomes one line, Ctrl-C a quiet exit."""
    if not _reachable(settings.nats_url):
        coro.close()
        fail(f"nothing answers at {settings.nats_url}; is the stack running? (`gallery up`)")
    # Bus warnings (an invalid event skipped, a reconnect) go to stderr as JSON, apart from the output.
    configure_logging(CLI_SERVICE, "WARNING")
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Unavailable as exc:
        fail(f"{exc.message}; is the stack running? (`gallery up`)")
    except GalleryError as exc:
        fail(exc.message)
    except (nats_errors.Error, OSError) as exc:
        fail(f"NATS at {settings.nats_url}: {exc}")


async def _tail(
    settings: GallerySettings,
    subject: str,
    deliver: Literal["new", "all"],
    count: int | None,
    skip: frozenset[str] = frozenset(),
) -> int:
    seen = 0
    async with _connected(settings) as bus:
        # tail() is an async generator (annotated as an iterator); closing it unsubscribes at once.
        events = cast(AsyncGenerator[CloudEvent[Any], None], bus.tail(subject, deliver))
        try:
            async with aclosing(events):
                async for event in events:
                    if event.event in skip:
                        continue
                    say(event_line(event))
                    seen += 1
                    if count is not None and seen >= count:
                        break
        except js_errors.NotFoundError:
            fail(f"no stream holds {subject!r}: lifecycle events are on {SUBJECT_PREFIX}.>, dead letters on dlq.>")
    return seen


def tail_subject(subject: str | None, project: str | None) -> str:
    """The filter of `gallery events tail`: `--subject` as given, else every event of `--project` (or of all)."""
    if project is not None and not re.fullmatch(PROJECT_PATTERN, project):
        fail(f"--project: {project!r} is not a project name ({PROJECT_RULE})")
    if subject is not None and project is not None:
        fail("--subject and --project: give one (subjects are model.<event>.<project>)")
    if subject is not None:
        return subject
    return subject_for(ANY_PROJECT, project) if project else f"{SUBJECT_PREFIX}.>"


@app.command()
def tail(
    subject: Annotated[
        str | None, typer.Option("--subject", "-s", help="NATS subject filter (model.<event>.<project>).")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's events.")] = None,
    from_start: Annotated[bool, typer.Option("--all", help="Replay the stream from its first event.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Stop after this many events.")] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            "-x",
            help="Leave out events of this kind (outcome, usage, ...: one line per feedback or usage report); "
            "repeat for more.",
        ),
    ] = None,
) -> None:
    """Print lifecycle events as they are stored: time, subject, model/version, id, trace id, data summary."""
    unknown = sorted(set(skip or ()) - set(PAYLOADS))
    if unknown:
        fail(f"--skip: {', '.join(unknown)} is not an event kind ({', '.join(sorted(PAYLOADS))})")
    settings = cli_settings()
    deliver: Literal["new", "all"] = "all" if from_start else "new"
    _run(_tail(settings, tail_subject(subject, project), deliver, count, frozenset(skip or ())), settings)


async def _dead_letters(settings: GallerySettings, limit: int, consumer: str | None = None) -> list[DeadLetter]:
    async with _connected(settings) as bus:
        return await _latest(bus, limit, consumer)


async def _latest(bus: EventBus, limit: int, consumer: str | None) -> list[DeadLetter]:
    """The latest `limit` dead letters (of `consumer` only, among the latest REDELIVER_ALL_LIMIT)."""
    if consumer is None:
        return await bus.dead_letters(limit)
    return [letter for letter in await bus.dead_letters(REDELIVER_ALL_LIMIT) if letter.consumer == consumer][-limit:]


ConsumerOption = Annotated[
    str | None, typer.Option("--consumer", "-c", help="Only the dead letters of this durable consumer.")
]


@app.command()
def dlq(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many of the latest to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with each message's bytes) instead.")] = False,
    consumer: ConsumerOption = None,
) -> None:
    """Show the latest dead letters: events a consumer gave up on, and why."""
    settings = cli_settings()
    letters = _run(_dead_letters(settings, limit, consumer), settings)
    if as_json:
        rows = [
            {
                "seq": d.seq,
                "time": d.time.isoformat() if d.time else None,
                "original_subject": d.original_subject,
                "event_seq": d.original_seq,
                "event_id": d.event_id,
                "consumer": d.consumer,
                "deliveries": d.deliveries,
                "reason": d.reason,
                "data": d.data.decode(errors="replace"),
            }
            for d in letters
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not letters:
        say("no dead letters")
        return
    table = Table(title=f"Dead letters (latest {limit})", title_justify="left")
    table.add_column("seq", justify="right", no_wrap=True)  # what `gallery events redeliver` takes
    for column in ("time", "subject"):
        table.add_column(column, no_wrap=True)
    for column in ("event id", "consumer"):
        table.add_column(column, overflow="fold", max_width=14)
    table.add_column("deliveries", justify="right")
    # the reason is what a reader came for: it keeps its width and wraps
    table.add_column("reason", overflow="fold", min_width=40)
    for d in letters:
        when = d.time.strftime("%Y-%m-%d %H:%M:%S") if d.time else "-"
        deliveries = str(d.deliveries) if d.deliveries is not None else "-"
        table.add_row(
            str(d.seq), when, d.original_subject, (d.event_id or "-")[:8], d.consumer or "-", deliveries, d.reason
        )
    console.print(table)


def publisher_for(letter: DeadLetter) -> str:
    """The NATS user `letter` goes back as: the one that alone may publish its subject."""
    publisher = publisher_of_subject(letter.original_subject)
    if publisher is None:
        raise InvalidRequest(
            f"dead letter {letter.seq}: {letter.original_subject} is not a lifecycle event's subject, so no one "
            "may publish it again"
        )
    return publisher


def can_publish_as(settings: GallerySettings, publisher: str) -> bool:
    """Whether this machine can send as `publisher` itself: a bus without users, or that user's credentials
    here. Else the publishing service puts the letter back when asked (`dead_letters_api`)."""
    return credentials_for(settings, CLI_USER) is None or credentials_for(settings, publisher) is not None


def _ask_publisher(publisher: str, seq: int) -> None:
    """Have the `publisher` service put dead letter `seq` back (its admin API; GALLERY_<SERVICE>_URL, token);
    Conflict with the service's reason when it keeps the letter."""
    with client_for(publisher)() as service:
        answer = service.request("POST", f"/admin/dead-letters/{seq}/redeliver", answers=(409,))
    if answer.status_code == 409:
        raise Conflict(error_of(answer))


async def _redeliver(settings: GallerySettings, seqs: list[int], every: bool, consumer: str | None) -> list[DeadLetter]:
    async with _connected(settings) as bus, AsyncExitStack() as publishers:
        if seqs:
            letters = [await bus.dead_letter(seq) for seq in seqs]
        else:
            letters = await _latest(bus, REDELIVER_ALL_LIMIT, None if every else consumer)
        chosen = [(letter, publisher_for(letter)) for letter in letters]  # refuse before any is sent
        as_user: dict[str, EventBus] = {}
        kept: list[int] = []
        for letter, publisher in chosen:
            try:
                if can_publish_as(settings, publisher):
                    if publisher not in as_user:
                        as_user[publisher] = await publishers.enter_async_context(_connected(settings, user=publisher))
                    await as_user[publisher].redeliver(letter)
                    await bus.forget_dead_letter(letter.seq)
                    sender = ""
                else:  # the service takes it out too
                    await asyncio.to_thread(_ask_publisher, publisher, letter.seq)
                    sender = f", sent by the {publisher} service"
            except Conflict as exc:  # this one cannot go back (a forged copy, its event gone): the others still do
                say(f"kept dead letter {letter.seq}: {exc.message}")
                kept.append(letter.seq)
                continue
            say(
                f"put back dead letter {letter.seq} ({letter.original_subject}, event {(letter.event_id or '-')[:8]}) "
                f"for {letter.consumer}{sender}"
            )
        if kept:
            raise Conflict(f"{len(kept)} of {len(chosen)} dead letter(s) kept: {', '.join(map(str, kept))}")
        return letters


@app.command()
def redeliver(
    seqs: Annotated[
        list[int] | None, typer.Argument(help="The dead letters' numbers: the seq column of `gallery events dlq`.")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help=f"Every dead letter (the latest {REDELIVER_ALL_LIMIT:,}).")
    ] = False,
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", "-c", help="Every dead letter of this durable consumer (once it is fixed)."),
    ] = None,
) -> None:
    """Put dead letters back on their subject, once their cause is fixed (a project created, a service
    upgraded, a store back).

    Only the consumer that gave up on an event handles it again; the other consumers of its subject pass
    it over, having handled it the first time. A letter put back leaves the dead letters; if the consumer
    gives up again, a new dead letter says why. The event goes out as its publisher would send it
    (model.trained as the trainer): on a stack with NATS users, as that user where this machine has its
    credentials, else the publishing service sends it when asked (an admin token and its
    GALLERY_<SERVICE>_URL, as every other command that talks to a service). What goes out is the event as
    the stream stored it; a letter that cannot go back (its event no longer stored, a copy that differs
    from it) is kept and named, the others still go, and the command exits 1.
    """
    if sum((bool(seqs), every, consumer is not None)) != 1:
        fail("name the dead letters to put back (their seq from `gallery events dlq`), or give --consumer or --all")
    settings = cli_settings()
    letters = _run(_redeliver(settings, seqs or [], every, consumer), settings)
    if not letters:
        say("no dead letters")


def sample_trained(model: str) -> ModelTrained:
    """A well-formed `model.trained` payload whose artifact points at sample bytes nobody can load as a model."""
    run_id = f"sample-{uuid.uuid4().hex[:8]}"
    sample_bytes = f"sample {model} {run_id}".encode()
    return ModelTrained(
        model=model,
        run_id=run_id,
        artifacts={
            "onnx": ArtifactRef(
                uri=f"file:///samples/{model}/{run_id}/model.onnx",
                sha256=hashlib.sha256(sample_bytes).hexdigest(),
                size=len(sample_bytes),
                format="onnx",
            )
        },
        metrics={"val_accuracy": 0.97, "val_loss": 0.11},
        lineage=Lineage(training_job_id=run_id, config_hash=hashlib.sha256(b"sample").hexdigest()[:12]),
    )


async def _publish(settings: GallerySettings, payload: ModelTrained) -> CloudEvent[ModelTrained]:
    # only the trainer may publish model.trained: on a stack with NATS users this speaks as the trainer
    async with _connected(settings, user="trainer") as bus:
        # A span of its own, so the event carries a trace id that every later step continues.
        with tracer(CLI_SERVICE).start_as_current_span("gallery events publish-sample"):
            return await bus.publish(payload)


@app.command("publish-sample")
def publish_sample(
    model: Annotated[str, typer.Option(help="Model name to put in the event.")] = "demo",
) -> None:
    """Publish a sample model.trained event, to watch it travel with `gallery events tail`.

    Its artifact is not a model (file:///samples/...), so the registry's validation gate rejects it.
    Only the trainer may publish model.trained, so this uses the trainer's NATS credentials.
    """
    settings = cli_settings()
    try:
        payload = sample_trained(model)
    except ValidationError:
        fail(f"invalid model name {model!r}: letters, digits, '.', '_' or '-', starting with a letter or digit")
    configure_tracing(CLI_SERVICE, settings.otlp_endpoint)
    event = _run(_publish(settings, payload), settings)
    say(event_line(event))
