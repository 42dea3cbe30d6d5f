"""Lifecycle events → rollouts: `model.validated`, `model.optimized` and `model.degraded`.

Nothing moves on an event's word alone: the registry confirms the version is validated and the
artifact is the one it recorded (`provenance.py`). Each handler is idempotent: an event id already
handled is skipped, and the controller's own checks (a version already serving, an artifact already
rolled, a version already rolled back) make a replay after a crash mid-work finish the work once.
"""

from __future__ import annotations

from typing import Any

import anyio

from gallery_common.bus import EventBus
from gallery_common.consumer import Consumer, PermanentError
from gallery_common.errors import Conflict, NotFound
from gallery_common.events import CloudEvent, ModelDegraded, ModelOptimized, ModelValidated
from gallery_common.telemetry import get_logger

from ..runtime.base import deployment_id
from .controller import Controller
from .provenance import Provenance
from .records import SERVING, Stage

DURABLE = "deployer"
ACK_WAIT_SECONDS = 180.0
log = get_logger(__name__)


async def on_validated(controller: Controller, data: ModelValidated) -> None:
    onnx = data.artifacts.get("onnx")
    if onnx is None:
        raise PermanentError(f"model.validated for {data.model}:{data.version} carries no onnx artifact")
    await Provenance(controller.registry).confirm_validated(data.model, data.version, onnx)
    earlier = await anyio.to_thread.run_sync(controller.store.get, deployment_id(data.model, data.version, ""))
    if earlier is not None and earlier.stage == Stage.rolled_back:
        # taken out of service once (a failed canary, a degradation): only a person brings it back
        log.info("validated_version_was_rolled_back", model=data.model, version=data.version, reason=earlier.reason)
        return
    serving = await anyio.to_thread.run_sync(controller.store.for_model, data.model, SERVING)
    if any(r.version >= data.version for r in serving):
        log.info("validated_version_not_newer", model=data.model, version=data.version)
        return
    current = next((r for r in serving if r.stage == Stage.canary), None)
    if current is not None:
        await controller.rollback(data.model, f"superseded by version {data.version}", version=current.version)
    await controller.deploy(
        data.model,
        data.version,
        onnx,
        validation_split=data.artifacts.get("validation_split"),
        reason="model.validated",
    )


async def on_optimized(controller: Controller, data: ModelOptimized) -> None:
    await Provenance(controller.registry).confirm_variant(data.model, data.version, data.recommended_artifact)
    await controller.roll_variant(data.model, data.version, data.recommended, data.recommended_artifact)


async def on_degraded(controller: Controller, data: ModelDegraded) -> None:
    try:
        await controller.rollback(data.model, f"{data.kind}: {data.reason}", version=data.version)
    except (NotFound, Conflict) as exc:
        # the version no longer serves (already rolled back) or has nothing to fall back to
        log.warning("degraded_not_rolled_back", model=data.model, version=data.version, reason=exc.message)


def handler(controller: Controller) -> Any:
    async def handle(event: CloudEvent[Any]) -> None:
        if await anyio.to_thread.run_sync(controller.store.was_handled, event.id):
            return
        data = event.data
        if isinstance(data, ModelValidated):
            await on_validated(controller, data)
        elif isinstance(data, ModelOptimized):
            await on_optimized(controller, data)
        elif isinstance(data, ModelDegraded):
            await on_degraded(controller, data)
        await anyio.to_thread.run_sync(controller.store.mark_handled, event.id)

    return handle


def start_consumer(bus: EventBus, controller: Controller) -> Consumer:
    consumer = bus.consumer(
        DURABLE,
        handler(controller),
        events=[ModelValidated, ModelOptimized, ModelDegraded],
        ack_wait=ACK_WAIT_SECONDS,
        batch=1,
    )
    consumer.start()
    return consumer
