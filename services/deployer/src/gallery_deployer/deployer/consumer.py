"""Lifecycle events → the controller: `model.validated`, `model.optimized` and `model.degraded`.

A thin adapter: what each event does to a model's rollout is the controller's decision. Nothing moves
on an event's word alone: the registry first confirms the version is validated and the artifact is
the one it recorded (`provenance.py`). Each event id is handled once; the controller's own checks (a
version already serving, an artifact already rolled, a version already rolled back) make a replay
after a crash mid-work finish the work once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from gallery_common.errors import InvalidRequest
from gallery_common.events import CloudEvent, ModelDegraded, ModelOptimized, ModelValidated, P
from gallery_common.router import EventRouter

from .controller import Controller
from .provenance import Provenance

DURABLE = "deployer"
ACK_WAIT_SECONDS = 180.0


def rollout_events(controller: Controller, ack_wait: float = ACK_WAIT_SECONDS) -> EventRouter:
    """The durable consumer `deployer`, one event at a time (a rollout takes minutes, kept alive by a
    heartbeat every third of `ack_wait`; an event whose deployer died comes back after `ack_wait`)."""
    events = EventRouter(DURABLE, ack_wait=ack_wait, batch=1)
    provenance = Provenance(controller.registry)

    def once(handler: Callable[[P], Awaitable[None]]) -> Callable[[P, CloudEvent[P]], Awaitable[None]]:
        """`handler`, skipped for an event id handled before (a redelivery or a replay)."""

        async def handle(data: P, event: CloudEvent[P]) -> None:
            if await anyio.to_thread.run_sync(controller.store.was_handled, event.id):
                return
            await handler(data)
            await anyio.to_thread.run_sync(controller.store.mark_handled, event.id)

        return handle

    @events.on(ModelValidated)
    @once
    async def validated(data: ModelValidated) -> None:
        onnx = data.artifacts.get("onnx")
        if onnx is None:
            raise InvalidRequest(f"model.validated for {data.model}:{data.version} carries no onnx artifact")
        await provenance.confirm_validated(data.model, data.version, onnx)
        await controller.deploy_validated(
            data.model,
            data.version,
            onnx,
            validation_split=data.artifacts.get("validation_split"),
            explainer=data.artifacts.get("explainer"),
            project=data.project,
        )

    @events.on(ModelOptimized)
    @once
    async def optimized(data: ModelOptimized) -> None:
        await controller.remember_variants(data)
        choice = await controller.variant_for(data)
        if await controller.withdrawn(data.model, data.version, choice.variant):
            return
        await provenance.confirm_variant(data.model, data.version, choice.artifact)
        await controller.roll_variant(data.model, data.version, choice.variant, choice.artifact, choice.reason)

    @events.on(ModelDegraded)
    @once
    async def degraded(data: ModelDegraded) -> None:
        await controller.answer_degraded(data, provenance.confirm_variant)

    return events
