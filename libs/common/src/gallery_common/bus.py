"""The JetStream event bus: lifecycle events out, durable pull consumers in.

Events are CloudEvents on `model.<event>.<project>` in the MODEL_EVENTS stream, published with
`Nats-Msg-Id` = event id so that a retried or repeated publish is stored once. Messages a
consumer can never handle are copied to `dlq.<subject>` in DEAD_LETTERS (see `consumer.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import nats
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js import errors as js_errors

from . import cancel_safe, telemetry
from .consumer import (
    CONSUMER_HEADER,
    DELIVERIES_HEADER,
    DLQ_PREFIX,
    ERROR_HEADER,
    EVENT_ID_HEADER,
    MSG_ID_HEADER,
    ORIGINAL_SEQ_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REDELIVER_TO_HEADER,
    Consumer,
    Handler,
    PermanentError,
    TransientError,
)
from .errors import Conflict, InvalidRequest, NotFound, Unavailable
from .events import (
    ANY_PROJECT,
    SUBJECT_PREFIX,
    CloudEvent,
    InvalidEvent,
    P,
    Payload,
    make_event,
    parse_event,
    subject_for,
)
from .nats_auth import NatsCredentials, bound_project, credentials_for, project_scope
from .settings import GallerySettings

__all__ = [
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "Consumer",
    "DeadLetter",
    "EventBus",
    "PermanentError",
    "StreamLimits",
    "TransientError",
    "install_signal_handlers",
]

EVENTS_STREAM = "MODEL_EVENTS"
DLQ_STREAM = "DEAD_LETTERS"
DUPLICATE_WINDOW_SECONDS = 120.0
_STREAM_NAME_IN_USE = 10058
_INSUFFICIENT_STORAGE = 10047
_MIN_STREAM_BYTES = 1024 * 1024
_DRAIN_TIMEOUT_S = 5  # a stopping service flushes what it has; it must not hang on a stuck subscription
_ATTEMPT_TIMEOUT = 2.0

# Failures a reconnect or a restarted server heals; anything else is a bug or a refusal.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.StaleConnectionError,
    js_errors.NoStreamResponseError,
    js_errors.ServiceUnavailableError,
)

_PUBLISHED = telemetry.counter("bus_events_published_total", "Events stored in the lifecycle stream.", ("event",))
log = telemetry.get_logger(__name__)
T = TypeVar("T")


_DAY = 86_400.0


@dataclass(frozen=True)
class StreamLimits:
    """How much each stream keeps before it drops its oldest messages; 0 means no limit.

    Without limits a flood of bad events fills the server's disk, twice over: every consumer copies
    each one it cannot handle to the dead-letter stream, which is why that one keeps less.
    """

    events_max_age: float = 90 * _DAY  # seconds
    events_max_bytes: int = 1024**3
    dead_letters_max_age: float = 30 * _DAY
    dead_letters_max_bytes: int = 256 * 1024**2

    @classmethod
    def from_settings(cls, settings: GallerySettings) -> StreamLimits:
        return cls(
            events_max_age=settings.events_max_age_days * _DAY,
            events_max_bytes=settings.events_max_bytes,
            dead_letters_max_age=settings.dead_letters_max_age_days * _DAY,
            dead_letters_max_bytes=settings.dead_letters_max_bytes,
        )


def stream_configs(replicas: int = 1, limits: StreamLimits | None = None) -> list[api.StreamConfig]:
    """MODEL_EVENTS and DEAD_LETTERS as this code creates them: file storage, de-duplicating, limited."""
    limits = limits or StreamLimits()
    streams = (
        (EVENTS_STREAM, f"{SUBJECT_PREFIX}.>", limits.events_max_age, limits.events_max_bytes),
        (DLQ_STREAM, f"{DLQ_PREFIX}>", limits.dead_letters_max_age, limits.dead_letters_max_bytes),
    )
    return [
        api.StreamConfig(
            name=name,
            subjects=[subjects],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=max_age,  # nats.py: seconds, 0 for none
            max_bytes=max_bytes or -1,  # JetStream: -1 for none
            num_replicas=replicas,
        )
        for name, subjects, max_age, max_bytes in streams
    ]


def reconciled(current: api.StreamConfig, wanted: api.StreamConfig, *, keep_replicas: bool) -> api.StreamConfig:
    """`current` with what this code depends on set as in `wanted`, and everything else kept.

    An operator may have tuned limits, placement or compression since: those stay. A limit the stream
    has never had (an older version created it without) gets `wanted`'s.
    """
    unlimited_age = not current.max_age
    unlimited_bytes = current.max_bytes is None or current.max_bytes < 0
    return replace(
        current,
        subjects=wanted.subjects,
        duplicate_window=wanted.duplicate_window,
        no_ack=False,  # publishers wait for the stream's acknowledgement
        max_age=wanted.max_age if unlimited_age else current.max_age,
        max_bytes=wanted.max_bytes if unlimited_bytes else current.max_bytes,
        num_replicas=current.num_replicas if keep_replicas else wanted.num_replicas,
    )


async def _within_storage(apply: Callable[[api.StreamConfig], Awaitable[Any]], config: api.StreamConfig) -> None:
    """`apply(config)`; when the server cannot reserve the stream's max_bytes (its JetStream storage is
    smaller), halve them until it can, rather than leave the service unable to start."""
    while True:
        try:
            await apply(config)
            return
        except js_errors.APIError as exc:
            max_bytes = config.max_bytes or -1
            if exc.err_code != _INSUFFICIENT_STORAGE or max_bytes // 2 < _MIN_STREAM_BYTES:
                raise
            log.warning(
                "the server cannot reserve the stream's max_bytes; asking for half",
                stream=config.name,
                max_bytes=max_bytes,
                now=max_bytes // 2,
            )
            config = replace(config, max_bytes=max_bytes // 2)


@dataclass(frozen=True)
class DeadLetter:
    """A message a consumer gave up on, with why."""

    seq: int
    subject: str
    reason: str
    original_subject: str
    event_id: str | None
    deliveries: int | None
    consumer: str | None
    time: datetime | None
    data: bytes
    original_seq: int | None = None  # the copied event's sequence in MODEL_EVENTS

    @classmethod
    def from_raw(cls, raw: api.RawStreamMsg) -> DeadLetter:
        headers = raw.headers or {}
        subject = raw.subject or ""
        deliveries = headers.get(DELIVERIES_HEADER, "")
        consumer = headers.get(CONSUMER_HEADER)
        # letters from before the header: their message id is `<consumer>:<stream sequence>`
        seq = headers.get(ORIGINAL_SEQ_HEADER) or headers.get(MSG_ID_HEADER, "").removeprefix(f"{consumer}:")
        return cls(
            seq=raw.seq or 0,
            subject=subject,
            reason=headers.get(ERROR_HEADER, ""),
            original_subject=headers.get(ORIGINAL_SUBJECT_HEADER, subject.removeprefix(DLQ_PREFIX)),
            event_id=headers.get(EVENT_ID_HEADER) or None,
            deliveries=int(deliveries) if deliveries.isdigit() else None,
            consumer=consumer,
            time=raw.time,
            data=raw.data or b"",
            original_seq=int(seq) if consumer and seq.isdigit() else None,
        )


class EventBus:
    """One service's NATS connection: publishes lifecycle events and runs its consumers.

    ::

        async with EventBus(settings.nats_url, settings.service_name) as bus:
            bus.consumer("registry", on_trained, events=[ModelTrained]).start()
            await bus.publish(ModelValidated(model="iris", version=3))
    """

    # what new streams keep (`from_settings` sets the process's own); an immutable default
    stream_limits: StreamLimits = StreamLimits()
    _restoring: asyncio.Task[None] | None = None
    _keeps_streams = False  # this bus ensures the streams (a data-plane bus may not have the right to)
    # the projects this process's consumers read (GALLERY_PROJECT_SCOPE); empty: every project
    projects: tuple[str, ...] = ()

    def __init__(
        self,
        url: str,
        service: str | None = None,
        *,
        source: str | None = None,
        publish_deadline: float = 30.0,
        reconnect_wait: float = 0.5,
        stream_replicas: int | None = None,
        credentials: NatsCredentials | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        """`service` names the connection; events carry `source` (default `/modelgallery/<service>`).

        Given only a source, the service is its last path segment.
        """
        self.url = url
        self.service = service or (source.rstrip("/").rsplit("/", 1)[-1] if source else "gallery")
        self.source = source or f"/modelgallery/{self.service}"
        self.publish_deadline = publish_deadline
        self.reconnect_wait = reconnect_wait
        self.stream_replicas = stream_replicas
        self.credentials = credentials
        self.tls_ca = tls_ca
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._consumers: list[Consumer] = []
        self._closing = False
        self._last_error: str | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []

    @classmethod
    def from_settings(
        cls, settings: GallerySettings, *, user: str | None = None, service: str | None = None, **options: Any
    ) -> EventBus:
        """The bus of a process configured by `settings`, connecting as NATS user `user` (default: the
        service itself); `service` names the connection (default: the service's name)."""
        bus = cls(
            settings.nats_url,
            service or settings.service_name,
            stream_replicas=settings.stream_replicas,
            credentials=credentials_for(settings, user),
            tls_ca=settings.nats_tls_ca,
            **options,
        )
        bus.stream_limits = StreamLimits.from_settings(settings)
        bus.projects = project_scope(settings)
        return bus

    @property
    def project_bound(self) -> bool:
        """Whether this bus connects as a project-bound NATS user, which may not create or change streams."""
        return self.credentials is not None and bound_project(self.credentials.user) is not None

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("EventBus is not connected: call connect() first")
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("EventBus is not connected: call connect() first")
        return self._js

    def _dial(self) -> Awaitable[Client]:
        # nats.py keeps trying the servers (max_reconnect_attempts=-1) until it is connected or cancelled
        cancel_safe.install()  # nats.py waits with asyncio.wait_for, which loses cancels on Python 3.11
        auth: dict[str, Any] = {}
        if self.credentials is not None:
            auth.update(
                user=self.credentials.user,
                password=self.credentials.password,
                inbox_prefix=self.credentials.inbox_prefix,
            )
        if self.tls_ca is not None:
            auth["tls"] = ssl.create_default_context(cafile=str(self.tls_ca))
        return nats.connect(
            self.url.split(","),
            name=self.service,
            **auth,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
            connect_timeout=2,
            drain_timeout=_DRAIN_TIMEOUT_S,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    def _opened(self, nc: Client) -> None:
        self._nc = nc
        self._closing = False
        self._last_error = None
        self._js = nc.jetstream(timeout=_ATTEMPT_TIMEOUT)

    async def connect(self, *, ensure_streams: bool = True) -> EventBus:
        """Connect (waiting up to `publish_deadline` for the server) and ensure the streams.

        The connection reconnects forever, so a server restart is an outage, not an error.
        """
        try:
            async with asyncio.timeout(self.publish_deadline):
                nc = await self._dial()
            self._opened(nc)
        except TimeoutError:
            raise Unavailable(f"cannot reach NATS at {self.url} within {self.publish_deadline:g}s") from None
        if ensure_streams:
            await self.ensure_streams()
        return self

    def connect_in_background(self, *, ensure_streams: bool = True) -> asyncio.Task[None]:
        """Connect in a task that keeps trying for as long as NATS is unreachable, then ensure the streams.

        For the data plane (gateway, model servers), which must start and serve without the bus:
        until the task is done `is_connected` is False and publishing is the caller's to defer.
        """

        async def connect() -> None:
            self._opened(await self._dial())
            log.info("nats connected", url=self.url)
            while ensure_streams:
                try:
                    await self.ensure_streams()
                    break
                except Unavailable:
                    continue  # the server went away again; its own retries already waited

        self._connecting = asyncio.create_task(connect(), name=f"nats-connect:{self.service}")
        return self._connecting

    async def close(self) -> None:
        """Stop this bus's consumers (each finishes its event in hand), then drain the connection."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers))
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or nc.is_closed:
            return
        if nc.is_connected:
            try:
                await nc.drain()
            except RuntimeError as exc:  # the server went away as the drain wrote (a closed transport)
                log.warning("nats drain failed; closing", error=str(exc))
                with contextlib.suppress(RuntimeError):
                    await nc.close()
        else:
            await nc.close()

    async def __aenter__(self) -> EventBus:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_error(self, exc: Exception) -> None:
        # nats.py reports every failed reconnect attempt; one warning per distinct error until it heals
        error = repr(exc)
        if error == self._last_error:
            log.debug("nats error", error=error)
            return
        self._last_error = error
        log.warning("nats error", error=error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats disconnected", url=self.url)

    async def _on_reconnected(self) -> None:
        self._last_error = None
        log.info("nats reconnected", url=self.url)
        # the server may be a new one with an empty store: put the streams back before anyone publishes
        restoring = self._restoring is not None and not self._restoring.done()
        if self._keeps_streams and self._js is not None and not restoring:
            self._restoring = asyncio.create_task(self._restore_streams(), name=f"nats-streams:{self.service}")
        for consumer in self._consumers:
            consumer.notify_reconnected()
        for listener in self._reconnect_listeners:
            listener()

    def on_reconnected(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the event loop, without waiting) after each reconnect."""
        self._reconnect_listeners.append(listener)

    async def _restore_streams(self) -> None:
        try:
            await self.ensure_streams()
        except Exception as exc:  # a background task: its failure is logged, the next reconnect tries again
            if not self._closing:
                log.warning("could not restore the streams after a reconnect", error=repr(exc))

    async def with_retry(self, op: Callable[[], Awaitable[T]], *, what: str, deadline: float | None = None) -> T:
        """Run `op`, retrying failures a reconnect heals with backoff; raise Unavailable after `deadline` s."""
        limit = self.publish_deadline if deadline is None else deadline
        give_up = time.monotonic() + limit
        delay = 0.05
        while True:
            try:
                return await op()
            except TRANSIENT_ERRORS as exc:
                if time.monotonic() + delay > give_up:
                    raise Unavailable(f"{what}: NATS unavailable for {limit:g}s ({type(exc).__name__})") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def ensure_streams(self) -> None:
        """Create MODEL_EVENTS and DEAD_LETTERS with `stream_limits`, or fix what this code needs on
        existing ones (subjects, duplicate window, acknowledgements) and keep the rest as it is.

        Replicas: `stream_replicas` when this bus was given one (the services pass
        GALLERY_STREAM_REPLICAS); otherwise a new stream gets 1 and an existing one keeps its count,
        so a CLI run never shrinks a clustered stream. Storage and retention cannot change in place:
        a stream with others is used as it is, with an error in the log.
        """
        if self.project_bound:
            await self._expect_streams()
            return
        self._keeps_streams = True
        for config in stream_configs(self.stream_replicas or 1, self.stream_limits):

            async def ensure(config: api.StreamConfig = config) -> None:
                try:
                    await _within_storage(self.js.add_stream, config)
                    return
                except js_errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                current = (await self.js.stream_info(str(config.name))).config
                wanted = reconciled(current, config, keep_replicas=self.stream_replicas is None)
                for setting in ("storage", "retention"):
                    if getattr(current, setting) != getattr(config, setting):
                        log.error(
                            "stream differs in a setting that cannot change in place; recreate it to fix",
                            stream=config.name,
                            setting=setting,
                            found=str(getattr(current, setting)),
                            expected=str(getattr(config, setting)),
                        )
                if wanted != current:
                    await _within_storage(self.js.update_stream, wanted)

            await self.with_retry(ensure, what=f"ensure stream {config.name}")

    async def _expect_streams(self) -> None:
        """Check that the streams exist; a project-bound user may read their state only."""
        for name in (EVENTS_STREAM, DLQ_STREAM):

            async def check(name: str = name) -> None:
                try:
                    await self.js.stream_info(name)
                except js_errors.NotFoundError:
                    raise Unavailable(
                        f"stream {name} does not exist and project-bound user {self.credentials.user!r}"  # type: ignore[union-attr]
                        " may not create it: start an installation-wide service first"
                    ) from None

            await self.with_retry(check, what=f"find stream {name}")

    async def publish(self, payload: P, *, event_id: str | None = None) -> CloudEvent[P]:
        """Publish `payload` as a new event from this service and return the event as sent.

        The current trace rides along in `traceparent`. Reconnects and server restarts are
        retried for up to `publish_deadline` seconds (then Unavailable); since the event id is
        the JetStream message id, a retry or a repeat with the same `event_id` is stored once.
        """
        event = make_event(payload, self.source, event_id=event_id)
        await self.publish_event(event)
        return event

    async def publish_event(self, event: CloudEvent[Any]) -> None:
        """Publish an already built event; like `publish`, it adds the current trace if it has none."""
        if event.traceparent is None:
            carrier = telemetry.inject_trace_context()
            event.traceparent = carrier.get("traceparent")
            event.tracestate = carrier.get("tracestate")
        await self.publish_raw(event.nats_subject, event.to_json(), {MSG_ID_HEADER: event.id})
        _PUBLISHED.labels(event.event).inc()

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        *,
        deadline: float | None = None,
    ) -> api.PubAck:
        """Store arbitrary bytes on a stream subject, with `publish`'s retries; no validation at all."""

        async def attempt() -> api.PubAck:
            return await self.js.publish(subject, data, timeout=_ATTEMPT_TIMEOUT, headers=headers)

        return await self.with_retry(attempt, what=f"publish to {subject}", deadline=deadline)

    def consumer(
        self,
        durable: str,
        handler: Handler,
        events: Sequence[type[Payload]] | None = None,
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1.0, 5.0, 30.0),
        heartbeat_every: float | None = None,
        batch: int = 10,
        concurrency: int = 1,
    ) -> Consumer:
        """A durable pull consumer named `durable` that feeds `handler` the given event types (all if None).

        A handler that raises `TransientError` (or anything unexpected) is retried after
        `backoff[n]` seconds, up to `max_deliver` deliveries in all; `PermanentError`, an event that
        fails validation, or the last failed delivery is dead-lettered. While a handler runs, the
        message is kept alive with `in_progress()` every `heartbeat_every` s (default ack_wait / 3).
        `batch` is how many messages are fetched ahead; keep it small when handlers are slow. `concurrency`
        is how many are handled at once (1: one after another, in stream order).
        Call `run()` or `start()`; `close()` stops it.
        """
        consumer = Consumer(
            self,
            EVENTS_STREAM,
            durable,
            handler,
            events=events,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            backoff=backoff,
            heartbeat_every=heartbeat_every,
            batch=batch,
            concurrency=concurrency,
            projects=self.projects,
        )
        self._consumers.append(consumer)
        return consumer

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent `limit` dead letters, oldest first."""
        return [DeadLetter.from_raw(raw) for raw in await self._stored(DLQ_STREAM, f"{DLQ_PREFIX}>", limit)]

    async def dead_letter(self, seq: int) -> DeadLetter:
        """The dead letter stored at `seq`; NotFound when there is none (never was, or put back)."""
        try:
            raw = await self.with_retry(lambda: self.js.get_msg(DLQ_STREAM, seq=seq), what=f"read dead letter {seq}")
        except js_errors.NotFoundError:
            raise NotFound(f"no dead letter {seq}") from None
        return DeadLetter.from_raw(raw)

    async def redeliver(self, letter: DeadLetter) -> api.PubAck:
        """Put a dead letter back on its original subject for the consumer that gave up on it (the
        other consumers of that subject pass it over: they handled it the first time);
        `forget_dead_letter` then takes it out of the dead letters. This bus must be a user allowed to
        publish that subject. Putting the same letter back twice stores it once (its message id).

        What is sent is the event as the lifecycle stream stored it (`original_event`), never the
        letter's own bytes: any service may write a dead letter, only the publisher its events."""
        if not letter.consumer:
            raise InvalidRequest(f"dead letter {letter.seq} names no consumer to give it back to")
        data = await self.original_event(letter)
        headers = {MSG_ID_HEADER: f"redelivery:{letter.seq}", REDELIVER_TO_HEADER: letter.consumer}
        return await self.publish_raw(letter.original_subject, data, headers)

    async def original_event(self, letter: DeadLetter) -> bytes:
        """The bytes of the event `letter` copies, read from MODEL_EVENTS; Conflict when the letter names
        none, the stream no longer holds it, or it is not what the letter says it copied."""
        seq = letter.original_seq
        if seq is None:
            raise Conflict(f"dead letter {letter.seq} does not name the event it copies, so it cannot be sent")
        try:
            raw = await self.with_retry(lambda: self.js.get_msg(EVENTS_STREAM, seq=seq), what=f"read event {seq}")
        except js_errors.NotFoundError:
            raise Conflict(
                f"dead letter {letter.seq}: its event (#{seq} of {EVENTS_STREAM}) is no longer stored, and a "
                "letter's copy alone is not sent"
            ) from None
        if raw.subject != letter.original_subject or (raw.data or b"") != letter.data:
            raise Conflict(
                f"dead letter {letter.seq} does not match the event it names (#{seq} of {EVENTS_STREAM}, "
                f"{raw.subject}): not sent"
            )
        return raw.data or b""

    async def forget_dead_letter(self, seq: int) -> None:
        """Take dead letter `seq` out of the dead letters (after it was put back)."""
        with contextlib.suppress(js_errors.NotFoundError):
            await self.with_retry(lambda: self.js.delete_msg(DLQ_STREAM, seq), what=f"delete dead letter {seq}")

    async def stored_events(self, project: str | None = None) -> list[CloudEvent[Any]]:
        """Every lifecycle event the stream holds at the time of the call (of `project` only, when
        given), oldest first.

        Unlike `tail`, it ends: it reads up to the stream's last sequence as the call finds it.
        Messages that are not valid events are skipped (they are in the dead-letter stream), and so are
        dead letters put back (`redeliver`): the event is there already, as first published.
        """
        events: list[CloudEvent[Any]] = []
        subject = subject_for(ANY_PROJECT, project) if project else f"{SUBJECT_PREFIX}.>"
        for raw in await self._stored(EVENTS_STREAM, subject):
            if REDELIVER_TO_HEADER in (raw.headers or {}):
                continue
            try:
                events.append(parse_event(raw.data or b""))
            except InvalidEvent:
                continue
        return events

    async def _stored(self, stream: str, subject: str, limit: int | None = None) -> list[api.RawStreamMsg]:
        """The messages of `stream` on `subject` up to its last sequence now (the last `limit` of them)."""
        state = (await self.js.stream_info(stream)).state
        seq = max(state.first_seq, 1 if limit is None else state.last_seq - limit + 1, 1)
        out: list[api.RawStreamMsg] = []
        while seq <= state.last_seq and (limit is None or len(out) < limit):
            try:
                raw = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                break
            out.append(raw)
            seq = (raw.seq or seq) + 1
        return out

    async def tail(
        self, subjects: str = f"{SUBJECT_PREFIX}.>", deliver: Literal["new", "all"] = "new"
    ) -> AsyncIterator[CloudEvent[Any]]:
        """Yield events on `subjects` as they are stored (from the start of the stream with "all").

        Uses an ordered ephemeral consumer, so nothing is acked and no durable state is left
        behind. Messages that are not valid events are skipped (they are in the dead-letter stream).
        """
        policy = api.DeliverPolicy.NEW if deliver == "new" else api.DeliverPolicy.ALL
        sub = await self.js.subscribe(subjects, ordered_consumer=True, deliver_policy=policy)
        try:
            async for msg in sub.messages:
                try:
                    yield parse_event(msg.data)
                except InvalidEvent as exc:
                    log.warning("skipping invalid event", subject=msg.subject, reason=str(exc))
        finally:
            await sub.unsubscribe()


def install_signal_handlers(
    stop: Callable[[], Awaitable[object]],
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """On the first SIGTERM/SIGINT, run `stop()` (e.g. `Consumer.stop`); a second one kills as usual."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Future[object]] = set()

    def on_signal() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)
        task = asyncio.ensure_future(stop())
        pending.add(task)
        task.add_done_callback(pending.discard)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)


class BusBridge:
    """Lets a worker thread publish on the event loop that owns the bus connection.

    The event carries the worker thread's trace: the loop's context does not share it.
    """

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        self.bus = bus
        self.loop = loop

    def publish(self, payload: Payload, event_id: str | None = None) -> CloudEvent[Any]:
        event = make_event(payload, self.bus.source, event_id=event_id)
        carrier = telemetry.inject_trace_context()
        event.traceparent, event.tracestate = carrier.get("traceparent"), carrier.get("tracestate")
        future = asyncio.run_coroutine_threadsafe(self.bus.publish_event(event), self.loop)
        # publish_event() gives up by itself after publish_deadline; the margin covers scheduling only
        future.result(timeout=self.bus.publish_deadline + 10)
        return event
