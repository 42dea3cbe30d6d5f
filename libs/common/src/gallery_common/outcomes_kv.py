"""The gateways' outcome store: a JetStream key-value bucket of answered requests, one key per request id.

A gateway replica writes what it answered for a model whose route records outcomes; any replica joins
feedback to it, and the records outlive a gateway's restart. Entries expire after the bucket's TTL, and
once the bucket holds its maximum size the oldest give way (discard old): feedback comes for recent
answers. Each gateway brings the bucket to its own GALLERY_OUTCOME_TTL_S and GALLERY_OUTCOME_MAX_BYTES
when it opens it, so replicas should be given the same ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.kv import KeyValue

from .routes_kv import ensure_expiring_bucket

if TYPE_CHECKING:
    from .bus import EventBus

BUCKET = "outcomes"
STREAM = f"KV_{BUCKET}"
SUBJECTS = f"$KV.{BUCKET}.>"


async def ensure_outcome_bucket(bus: EventBus, ttl_s: float, max_bytes: int) -> KeyValue:
    """Create the outcome bucket or bind to it, with `ttl_s`, `max_bytes` and the oldest giving way when full."""
    return await ensure_expiring_bucket(
        bus,
        BUCKET,
        description="Model Gallery gateway answers awaiting feedback: one key per request id",
        ttl_s=ttl_s,
        max_bytes=max_bytes,
    )
