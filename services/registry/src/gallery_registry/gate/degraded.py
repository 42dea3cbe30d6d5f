"""`model.degraded` → the version is marked for revalidation (tags), so people and tools can see it.

The monitor publishes `model.degraded` when a served version breaks an SLO or drifts; the deployer
rolls it back. The registry records why on the version: `needs_revalidation=true`, the kind, the
reason and when. An optimized variant's quality breach (INT8 answering worse than the optimizer
measured) says nothing of the version's own model, which the gate judged: the deployer serves FP32
instead, and the version is not marked; should FP32 then break the SLO, that event marks it.
`POST .../versions/{v}/validate` runs the gate again and clears the mark. Nothing revalidates by
itself: the same test split would give the same verdict, and a fresh `model.validated` would put the
rolled-back version straight back into a canary.
"""

from __future__ import annotations

import anyio

from gallery_common.events import CloudEvent, ModelDegraded
from gallery_common.router import EventRouter
from gallery_common.telemetry import get_logger

from ..store import RegistryStore

DURABLE = "registry-degraded"
MARK = "needs_revalidation"
log = get_logger(__name__)


def degraded_tags(data: ModelDegraded, at: str) -> dict[str, str | None]:
    return {MARK: "true", "degraded_kind": data.kind, "degraded_reason": data.reason[:500], "degraded_at": at}


CLEARED: dict[str, str | None] = {MARK: None, "degraded_kind": None, "degraded_reason": None, "degraded_at": None}


def degraded_events(store: RegistryStore) -> EventRouter:
    """The durable consumer `registry-degraded`: each `model.degraded` marks its version (a version
    the registry does not hold is dead-lettered); an optimized variant's breach is logged, not marked."""
    events = EventRouter(DURABLE, batch=5)

    @events.on(ModelDegraded)
    async def degraded(data: ModelDegraded, event: CloudEvent[ModelDegraded]) -> None:
        if data.of_optimized_variant():
            log.warning(
                "variant_degraded", model=data.model, version=data.version, variant=data.variant, reason=data.reason
            )
            return
        tags = degraded_tags(data, event.time.isoformat())
        await anyio.to_thread.run_sync(store.merge_version_tags, data.model, data.version, tags)
        log.warning("version_degraded", model=data.model, version=data.version, kind=data.kind, reason=data.reason)

    return events
