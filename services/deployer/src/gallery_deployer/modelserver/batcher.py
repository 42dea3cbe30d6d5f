"""Dynamic batching: requests wait in a bounded queue and run together on ONNX Runtime.

A batch closes when it holds `max_batch_size` rows or its first request has waited
`max_queue_delay` seconds. With `eager` (the default) a request that finds nothing else queued and
nothing running goes straight to the session, without a trip through the queue: a lone caller pays no
delay and no batching bookkeeping, and under load batches still form from the requests that queue while
the previous batch runs. Requests whose non-batch dimensions differ run in separate groups of the
same batch. The session runs in a thread of its own (one: batches run one at a time) so the event
loop keeps accepting requests; a dedicated executor costs less per run than a shared thread pool with
its limiter and cancel scopes.

One request never holds more rows than a batch: it is refused, as Triton refuses it. A batch that
ONNX Runtime refuses is run again one request at a time, so only the request at fault fails.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gallery_common.errors import GalleryError, Unavailable

from .model import ServedModel

Results = dict[str, np.ndarray]


class BatchObserver(Protocol):
    """Receives the queue wait of each request and the compute time and size of each batch."""

    def queued(self, seconds: float) -> None: ...

    def computed(self, seconds: float, rows: int) -> None: ...


class Overloaded(Unavailable):
    """Too many requests are waiting; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceFailed(GalleryError):
    """ONNX Runtime refused a request's rows (run on their own, so the reason is that request's)."""


class TooManyRows(GalleryError):
    """A request with more rows than `max_batch_size`."""

    status_code = 400


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    enqueued: float
    future: asyncio.Future[Results] = field(repr=False)

    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        return tuple(array.shape[1:] for array in self.inputs.values())


_STOP = object()


