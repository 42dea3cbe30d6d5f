"""`model.degraded` → the version is marked for revalidation (tags), so people and tools can see it.

The monitor publishes `model.degraded` when a served version breaks an SLO or drifts; the deployer
rolls it back. The registry records why on the version: `needs_revalidation=true`, the kind, the
reason and when. `POST .../versions/{v}/validate` runs the gate again and clears the mark. Nothing
revalidates by itself: the same test split would give the same verdict, and a fresh `model.validated`
would put the rolled-back version straight back into a canary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from gallery_common.bus import EventBus
from gallery_common.consumer import PermanentError
from gallery_common.errors import NotFound
from gallery_common.events import CloudEvent, ModelDegraded
from gallery_common.telemetry import get_logger

from ..store import RegistryStore

DURABLE = "registry-degraded"
MARK = "needs_revalidation"
log = get_logger(__name__)


def degraded_tags(data: ModelDegraded, at: str) -> dict[str, str | None]:
    return {MARK: "true", "degraded_kind": data.kind, "degraded_reason": data.reason[:500], "degraded_at": at}


CLEARED: dict[str, str | None] = {MARK: None, "degraded_kind": None, "degraded_reason": None, "degraded_at": None}


def degraded_handler(store: RegistryStore) -> Any:
    async def handle(event: CloudEvent[Any]) -> None:
        data: ModelDegraded = event.data
        try:
            await anyio.to_thread.run_sync(
                store.merge_version_tags, data.model, data.version, degraded_tags(data, event.time.isoformat())
            )
        except NotFound as exc:
            raise PermanentError(exc.message) from exc
        log.warning("version_degraded", model=data.model, version=data.version, kind=data.kind, reason=data.reason)

    return handle


@asynccontextmanager
async def degraded_consumer(bus: EventBus | None, store: RegistryStore) -> AsyncIterator[None]:
    """Consume `model.degraded` while the app runs (when it has a bus)."""
    consumer = None
    if bus is not None:
        consumer = bus.consumer(DURABLE, degraded_handler(store), events=[ModelDegraded], batch=5)
        consumer.start()
    try:
        yield
    finally:
        if consumer is not None:
            await consumer.stop()
