"""A gateway replica follows the routes bucket into its routing table and snapshot."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from pydantic import ValidationError

from gallery_common.bus import EventBus
from gallery_common.routes_kv import RouteChange, RoutesFollower
from gallery_common.telemetry import get_logger

from .metrics import ROUTES_REVISION
from .routes import ModelRoute, RouteBook

log = get_logger(__name__)


def follow_routes(bus: EventBus, book: RouteBook) -> RoutesFollower:
    """Start following the bucket into `book`, from the revision its snapshot holds."""
    ROUTES_REVISION.set(book.revision)

    async def apply(changes: Sequence[RouteChange], synced: bool) -> None:
        routes: dict[str, ModelRoute | None] = {}
        for change in changes:
            if change.value is None:
                routes[change.model] = None
                continue
            try:
                routes[change.model] = ModelRoute.model_validate_json(change.value)
            except ValidationError as exc:  # the bucket is written by the deployer only; keep what serves
                log.error("ignoring an invalid route", model=change.model, revision=change.revision, error=str(exc))
        revision = max((c.revision for c in changes), default=0)
        book.apply(routes, revision)  # the request path sees it from here on
        ROUTES_REVISION.set(book.revision)
        if changes:
            log.info("routes_applied", models=sorted(routes), revision=book.revision, synced=synced)
            try:
                await anyio.to_thread.run_sync(book.persist)
            except OSError as exc:  # the table in memory is right; the next change writes the snapshot again
                log.error("could not write the routes snapshot", path=str(book.path), error=repr(exc))

    return RoutesFollower(bus, apply, revision=book.revision).start()