class DynamicBatcher:
    """Groups concurrent requests into batches for one model; `submit` awaits one request's outputs."""

    def __init__(
        self,
        model: ServedModel,
        max_batch_size: int,
        max_queue_delay: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        eager: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._model = model
        self._max_batch = max_batch_size if model.batchable else 1
        self._delay = max_queue_delay
        self._eager = eager
        self._max_queue = max_queue
        self._observer = observer
        self._clock = clock
        self._queue: asyncio.Queue[_Pending | object] = asyncio.Queue()
        self._waiting = 0
        # set while the session is free: it runs one batch at a time, a lone request run straight or a batch
        # of the loop
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._session_thread = ThreadPoolExecutor(1, thread_name_prefix="onnx-session")
        self.retry_after = max(1, round(max_queue_delay + 0.5))

    @property
    def waiting(self) -> int:
        """Requests admitted whose batch has not started yet."""
        return self._waiting

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop."""
        self._closing = True
        self._queue.put_nowait(_STOP)
        if self._task is not None:
            await self._task
        self._session_thread.shutdown(wait=False)  # a lone request still running finishes first

    async def submit(self, inputs: Mapping[str, np.ndarray], rows: int) -> Results:
        """Queue one request and wait for its outputs (its rows of the batch it ran in)."""
        if self._closing:
            raise Unavailable("the model server is shutting down")
        # Refused rather than split, as Triton does (KServe has no such limit to follow): an OIP client
        # expects one model run per request, and splitting would change the answer of a model whose rows
        # meet (batch statistics, attention across the batch) and hold a request past its queue slot.
        if self._model.batchable and rows > self._max_batch:
            raise TooManyRows(
                f"the request has {rows} rows and this model server runs at most {self._max_batch} at once "
                "(its max_batch_size): send them in smaller requests"
            )
        if self._waiting >= self._max_queue:
            raise Overloaded(f"{self._waiting} requests are already waiting; retry later", self.retry_after)
        if self._eager and self._idle.is_set() and not self._waiting:
            self._hold()
            enqueued = self._clock()
            try:
                await asyncio.sleep(0)  # requests that arrived together with this one queue up behind it
                if not self._waiting:
                    return await self._run_alone(inputs, rows, enqueued)
            finally:
                self._release()
            # others came in the same moment: run with them as a batch
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        self._waiting += 1
        self._queue.put_nowait(_Pending(inputs, rows, self._clock(), future))
        return await future

    def _hold(self) -> None:
        self._idle.clear()

    def _release(self) -> None:
        self._idle.set()

    async def _run(self, feeds: Mapping[str, np.ndarray]) -> Results:
        return await asyncio.get_running_loop().run_in_executor(self._session_thread, self._model.run, feeds)

    async def _run_alone(self, inputs: Mapping[str, np.ndarray], rows: int, enqueued: float) -> Results:
        """One request straight on the session (nothing queued, nothing running): no future, no queue."""
        started = self._clock()
        if self._observer is not None:
            self._observer.queued(started - enqueued)
        try:
            results = await self._run(inputs)
        except Exception as exc:  # ONNX Runtime raises its own types
            raise _failure(exc) from None
        if self._observer is not None:
            self._observer.computed(self._clock() - started, rows)
        return results

    async def _loop(self) -> None:
        carried: _Pending | None = None
        while True:
            first = carried if carried is not None else await self._queue.get()
            carried = None
            if first is _STOP:
                return
            assert isinstance(first, _Pending)
            await self._idle.wait()  # a lone request running straight finishes first
            self._hold()
            try:
                batch, carried, stop = await self._collect(first)
                await self._execute(batch)
                if stop and carried is not None:
                    await self._execute([carried])
            finally:
                self._release()
            if stop:
                # Everything queued before the stop marker has been collected and run.
                return

    async def _collect(self, first: _Pending) -> tuple[list[_Pending], _Pending | None, bool]:
        batch, rows = [first], first.rows
        if self._eager and self._queue.empty():
            return batch, None, False
        deadline = first.enqueued + self._delay
        while rows < self._max_batch:
            remaining = deadline - self._clock()
            try:
                if remaining <= 0:
                    item = self._queue.get_nowait()
                else:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is _STOP:
                return batch, None, True
            assert isinstance(item, _Pending)
            if rows + item.rows > self._max_batch:
                return batch, item, False
            batch.append(item)
            rows += item.rows
        return batch, None, False

    async def _execute(self, batch: list[_Pending]) -> None:
        self._waiting -= len(batch)
        started = self._clock()
        if self._observer is not None:
            for item in batch:
                self._observer.queued(started - item.enqueued)
        groups: dict[tuple[tuple[int, ...], ...], list[_Pending]] = defaultdict(list)
        for item in batch:
            groups[item.shape_key()].append(item)
        for group in groups.values():
            await self._run_group(group)

    async def _run_group(self, group: list[_Pending]) -> None:
        names = list(group[0].inputs)
        if len(group) == 1:
            feeds = dict(group[0].inputs)
        else:
            feeds = {name: np.concatenate([item.inputs[name] for item in group]) for name in names}
        started = self._clock()
        try:
            results = await self._run(feeds)
        except Exception as exc:  # ONNX Runtime raises its own types; every waiter must hear about it
            if len(group) > 1:
                # One request's rows (an index out of range, say) fail the whole batch: run each request
                # on its own, so the others get their answers and the one at fault gets its own reason.
                for item in group:
                    if not item.future.done():  # a client that went away costs no second run
                        await self._run_group([item])
                return
            if not group[0].future.done():
                group[0].future.set_exception(_failure(exc))
            return
        if self._observer is not None:
            self._observer.computed(self._clock() - started, sum(item.rows for item in group))
        offset = 0
        for item in group:
            if len(group) == 1:
                part = results
            else:
                part = {name: value[offset : offset + item.rows] for name, value in results.items()}
            offset += item.rows
            if not item.future.done():  # the client may have gone away
                item.future.set_result(part)


def _failure(exc: Exception) -> InferenceFailed:
    """The error a request gets when ONNX Runtime refused its rows run on their own: the first line of the reason."""
    return InferenceFailed(f"inference failed: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}")
