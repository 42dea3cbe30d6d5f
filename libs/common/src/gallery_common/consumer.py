"""Durable pull consumers: every delivery ends acked, retried after a delay, or dead-lettered.

A consumer keeps pull requests open on the server (topped up at half its batch), so an event
reaches the handler as soon as it is stored and a burst is handled back to back. A message that
can never succeed is terminated and copied to `dlq.<subject>` with the reason in `Gallery-Error`.

Subjects are `model.<event>.<project>`. A consumer reads every project (`model.<event>.*`) unless it is
given `projects`: then it filters only theirs, and its durable is named for them (`<durable>_<project>`),
so it never shares a durable, nor a filter, with an installation-wide instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js import errors as js_errors
from opentelemetry.trace import Span, Status, StatusCode

from . import telemetry
from .errors import Unavailable
from .events import ANY_PROJECT, SUBJECT_PREFIX, CloudEvent, InvalidEvent, Payload, parse_event, subject_for

if TYPE_CHECKING:
    from .bus import EventBus

DLQ_PREFIX = "dlq."
MSG_ID_HEADER = "Nats-Msg-Id"
ERROR_HEADER = "Gallery-Error"
ORIGINAL_SUBJECT_HEADER = "Gallery-Original-Subject"
EVENT_ID_HEADER = "Gallery-Event-Id"
DELIVERIES_HEADER = "Gallery-Deliveries"
CONSUMER_HEADER = "Gallery-Consumer"
# on a dead letter: the sequence of the event it copies in the lifecycle stream, which a put-back sends
ORIGINAL_SEQ_HEADER = "Gallery-Original-Seq"
# on an event put back from the dead letters (`EventBus.redeliver`): the one durable consumer it is for
REDELIVER_TO_HEADER = "Gallery-Redeliver-To"

Handler = Callable[[CloudEvent[Any]], Awaitable[None]]

_PULL_EXPIRES = 30.0
_PULL_HEARTBEAT = 5.0
# No message and no server heartbeat for this long: the open pull requests are presumed lost.
_IDLE_LIMIT = 2 * _PULL_HEARTBEAT + 1.0
_RECOVER_PAUSE = 0.25
_DLQ_DEADLINE = 5.0
_STREAM_NOT_FOUND = 10059
_STOP = object()
_RESET = object()
_OUTCOMES = ("ack", "retry", "dead_letter", "invalid")

BACKLOG_EVERY = 15.0  # seconds between reports of a consumer's unfinished events (a Prometheus scrape's)
_UNFINISHED = telemetry.gauge(
    "bus_consumer_unfinished_events",
    "Events stored for a durable consumer and not acknowledged yet, waiting or in hand (every replica sharing"
    " the consumer reports the same number).",
    ("durable",),
)
_HANDLED = telemetry.counter(
    "bus_events_handled_total", "Deliveries settled by a consumer, by outcome.", ("durable", "outcome")
)
_HANDLE_SECONDS = telemetry.histogram(
    "bus_handle_duration_seconds",
    "Time from taking a delivery to settling it (ack, nak or term).",
    ("durable",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
log = telemetry.get_logger(__name__)


def scoped_durable(durable: str, projects: Sequence[str]) -> str:
    """The durable name of `durable` scoped to `projects` ('_' joins: neither a project nor a durable has one)."""
    return "_".join((durable, *sorted(projects))) if projects else durable


def filter_subjects(events: Sequence[type[Payload]] | None, projects: Sequence[str]) -> list[str]:
    """The consumer filters for `events` (all if None) in `projects` (all if empty).

    One project gets one filter (`model.<event>.<project>`, or `model.*.<project>` for several events):
    a project-bound NATS user may create a consumer only with the filter in the request subject, which
    nats-server compares to the configured one, and that form carries a single filter.
    """
    names = [e.event for e in events] if events else []
    if not projects:
        return [subject_for(name) for name in names] if names else [f"{SUBJECT_PREFIX}.>"]
    if len(names) == 1:
        return [subject_for(names[0], project) for project in sorted(projects)]
    return [subject_for(ANY_PROJECT, project) for project in sorted(projects)]


class TransientError(Exception):
    """The handler cannot finish now; the event is redelivered after the next backoff delay."""


class PermanentError(Exception):
    """The event can never be handled; it is dead-lettered at once, without retries."""


def _header_value(text: str, limit: int = 1024) -> str:
    # NATS headers are ASCII: a non-ASCII character (an ellipsis in a reason) garbles the whole header block
    return " ".join(text.split()).encode("ascii", "backslashreplace").decode()[:limit]


class Consumer:
    """A durable pull consumer on the lifecycle stream that feeds one handler, one event at a time, or up to
    `concurrency` at once for handlers that do not depend on the stream's order (each is settled on its own).

    Unexpected handler exceptions are treated like `TransientError`. A consumer runs once: after
    `stop()`, build a new one to consume again. `async with consumer:` starts it and stops it on exit.
    Typed handlers per event type, with domain errors settled in one table, come from `router.EventRouter`.
    """

    def __init__(
        self,
        bus: EventBus,
        stream: str,
        durable: str,
        handler: Handler,
        *,
        events: Sequence[type[Payload]] | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1.0, 5.0, 30.0),
        heartbeat_every: float | None = None,
        batch: int = 10,
        concurrency: int = 1,
        projects: Sequence[str] = (),
    ) -> None:
        if max_deliver < 1 or batch < 1 or concurrency < 1 or not backoff or ack_wait <= 0:
            raise ValueError("max_deliver, batch and concurrency must be >= 1, ack_wait > 0, backoff non-empty")
        self.durable = scoped_durable(durable, projects)
        self.projects = tuple(sorted(projects))
        self.subjects = filter_subjects(events, self.projects)
        # a filter over all events of a project also brings those this consumer does not handle
        self._wanted = frozenset(e.event for e in events) if events else None
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.backoff = tuple(backoff)
        self.heartbeat_every = heartbeat_every or ack_wait / 3
        self.batch = batch
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._bus = bus
        self._stream = stream
        self._handler = handler
        self._next_subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{self.durable}"
        self._pull_request = {"expires": int(_PULL_EXPIRES * 1e9), "idle_heartbeat": int(_PULL_HEARTBEAT * 1e9)}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._held: dict[str, Msg] = {}  # delivered to us and not settled yet, keyed by ack subject
        self._outstanding = 0  # requested from the server and not delivered yet
        self._last_activity = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._outcome = {outcome: _HANDLED.labels(self.durable, outcome) for outcome in _OUTCOMES}
        self._seconds = _HANDLE_SECONDS.labels(self.durable)
        self._reporting = False  # while running: its backlog goes on /metrics

    def consumer_config(self) -> api.ConsumerConfig:
        single = len(self.subjects) == 1
        return api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            # One delivery more than the handler gets: a message whose last attempt never settled
            # (the process died) then reaches the dead-letter stream instead of vanishing.
            max_deliver=self.max_deliver + 1,
            filter_subject=self.subjects[0] if single else None,
            filter_subjects=None if single else self.subjects,
        )

    async def ensure(self) -> None:
        """Create the durable consumer, or update it to this configuration.

        When the stream is gone (a new server with an empty store answered a reconnect), the bus's
        streams are created again first, so the consumer carries on instead of waiting for a restart.
        """
        try:
            info = await self._bus.js.add_consumer(self._stream, config=self.consumer_config())
        except js_errors.NotFoundError as exc:
            if exc.err_code != _STREAM_NOT_FOUND:
                raise
            log.warning("stream gone from the server; creating it again", durable=self.durable, stream=self._stream)
            await self._bus.ensure_streams()
            info = await self._bus.js.add_consumer(self._stream, config=self.consumer_config())
        self._report_backlog(info)

    def start(self) -> asyncio.Task[None]:
        """Run in a background task (created once) and return it."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"consumer:{self.durable}")
        return self._task

    async def stop(self) -> None:
        """Finish the event in hand, give back the ones fetched but not started, and return."""
        self._stopping = True
        self._queue.put_nowait(_STOP)
        if self._task is not None:
            await asyncio.wait([self._task])
        elif self._done is not None:
            await self._done.wait()

    async def __aenter__(self) -> Consumer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def notify_reconnected(self) -> None:
        """The connection came back: pull requests open before it dropped may be gone."""
        if self._done is not None and not self._done.is_set():
            self._queue.put_nowait(_RESET)

    async def run(self) -> None:
        """Handle deliveries until `stop()`; rides out nats-server restarts without losing events."""
        if self._stopping or self._done is not None:
            return
        self._done = asyncio.Event()
        sub: Subscription | None = None
        helpers: list[asyncio.Task[None]] = []
        self._reporting = True
        try:
            await self._bus.with_retry(self.ensure, what=f"create consumer {self.durable}")
            nc = self._bus.nc
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=self._on_message)
            helpers = [
                asyncio.create_task(self._heartbeat(), name=f"consumer-heartbeat:{self.durable}"),
                asyncio.create_task(self._watch_backlog(), name=f"consumer-backlog:{self.durable}"),
            ]
            self._last_activity = time.monotonic()
            await self._pull(inbox)
            await self._loop(inbox)
        finally:
            self._reporting = False
            for helper in helpers:
                helper.cancel()
            # a stopped consumer reports nothing: a replica that lost its leadership must not show a stale
            # backlog (another replica's consumer now reports it)
            with suppress(KeyError):
                _UNFINISHED.remove(self.durable)
            if sub is not None:
                await self._close_inbox(nc, sub)
            if self._in_flight:  # cancelled (or the connection closed) with deliveries in hand: they are given back
                for task in self._in_flight:
                    task.cancel()
                await asyncio.wait(list(self._in_flight))
            await self._give_back_held()
            self._done.set()

    async def _on_message(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        if not (msg.headers and api.Header.STATUS in msg.headers):
            self._held[msg.reply] = msg
            self._outstanding = max(0, self._outstanding - 1)
        self._queue.put_nowait(msg)

    async def _loop(self, inbox: str) -> None:
        queue = self._queue
        low_water = self.batch // 2
        while not self._stopping:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(_IDLE_LIMIT):
                        item = await queue.get()
                except TimeoutError:
                    if time.monotonic() - self._last_activity >= _IDLE_LIMIT:
                        await self._recover(inbox, "no word from the server")
                    continue
            if item is _STOP:
                break
            if item is _RESET:
                await self._recover(inbox, "reconnected")
                continue
            if item.reply not in self._held:
                await self._on_status(inbox, item)
                continue
            if self.concurrency == 1:
                await self._settle(item, inbox, low_water)
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._settle_alongside(item, inbox, low_water), name=f"handle:{self.durable}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        # stop() finishes the events in hand
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _settle(self, msg: Msg, inbox: str, low_water: int) -> None:
        try:
            await self._handle(msg)
        except nats_errors.ConnectionClosedError:
            raise
        except nats_errors.Error as exc:
            log.warning("could not settle a delivery; it returns after ack_wait", durable=self.durable, error=repr(exc))
        self._held.pop(msg.reply, None)
        if len(self._held) + self._outstanding <= low_water:
            await self._pull(inbox)

    async def _settle_alongside(self, msg: Msg, inbox: str, low_water: int) -> None:
        """One of up to `concurrency` deliveries in hand at once; a closed connection leaves it held, so it is
        given back (or returns after ack_wait) like any other unsettled delivery."""
        try:
            await self._settle(msg, inbox, low_water)
        except nats_errors.ConnectionClosedError as exc:
            log.warning("connection closed while settling a delivery", durable=self.durable, error=repr(exc))
        finally:
            self._slots.release()

    async def _pull(self, inbox: str) -> None:
        want = self.batch - len(self._held) - self._outstanding
        if want <= 0 or self._stopping:
            return
        self._outstanding += want
        try:
            await self._bus.nc.publish(self._next_subject, orjson.dumps({"batch": want, **self._pull_request}), inbox)
        except nats_errors.Error as exc:
            self._outstanding -= want
            log.warning("pull request failed", durable=self.durable, error=repr(exc))

    async def _on_status(self, inbox: str, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS, "")
        if status == api.StatusCode.CONTROL_MESSAGE:
            return
        pending = headers.get("Nats-Pending-Messages")
        self._outstanding = max(0, self._outstanding - int(pending)) if pending else 0
        if status == api.StatusCode.REQUEST_TIMEOUT:
            await self._pull(inbox)
        else:
            await self._recover(inbox, f"{status} {headers.get(api.Header.DESCRIPTION, '')}".strip())

    async def _recover(self, inbox: str, reason: str) -> None:
        """Re-create the consumer if the server lost it, then reopen the pull requests."""
        log.info("consumer resuming", durable=self.durable, reason=reason)
        self._outstanding = 0
        # A pause first, so a server that keeps refusing pull requests is not asked in a hot loop.
        await asyncio.sleep(_RECOVER_PAUSE)
        while not self._stopping:
            try:
                await self.ensure()
                break
            except (nats_errors.Error, Unavailable) as exc:
                log.warning("consumer not ready yet", durable=self.durable, error=repr(exc))
                await asyncio.sleep(_RECOVER_PAUSE)
        self._last_activity = time.monotonic()
        await self._pull(inbox)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            for msg in list(self._held.values()):
                with suppress(nats_errors.Error):
                    await msg.in_progress()

    async def _watch_backlog(self) -> None:
        """Report the consumer's unfinished events every BACKLOG_EVERY seconds, so a consumer that stopped
        getting through them shows (deploy/prometheus/rules.yml alerts on it)."""
        # run() cancels this task without waiting for it: the flag keeps a report still in flight off /metrics
        while self._reporting:
            await asyncio.sleep(BACKLOG_EVERY)
            with suppress(nats_errors.Error, TimeoutError):  # a lost connection: the next report tells
                self._report_backlog(await self._bus.js.consumer_info(self._stream, self.durable))

    def _report_backlog(self, info: api.ConsumerInfo) -> None:
        if self._reporting:
            _UNFINISHED.labels(self.durable).set((info.num_pending or 0) + (info.num_ack_pending or 0))

    async def _close_inbox(self, nc: Client, sub: Subscription) -> None:
        """Unsubscribe; when connected, drain first so what the server already sent is given back too."""
        with suppress(nats_errors.Error, TimeoutError):
            if nc.is_connected:
                async with asyncio.timeout(_DLQ_DEADLINE):
                    await sub.drain()
            else:
                await sub.unsubscribe()

    async def _give_back_held(self) -> None:
        """Nak what was fetched but not finished, so another instance gets it without waiting ack_wait."""
        held, self._held = list(self._held.values()), {}
        for msg in held:
            with suppress(nats_errors.Error):
                await msg.nak()

    async def _handle(self, msg: Msg) -> None:
        started = time.perf_counter()
        delivered = msg.metadata.num_delivered or 1
        redelivered_to = (msg.headers or {}).get(REDELIVER_TO_HEADER)
        if redelivered_to is not None and redelivered_to != self.durable:
            # put back for the consumer that gave up on it; every other one handled it the first time
            await msg.ack()
            self._outcome["ack"].inc()
            return
        try:
            event = parse_event(msg.data)
            _check_subject(event, msg.subject)
        except InvalidEvent as exc:
            await self._dead_letter(msg, str(exc), delivered, None)
            self._outcome["invalid"].inc()
            return
        if self._wanted is not None and event.event not in self._wanted:
            await msg.ack()
            self._outcome["ack"].inc()
            return
        if delivered > self.max_deliver:
            reason = f"no outcome after {self.max_deliver} deliveries: the handler's process died or hung"
            await self._dead_letter(msg, reason, delivered, event.id)
            self._outcome["dead_letter"].inc()
            return
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": self.durable,
            "messaging.message.id": event.id,
            "messaging.delivery_count": delivered,
        }
        name = f"handle {msg.subject}"
        with telemetry.continued_span(name, event.traceparent, event.tracestate, **attributes) as span:
            try:
                await self._handler(event)
            except Exception as exc:
                outcome = await self._failed(span, msg, exc, delivered, event.id)
            else:
                await msg.ack()
                outcome = "ack"
        self._seconds.observe(time.perf_counter() - started)
        self._outcome[outcome].inc()

    async def _failed(self, span: Span, msg: Msg, exc: Exception, delivered: int, event_id: str) -> str:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)))
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PermanentError):
            await self._dead_letter(msg, error, delivered, event_id)
            return "dead_letter"
        if delivered >= self.max_deliver:
            await self._dead_letter(msg, f"failed {delivered} times; last error {error}", delivered, event_id)
            return "dead_letter"
        delay = self.backoff[min(delivered, len(self.backoff)) - 1]
        log.warning(
            "handler failed, will retry",
            durable=self.durable,
            event_id=event_id,
            delivery=delivered,
            retry_in_s=delay,
            error=error,
            exc_info=not isinstance(exc, TransientError),
        )
        await msg.nak(delay=delay)
        return "retry"

    async def _dead_letter(self, msg: Msg, reason: str, delivered: int, event_id: str | None) -> None:
        """Copy the message to `dlq.<subject>` with why, then terminate it; if the copy fails, retry later."""
        event_id = event_id or (msg.headers or {}).get(MSG_ID_HEADER, "") or _claimed_id(msg.data)
        headers = {
            ERROR_HEADER: _header_value(reason),
            ORIGINAL_SUBJECT_HEADER: msg.subject,
            EVENT_ID_HEADER: _header_value(event_id, 256),
            DELIVERIES_HEADER: str(delivered),
            CONSUMER_HEADER: self.durable,
            ORIGINAL_SEQ_HEADER: str(msg.metadata.sequence.stream),
            # One copy per (consumer, stream message), however often this path runs for it.
            MSG_ID_HEADER: f"{self.durable}:{msg.metadata.sequence.stream}",
        }
        try:
            await self._bus.publish_raw(DLQ_PREFIX + msg.subject, msg.data, headers, deadline=_DLQ_DEADLINE)
        except Exception as exc:
            log.error("dead-letter copy failed, will retry", durable=self.durable, event_id=event_id, error=repr(exc))
            await msg.nak(delay=self.backoff[0])
            return
        await msg.term()
        log.warning("event dead-lettered", durable=self.durable, subject=msg.subject, event_id=event_id, reason=reason)


def _check_subject(event: CloudEvent[Any], subject: str) -> None:
    """Refuse an event stored on another subject than its own: above all one whose payload names another
    project than its subject, which would let a publisher allowed only in one project act in another."""
    if event.nats_subject == subject:
        return
    expected_prefix = subject_for(event.event, "")
    if subject.startswith(expected_prefix):
        subject_project = subject.removeprefix(expected_prefix)
        raise InvalidEvent(
            f"project mismatch: the payload's project {event.data.project!r} is not its subject's project"
            f" {subject_project!r} ({subject}); an event may act only in the project it was published in"
        )
    raise InvalidEvent(f"a {event.event} event of project {event.data.project!r} on subject {subject}")


def _claimed_id(data: bytes) -> str:
    """The `id` an invalid event claims to have, so its dead letter can be traced to its publisher."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    claimed = doc.get("id") if isinstance(doc, dict) else None
    return claimed if isinstance(claimed, str) else ""
