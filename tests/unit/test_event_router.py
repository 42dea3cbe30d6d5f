"""The typed event router: dispatch by event type, the consumer it asks for, and the one error table."""

from __future__ import annotations

from typing import Any

import pytest

from gallery_common.consumer import Consumer, PermanentError, TransientError
from gallery_common.errors import (
    ArtifactNotFound,
    Conflict,
    GalleryError,
    IntegrityError,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from gallery_common.events import (
    ArtifactRef,
    CloudEvent,
    ModelDegraded,
    ModelTrained,
    ModelValidated,
    Payload,
    VersionedPayload,
    make_event,
)
from gallery_common.router import EventRouter, delivery_error

SOURCE = "/modelgallery/test"


def validated(version: int = 1) -> CloudEvent[ModelValidated]:
    return make_event(ModelValidated(model="iris", version=version), SOURCE, event_id=f"validated-{version}")


def degraded() -> CloudEvent[ModelDegraded]:
    return make_event(ModelDegraded(model="iris", version=2, kind="slo", reason="p99 250 ms"), SOURCE)


def trained() -> CloudEvent[ModelTrained]:
    weights = ArtifactRef(uri="file:///w.safetensors", sha256="ab" * 32)
    return make_event(ModelTrained(model="iris", run_id="run-1", artifacts={"weights": weights}), SOURCE)


async def test_each_event_reaches_the_handler_of_its_type_with_the_typed_payload() -> None:
    events = EventRouter("test")
    seen: list[tuple[str, Any]] = []

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None:
        seen.append(("validated", data))

    @events.on(ModelDegraded)
    async def on_degraded(data: ModelDegraded) -> None:
        seen.append(("degraded", data))

    first, second = validated(), degraded()
    await events.dispatch(second)
    await events.dispatch(first)

    assert seen == [("degraded", second.data), ("validated", first.data)]
    assert isinstance(seen[0][1], ModelDegraded) and seen[0][1].kind == "slo"


async def test_a_handler_with_a_second_parameter_gets_the_envelope_too() -> None:
    events = EventRouter("test")
    seen: list[tuple[int, str]] = []

    async def on_validated(data: ModelValidated, event: CloudEvent[ModelValidated]) -> None:
        seen.append((data.version, event.id))

    events.add(ModelValidated, on_validated)
    await events.dispatch(validated(3))

    assert seen == [(3, "validated-3")]


def test_the_consumer_subscribes_to_the_registered_types_only() -> None:
    events = EventRouter("test", ack_wait=90.0, max_deliver=3, backoff=(0.5,), batch=1)

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None: ...

    @events.on(ModelDegraded)
    async def on_degraded(data: ModelDegraded) -> None: ...

    consumer = events.consumer(FakeBus())  # type: ignore[arg-type]
    assert consumer.durable == "test"
    assert consumer.subjects == ["model.validated.*", "model.degraded.*"]
    assert (consumer.ack_wait, consumer.max_deliver, consumer.backoff, consumer.batch) == (90.0, 3, (0.5,), 1)


async def test_payload_subscribes_to_every_event_and_takes_what_no_other_handler_does() -> None:
    events = EventRouter("timeline")
    seen: list[str] = []

    @events.on(Payload)
    async def record(data: Payload, event: CloudEvent[Any]) -> None:
        seen.append(f"any:{event.event}")

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None:
        seen.append("validated")

    for event in (trained(), validated(), degraded()):
        await events.dispatch(event)

    assert seen == ["any:trained", "validated", "any:degraded"]
    assert events.consumer(FakeBus()).subjects == ["model.>"]  # type: ignore[arg-type]


async def test_an_event_type_without_a_handler_is_dead_lettered_with_the_reason() -> None:
    events = EventRouter("deployer")

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None: ...

    with pytest.raises(
        PermanentError, match=r"^consumer 'deployer' has no handler for model\.degraded\.default events$"
    ):
        await events.dispatch(degraded())


def test_handlers_are_checked_when_registered() -> None:
    events = EventRouter("test")

    async def on_validated(data: ModelValidated) -> None: ...

    events.add(ModelValidated, on_validated)
    with pytest.raises(ValueError, match="ModelValidated already has a handler on consumer 'test'"):
        events.add(ModelValidated, on_validated)
    with pytest.raises(TypeError, match="VersionedPayload is not a lifecycle event"):
        events.add(VersionedPayload, on_validated)  # type: ignore[arg-type]

    async def too_many(data: ModelDegraded, event: CloudEvent[ModelDegraded], extra: int) -> None: ...

    with pytest.raises(TypeError, match=r"takes \(data\) or \(data, event\)"):
        events.add(ModelDegraded, too_many)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="consumer 'empty' has no handlers"):
        EventRouter("empty").consumer(FakeBus())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (Unavailable("the registry does not answer"), TransientError),
        (InvalidRequest("no onnx artifact"), PermanentError),
        (NotFound("no version 5"), PermanentError),
        (ArtifactNotFound("no such artifact"), PermanentError),
        (Conflict("already has a canary"), PermanentError),
    ],
)
async def test_domain_errors_reach_the_consumer_as_retry_or_dead_letter_with_their_message(
    raised: GalleryError, expected: type[Exception]
) -> None:
    events = EventRouter("test")

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None:
        raise raised

    with pytest.raises(expected) as caught:
        await events.dispatch(validated())

    # the consumer's dead-letter reason is "<class>: <message>", as when handlers translated it themselves
    assert type(caught.value) is expected and str(caught.value) == raised.message
    assert caught.value.__cause__ is raised


class Refused(PermanentError):
    """A handler's own kind of PermanentError (the deployer's registry check has one)."""


@pytest.mark.parametrize("raised", [TransientError("busy"), Refused("refused: forged")])
async def test_a_handler_that_says_retry_or_dead_letter_itself_is_passed_through(raised: Exception) -> None:
    events = EventRouter("test")

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None:
        raise raised

    with pytest.raises(type(raised)) as caught:
        await events.dispatch(validated())
    assert caught.value is raised  # its own class names it in the dead letter ("Refused: ...")


@pytest.mark.parametrize("raised", [RuntimeError("disk on fire"), IntegrityError("sha256 mismatch")])
async def test_unexpected_errors_are_left_to_the_consumer_retried_with_their_traceback(raised: Exception) -> None:
    events = EventRouter("test")

    @events.on(ModelValidated)
    async def on_validated(data: ModelValidated) -> None:
        raise raised

    with pytest.raises(type(raised)) as caught:
        await events.dispatch(validated())
    assert caught.value is raised
    assert delivery_error(raised) is None


class FakeBus:
    """The one thing the router asks of a bus: a consumer with its settings."""

    def consumer(self, durable: str, handler: Any, events: Any = None, **options: Any) -> Consumer:
        return Consumer(self, "MODEL_EVENTS", durable, handler, events=events, **options)  # type: ignore[arg-type]
