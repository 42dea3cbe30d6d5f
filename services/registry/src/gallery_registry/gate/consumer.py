"""The gate on the bus: the durable consumer `registry-gate` of `model.trained`, feeding `ValidationGate.on_trained`.

The registry app's startup enters `gate_events(gate).consumer(bus)`. Outages (Unavailable) are
retried and events the registry can never take (InvalidRequest, Conflict, NotFound) dead-lettered,
as `gallery_common.router.DELIVERY_ERRORS` decides for every consumer.
"""

from __future__ import annotations

from gallery_common.events import CloudEvent, ModelTrained
from gallery_common.router import EventRouter

from .validator import ValidationGate

GATE_DURABLE = "registry-gate"
ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 5
BACKOFF_SECONDS = (1.0, 5.0, 30.0)


def gate_events(gate: ValidationGate) -> EventRouter:
    """The gate's event handlers: each `model.trained` is registered, evaluated and announced once."""
    events = EventRouter(
        GATE_DURABLE,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=MAX_DELIVER,
        backoff=BACKOFF_SECONDS,
        batch=2,  # evaluations take seconds: fetch little ahead so another replica can take the rest
    )

    @events.on(ModelTrained)
    async def trained(_: ModelTrained, event: CloudEvent[ModelTrained]) -> None:
        await gate.on_trained(event)

    return events
