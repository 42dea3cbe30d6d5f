"""The model server's NATS side: request/reply inference and batch jobs, over one bus connection.

It connects in the background, so HTTP serving starts at once and does not depend on NATS; while
NATS is unreachable it keeps trying, and once connected the client reconnects by itself. The NATS
client and the batch-job runner are imported in a worker thread once the server runs, not before its
port opens (a seventh of a second of a cold start); the credentials are still read at start, so a
misconfigured server stops there.
"""

from __future__ import annotations

import asyncio
from importlib import import_module
from typing import TYPE_CHECKING

import anyio

from gallery_common.artifacts import ArtifactStore
from gallery_common.nats_auth import credentials_for
from gallery_common.telemetry import get_logger

from .dataplane import DataPlane
from .settings import ModelServerSettings

if TYPE_CHECKING:
    from gallery_common.bus import EventBus

    from .batch_jobs import BatchJobRunner
    from .nats_rpc import InferResponder

CONNECT_RETRY_S = 2.0
# every model server connects as the one NATS user `modelserver`, whatever it serves
NATS_USER = "modelserver"
DEFERRED_MODULES = ("gallery_common.bus", f"{__package__}.batch_jobs", f"{__package__}.nats_rpc")

log = get_logger(__name__)


def _import_deferred() -> None:
    for name in DEFERRED_MODULES:
        import_module(name)


class AsyncServing:
    """Serves `infer.<model>` requests and `infer.jobs.<model>` jobs while started."""

    def __init__(self, settings: ModelServerSettings, plane: DataPlane, store: ArtifactStore) -> None:
        self._settings = settings
        self._plane = plane
        self._store = store
        credentials_for(settings, NATS_USER)  # an unreadable password file fails the start, as it should
        self._bus: EventBus | None = None
        self.responder: InferResponder | None = None
        self.jobs: BatchJobRunner | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and subscribe in the background."""
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="nats-serve")

    async def _connect(self) -> None:
        try:
            await self._serve()
        except Exception as exc:  # HTTP serves on; why the NATS side does not must reach the log
            log.error("nats_serving_failed", reason=f"{type(exc).__name__}: {exc}")
            raise

    async def _serve(self) -> None:
        await anyio.to_thread.run_sync(_import_deferred)
        from gallery_common.bus import EventBus

        from .batch_jobs import BatchJobRunner
        from .nats_rpc import InferResponder

        settings = self._settings
        self._bus = EventBus.from_settings(
            settings, user=NATS_USER, publish_deadline=settings.nats_connect_timeout_s, reconnect_wait=CONNECT_RETRY_S
        )
        self.responder = InferResponder(self._plane)
        # jobs read NPZ files, not OIP bodies: they run the model in chunks of their own, off the batcher
        self.jobs = BatchJobRunner(
            self._plane.model, self._store, settings.max_batch_size, settings.job_ack_wait_s, settings.job_max_deliver
        )
        # HTTP serves meanwhile; the bus logs once that NATS is unreachable and keeps trying
        await self._bus.connect_in_background(ensure_streams=False)
        await self.responder.start(self._bus.nc)
        await self.jobs.start(self._bus.nc, self._bus.js)
        log.info("nats_serving", url=settings.nats_url)

    async def close(self) -> None:
        """Stop taking work, answer the requests already taken, and drain the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.jobs is not None:
            await self.jobs.close()
        if self.responder is not None:
            await self.responder.close()
        if self._bus is not None:
            await self._bus.close()
