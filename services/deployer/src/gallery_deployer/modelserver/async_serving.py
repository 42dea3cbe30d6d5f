"""The model server's NATS side: request/reply inference and batch jobs, over one bus connection.

It connects in the background, so HTTP serving starts at once and does not depend on NATS; while
NATS is unreachable it keeps trying, and once connected the client reconnects by itself.
"""

from __future__ import annotations

import asyncio

from gallery_common.artifacts import ArtifactStore
from gallery_common.bus import EventBus
from gallery_common.telemetry import get_logger

from .batch_jobs import BatchJobRunner
from .dataplane import DataPlane
from .nats_rpc import InferResponder
from .settings import ModelServerSettings

CONNECT_RETRY_S = 2.0

log = get_logger(__name__)


class AsyncServing:
    """Serves `infer.<model>` requests and `infer.jobs.<model>` jobs while started."""

    def __init__(self, settings: ModelServerSettings, plane: DataPlane, store: ArtifactStore) -> None:
        self._settings = settings
        # every model server connects as the one NATS user `modelserver`, whatever it serves
        self._bus = EventBus.from_settings(
            settings,
            user="modelserver",
            publish_deadline=settings.nats_connect_timeout_s,
            reconnect_wait=CONNECT_RETRY_S,
        )
        self.responder = InferResponder(plane)
        # jobs read NPZ files, not OIP bodies: they run the model in chunks of their own, off the batcher
        self.jobs = BatchJobRunner(
            plane.model, store, settings.max_batch_size, settings.job_ack_wait_s, settings.job_max_deliver
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and subscribe in the background."""
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="nats-serve")

    async def _connect(self) -> None:
        # HTTP serves meanwhile; the bus logs once that NATS is unreachable and keeps trying
        await self._bus.connect_in_background(ensure_streams=False)
        await self.responder.start(self._bus.nc)
        await self.jobs.start(self._bus.nc, self._bus.js)
        log.info("nats_serving", url=self._settings.nats_url)

    async def close(self) -> None:
        """Stop taking work, answer the requests already taken, and drain the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.jobs.close()
        await self.responder.close()
        await self._bus.close()
