"""Typed event routing: handlers registered per event type on one durable consumer, and the one
table that decides whether a domain error is retried or dead-lettered.

::

    events = EventRouter("deployer", ack_wait=180.0, batch=1)

    @events.on(ModelValidated)
    async def validated(data: ModelValidated) -> None: ...

    @events.on(ModelDegraded)  # a second parameter receives the CloudEvent envelope (id, time, trace)
    async def degraded(data: ModelDegraded, event: CloudEvent[ModelDegraded]) -> None: ...

    consumer = events.consumer(bus)  # a durable pull consumer of model.validated and model.degraded

Registering `Payload` itself subscribes to every lifecycle event; its handler gets the events no
more specific handler takes. Modelled on FastStream's NATS router (`@router.subscriber` with a
pydantic argument) and its `ExceptionMiddleware` (one place that turns exceptions into ack/nack/reject).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, overload

from .consumer import Consumer, PermanentError, TransientError
from .errors import Conflict, GalleryError, InvalidRequest, NotFound, Unavailable
from .events import PAYLOADS, CloudEvent, P, Payload

if TYPE_CHECKING:
    from .bus import EventBus

__all__ = ["DELIVERY_ERRORS", "EventRouter", "delivery_error"]

DataHandler = Callable[[P], Awaitable[None]]
EnvelopeHandler = Callable[[P, CloudEvent[P]], Awaitable[None]]
_Route = Callable[[CloudEvent[Any]], Awaitable[None]]

# What the consumer is told when a handler raises a domain error: TransientError redelivers the
# event after the next backoff delay, PermanentError dead-letters it at once with the message.
# An error found nowhere here (nor a PermanentError / TransientError itself) is unexpected: it is
# retried with its traceback logged, and dead-lettered after the consumer's last delivery.
DELIVERY_ERRORS: Mapping[type[GalleryError], type[PermanentError | TransientError]] = MappingProxyType(
    {
        Unavailable: TransientError,  # a dependency is down or busy: it may answer later
        InvalidRequest: PermanentError,  # the event asks for something the service refuses
        NotFound: PermanentError,  # it names something that does not exist
        Conflict: PermanentError,  # it contradicts what the service holds
    }
)


def delivery_error(exc: Exception) -> PermanentError | TransientError | None:
    """What the consumer should see for `exc`: itself when it already says retry or dead-letter, the
    `DELIVERY_ERRORS` translation of a domain error (its most specific class wins), else None."""
    if isinstance(exc, PermanentError | TransientError):
        return exc
    for cls in type(exc).__mro__:
        translated = DELIVERY_ERRORS.get(cls)
        if translated is not None:
            message = exc.message if isinstance(exc, GalleryError) else str(exc)
            return translated(message)
    return None


def _takes_envelope(handler: Callable[..., Awaitable[None]]) -> bool:
    positional = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) not in (1, 2):
        raise TypeError(f"an event handler takes (data) or (data, event); {handler!r} takes {len(positional)}")
    return len(positional) == 2


class _Registration(Generic[P]):
    """`EventRouter.on(event)`: registers the decorated handler and returns it unchanged."""

    def __init__(self, router: EventRouter, event: type[P]) -> None:
        self._router = router
        self._event = event

    @overload
    def __call__(self, handler: DataHandler[P]) -> DataHandler[P]: ...

    @overload
    def __call__(self, handler: EnvelopeHandler[P]) -> EnvelopeHandler[P]: ...

    def __call__(self, handler: Any) -> Any:
        self._router.add(self._event, handler)
        return handler


class EventRouter:
    """The handlers of one durable consumer, one per event type, and how the consumer runs.

    The consumer's subjects are those of the registered types (every lifecycle event when `Payload`
    is registered). An event comes to the handler of its payload's type; one whose type has no
    handler (a consumer configured by another version of the service) is dead-lettered. Domain errors
    are settled by `DELIVERY_ERRORS`; handlers raise them and never decide retry or dead-letter.
    """

    def __init__(
        self,
        durable: str,
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1.0, 5.0, 30.0),
        heartbeat_every: float | None = None,
        batch: int = 10,
        concurrency: int = 1,
    ) -> None:
        self.durable = durable
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.backoff = tuple(backoff)
        self.heartbeat_every = heartbeat_every
        self.batch = batch
        self.concurrency = concurrency
        self._routes: dict[type[Payload], _Route] = {}

    @property
    def events(self) -> list[type[Payload]] | None:
        """The event types the consumer asks the server for, in registration order; None for all."""
        return None if Payload in self._routes else list(self._routes)

    def on(self, event: type[P]) -> _Registration[P]:
        """Decorator: the handler of `event`, called as `handler(data)` or `handler(data, envelope)`."""
        return _Registration(self, event)

    @overload
    def add(self, event: type[P], handler: DataHandler[P]) -> None: ...

    @overload
    def add(self, event: type[P], handler: EnvelopeHandler[P]) -> None: ...

    def add(self, event: type[P], handler: Any) -> None:
        """Make `handler` the handler of `event` (a concrete payload class, or `Payload` for all)."""
        if event is not Payload and PAYLOADS.get(getattr(event, "event", "")) is not event:
            raise TypeError(f"{event.__name__} is not a lifecycle event; register one of them, or Payload for all")
        if event in self._routes:
            raise ValueError(f"{event.__name__} already has a handler on consumer {self.durable!r}")
        if _takes_envelope(handler):
            envelope_handler: EnvelopeHandler[Any] = handler

            async def route(envelope: CloudEvent[Any]) -> None:
                await envelope_handler(envelope.data, envelope)
        else:
            data_handler: DataHandler[Any] = handler

            async def route(envelope: CloudEvent[Any]) -> None:
                await data_handler(envelope.data)

        self._routes[event] = route

    async def dispatch(self, event: CloudEvent[Any]) -> None:
        """Hand `event` to its handler; what it raises reaches the consumer as retry or dead-letter."""
        route = self._routes.get(type(event.data)) or self._routes.get(Payload)
        if route is None:
            raise PermanentError(f"consumer {self.durable!r} has no handler for {event.nats_subject} events")
        try:
            await route(event)
        except Exception as exc:
            settled = delivery_error(exc)
            if settled is None or settled is exc:
                raise
            raise settled from exc

    def consumer(self, bus: EventBus) -> Consumer:
        """The durable pull consumer that feeds this router (not started: `start()` it, or enter it)."""
        if not self._routes:
            raise ValueError(f"consumer {self.durable!r} has no handlers")
        return bus.consumer(
            self.durable,
            self.dispatch,
            self.events,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            backoff=self.backoff,
            heartbeat_every=self.heartbeat_every,
            batch=self.batch,
            concurrency=self.concurrency,
        )
