"""Outcomes stored in batches: the consumer hands the monitor up to its concurrency of `model.outcome` events
at once, and each waits for the one transaction that keeps its batch (a group commit), instead of one
transaction per outcome. An event is acked only once its batch is committed, so a crash loses nothing.
"""

from __future__ import annotations

import asyncio

import anyio

from gallery_common.events import CloudEvent, ModelOutcome

from .quality import QualityStore

MAX_BATCH = 500  # outcomes per transaction


class OutcomeWriter:
    """Collects outcomes while a batch is being written and writes them together next (in a worker thread)."""

    def __init__(self, store: QualityStore, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._waiting: list[tuple[CloudEvent[ModelOutcome], asyncio.Future[bool]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, event: CloudEvent[ModelOutcome]) -> bool:
        """Keep one outcome; True once its batch is committed, False when its event id was kept already."""
        kept = asyncio.get_running_loop().create_future()
        self._waiting.append((event, kept))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write(), name="monitor-outcome-writer")
        return await kept

    async def _write(self) -> None:
        batch: list[tuple[CloudEvent[ModelOutcome], asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                try:
                    fresh = await anyio.to_thread.run_sync(self.store.record_many, [event for event, _ in batch])
                except Exception as exc:  # every outcome of the batch fails, and is retried by its delivery
                    for _, kept in batch:
                        if not kept.done():
                            kept.set_exception(exc)
                    continue
                for (_, kept), was_fresh in zip(batch, fresh, strict=True):
                    if not kept.done():
                        kept.set_result(was_fresh)
        finally:
            self._writing = None
            for _, kept in batch + self._waiting:  # cancelled mid-write: nobody waits for ever
                if not kept.done():
                    kept.cancel()
            self._waiting = []
