"""A work queue on a real nats-server reports its jobs waiting and taken on /metrics (what the
ModelGalleryJobsNotTaken alert reads)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import REGISTRY
from waiting import eventually

from gallery_common import work_queue
from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats
from gallery_common.work_queue import Delivery, QueueNames, Settle, WorkQueue


class OneAtATime:
    """A worker whose jobs run until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self, delivery: Delivery) -> Settle:
        self.release.wait(30)
        return Settle.ACK

    def heartbeat(self, delivery: Delivery) -> bool:
        return True

    def stop(self) -> None:
        self.release.set()


def jobs(state: str) -> float | None:
    return REGISTRY.get_sample_value("modelgallery_work_queue_jobs", {"queue": "metered", "state": state})


async def test_jobs_waiting_and_taken_show_on_the_metrics(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_queue, "REPORT_EVERY", 0.1)
    worker = OneAtATime()
    # a stop that waits for ever fails here, not the whole run (a report task whose cancel was lost once did)
    async with asyncio.timeout(60), EventBus(nats_server.url, "test") as bus:
        queue = WorkQueue(bus, QueueNames("metered"), concurrency=1)
        await queue.ensure()
        for n in range(3):
            assert await queue.submit(f"job-{n}")
        async with queue.working(worker):
            await eventually(lambda: (jobs("waiting"), jobs("taken")) == (2, 1), what="two waiting, one taken")
            worker.release.set()
            await eventually(lambda: (jobs("waiting"), jobs("taken")) == (0, 0), what="the queue drained")
        assert jobs("waiting") is None and jobs("taken") is None, "a replica that stopped taking jobs reports none"
