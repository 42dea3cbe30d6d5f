"""Answers kept for feedback: what a gateway answered for a model whose route has `record_outcomes`.

The request path hands an `Answered` (the answer's bytes, the version that gave it, the caller) to
`OutcomeRecorder.offer`, which only appends it to a bounded queue: when the queue is full the answer is
not kept and the drop is counted (`modelgallery_gateway_outcome_records_total{outcome="dropped"}`). One
task decodes what is queued (rows, the top class per row) and stores it in the outcome bucket
(`gallery_common.outcomes_kv`) under its request id, shared by every replica and kept across restarts
until its TTL. The first answer under an id is the one kept (a reused id is counted as `duplicate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from nats.js import errors as js_errors
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from gallery_common.bus import EventBus
from gallery_common.contracts.oip import ProtocolError, decode_infer_response, top_classes
from gallery_common.errors import Unavailable
from gallery_common.outcomes_kv import ensure_outcome_bucket
from gallery_common.telemetry import get_logger

from . import metrics
from .metrics import bound

log = get_logger(__name__)

MAX_CLASS_ROWS = 4096  # an answer with more rows is kept without its classes (rewards only)
_WRITE_BATCH = 64  # records stored at once
_RECONNECT_POLL_S = 0.25
_STORE_DEADLINE_S = 5.0


@dataclass(frozen=True, slots=True)
class Answered:
    """An answer as the request path hands it over; decoded off the path."""

    request_id: str
    model: str
    version: str
    variant: str
    caller: str
    answered_at: float  # time.time()
    body: bytes
    header_length: str | None  # the binary-data header of the answer, when its outputs are binary
    regression: bool = False  # a regressor's answer (its route's task): predictions, never classes


class FeedbackMark(BaseModel):
    """The feedback an answer got: it is joined once."""

    kind: Literal["label", "reward", "value"]
    at: datetime
    by: str


class AnswerRecord(BaseModel):
    """One answer in the outcome bucket."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    variant: str = ""
    caller: str
    answered_at: datetime
    rows: int = Field(ge=1)
    classes: list[int] | None = Field(
        default=None, description="top class per row; None when the first output is no per-row scores or class ids"
    )
    predictions: list[list[float]] | None = Field(
        default=None, description="a regressor's predictions per row (its first output), for a true value to join"
    )
    feedback: FeedbackMark | None = None


def record_of(answered: Answered) -> AnswerRecord | None:
    """The record of an answer; None for an answer without rows. ProtocolError when it is not OIP."""
    outputs = decode_infer_response(answered.body, answered.header_length).outputs
    if not outputs:
        raise ProtocolError("the answer has no outputs")
    first = next(iter(outputs.values()))
    rows = int(first.shape[0]) if first.ndim else 1
    if rows == 0:
        return None
    classes: np.ndarray | None = None
    predictions: list[list[float]] | None = None
    if rows <= MAX_CLASS_ROWS and answered.regression:
        if first.dtype.kind == "f" and first.ndim in (1, 2):
            predictions = first.reshape(rows, -1).astype(np.float64).tolist()
    elif rows <= MAX_CLASS_ROWS:
        if first.ndim == 2 and first.shape[1] >= 2 and first.dtype.kind == "f":  # scores: logits, probabilities
            classes = top_classes(first)
        elif first.ndim == 1 and first.dtype.kind in "iu":  # class ids
            classes = first
    return AnswerRecord(
        model=answered.model,
        version=answered.version,
        variant=answered.variant,
        caller=answered.caller,
        answered_at=datetime.fromtimestamp(answered.answered_at, UTC),
        rows=rows,
        classes=None if classes is None else [int(c) for c in classes],
        predictions=predictions,
    )


