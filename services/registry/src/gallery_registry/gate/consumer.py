"""The gate on the bus: a durable consumer of `model.trained` feeding `ValidationGate.on_trained`.

The registry app's startup hook enters `gate_consumer(app, resources)`; the registry store must be
in `resources.extras[deps.STORE_KEY]` by then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from gallery_common.app import ServiceResources
from gallery_common.bus import PermanentError, TransientError
from gallery_common.consumer import Handler
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import CloudEvent, ModelTrained

from ..deps import STORE_KEY
from ..store import RegistryStore
from .validator import ValidationGate

GATE_DURABLE = "registry-gate"
GATE_STATE = "validation_gate"
ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 5
BACKOFF_SECONDS = (1.0, 5.0, 30.0)


def gate_handler(gate: ValidationGate) -> Handler:
    """The consumer's handler: outages are retried, events the registry can never take are dead-lettered."""

    async def handle(event: CloudEvent[Any]) -> None:
        try:
            await gate.on_trained(event)
        except Unavailable as exc:
            raise TransientError(exc.message) from exc
        except (InvalidRequest, Conflict, NotFound) as exc:
            raise PermanentError(exc.message) from exc

    return handle


@asynccontextmanager
async def gate_consumer(app: FastAPI, resources: ServiceResources) -> AsyncIterator[ValidationGate]:
    """Build the gate, consume `model.trained` while the app runs (when it has a bus), stop on exit.

    The gate is also put on `app.state.validation_gate` for the re-validation route.
    """
    registry = resources.extras.get(STORE_KEY)
    if not isinstance(registry, RegistryStore):
        raise RuntimeError(f"the registry store must be in resources.extras[{STORE_KEY!r}] before the gate starts")
    if resources.store is None:
        raise RuntimeError("the validation gate needs the artifact store: create the app with use_store=True")
    gate = ValidationGate(registry, resources.store, resources.bus)
    setattr(app.state, GATE_STATE, gate)
    consumer = None
    if resources.bus is not None:
        consumer = resources.bus.consumer(
            GATE_DURABLE,
            gate_handler(gate),
            events=[ModelTrained],
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            backoff=BACKOFF_SECONDS,
            batch=2,  # evaluations take seconds: fetch little ahead so another replica can take the rest
        )
        consumer.start()
    try:
        yield gate
    finally:
        if consumer is not None:
            await consumer.stop()
        if getattr(app.state, GATE_STATE, None) is gate:
            delattr(app.state, GATE_STATE)
