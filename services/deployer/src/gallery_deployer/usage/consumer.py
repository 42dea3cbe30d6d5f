"""`model.usage` reports from the gateways → the usage store, on the durable consumer `deployer-usage`.

Every deployer replica runs it (they share the durable consumer); the store applies each report once.
"""

from __future__ import annotations

import anyio

from gallery_common.events import CloudEvent, ModelUsage
from gallery_common.router import EventRouter

from .records import UsageStore

DURABLE = "deployer-usage"


def usage_events(store: UsageStore) -> EventRouter:
    """The consumer that adds each gateway report to the store (a redelivered one is added once)."""
    events = EventRouter(DURABLE, ack_wait=30.0, batch=50)

    @events.on(ModelUsage)
    async def usage(data: ModelUsage, event: CloudEvent[ModelUsage]) -> None:
        await anyio.to_thread.run_sync(store.apply, event.id, data)

    return events