class OutcomeStore:
    """The outcome bucket as a gateway uses it, opened on first use while the bus is connected (again after
    a reconnect: the server may be a new one)."""

    def __init__(self, bus: EventBus, ttl_s: float, max_bytes: int) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()
        bus.on_reconnected(self._forget)

    def _forget(self) -> None:
        self._kv = None

    async def _bucket(self) -> KeyValue:
        if not self.bus.is_connected:
            raise Unavailable("the outcome store is out of reach: this gateway is not connected to NATS")
        async with self._opening:
            if self._kv is None:
                self._kv = await self.bus.with_retry(
                    lambda: ensure_outcome_bucket(self.bus, self.ttl_s, self.max_bytes),
                    what="open the outcome bucket",
                    deadline=_STORE_DEADLINE_S,
                )
            return self._kv

    async def create(self, request_id: str, record: AnswerRecord) -> bool:
        """Keep `record` under `request_id`; False when the id holds a record already."""
        kv = await self._bucket()
        try:
            await self.bus.with_retry(
                lambda: kv.create(request_id, record.model_dump_json().encode()),
                what="store an answer",
                deadline=_STORE_DEADLINE_S,
            )
        except js_errors.KeyWrongLastSequenceError:
            return False
        return True

    async def read(self, request_id: str) -> tuple[AnswerRecord, int] | None:
        """The record under `request_id` and its revision; None when there is none (unknown or expired)."""
        kv = await self._bucket()
        try:
            entry = await self.bus.with_retry(
                lambda: kv.get(request_id), what="read an answer", deadline=_STORE_DEADLINE_S
            )
        except js_errors.KeyNotFoundError:
            return None
        return AnswerRecord.model_validate_json(entry.value or b""), entry.revision or 0

    async def replace(self, request_id: str, record: AnswerRecord, revision: int) -> int | None:
        """Store `record` if `revision` is still the latest; its new revision, or None when another came first."""
        kv = await self._bucket()
        try:
            return await self.bus.with_retry(
                lambda: kv.update(request_id, record.model_dump_json().encode(), last=revision),
                what="mark an answer",
                deadline=_STORE_DEADLINE_S,
            )
        except (js_errors.KeyWrongLastSequenceError, js_errors.KeyNotFoundError):
            return None


class OutcomeRecorder:
    """Holds up to `capacity` answers until the outcome bucket has them."""

    def __init__(self, store: OutcomeStore, capacity: int) -> None:
        self.store = store
        self._queue: deque[Answered] = deque()
        self._capacity = capacity
        self._pending: set[str] = set()  # request ids queued or being written
        self._ready = asyncio.Event()
        self._written = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def offer(self, answered: Answered) -> None:
        """Queue one answer; never blocks and never raises (a full queue drops it and counts the drop)."""
        if len(self._queue) >= self._capacity:
            bound(metrics.OUTCOME_RECORDS, answered.model, "dropped").inc()
            return
        self._queue.append(answered)
        self._pending.add(answered.request_id)
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._write_forever(), name="gateway-outcomes")

    async def settled(self, request_id: str, timeout: float) -> bool:
        """Wait (up to `timeout` s) until an answer under `request_id` queued on this replica is stored;
        False when none was queued here."""
        if request_id not in self._pending:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._written:
                await self._written.wait_for(lambda: request_id not in self._pending)
        return True

    async def _write_forever(self) -> None:
        while True:
            await self._ready.wait()
            if not self._queue:
                self._ready.clear()
                continue
            if not self.store.bus.is_connected:
                await asyncio.sleep(_RECONNECT_POLL_S)
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), _WRITE_BATCH))]
            results = await asyncio.gather(*(self._write(answered) for answered in batch))
            settled = [a.request_id for a, stored in zip(batch, results, strict=True) if stored]
            # what the bus lost on the way goes back to the front of the queue, in order
            self._queue.extendleft(reversed([a for a, stored in zip(batch, results, strict=True) if not stored]))
            async with self._written:
                self._pending.difference_update(settled)
                self._written.notify_all()
            if not all(results):
                await asyncio.sleep(_RECONNECT_POLL_S)

    async def _write(self, answered: Answered) -> bool:
        """Store one answer; False when the bus was lost (it is tried again), True when it is settled."""
        try:
            record = record_of(answered)
        except ProtocolError as exc:
            log.warning("answer not recorded", model=answered.model, reason=str(exc))
            bound(metrics.OUTCOME_RECORDS, answered.model, "unreadable").inc()
            return True
        if record is None:
            return True
        try:
            created = await self.store.create(answered.request_id, record)
        except Unavailable:
            return False
        except Exception as exc:  # a refusal of the server: counted, logged, not retried
            log.warning("answer not recorded", model=answered.model, reason=repr(exc))
            bound(metrics.OUTCOME_RECORDS, answered.model, "failed").inc()
            return True
        bound(metrics.OUTCOME_RECORDS, answered.model, "recorded" if created else "duplicate").inc()
        return True

    async def close(self, timeout: float) -> None:
        """Store what is queued if the bus lets that happen within `timeout` s, then stop."""
        if self._task is None:
            return
        deadline = time.monotonic() + timeout
        while self._pending and self.store.bus.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            log.warning("answers not recorded", count=len(self._pending))
