"""Jobs on JetStream work queues: N replicas of a service compete for them and each job runs once.

A kind of job (`train`, `optimize`) has a WorkQueue-retention stream of its own (`TRAIN_JOBS` on
`jobs.train.<job id>`) and one durable pull consumer that every replica shares, so a message is held
by one replica at a time. A job has at most one message: the stream keeps one per subject and refuses
a second (discard new per subject), so submitting a job again while it waits or runs changes nothing.

The replica that takes a message runs the job and, while it runs, writes a heartbeat to the job's
record and sends `in_progress()`; it acks once the job has ended (its result published). A replica
that dies stops both: after `ack_wait` the message goes to another replica, which finds the record's
heartbeat stale and runs the job again from the start (`claim_decision`). A replica that stops
(SIGTERM) gives its jobs back at once. The job records, in the database every replica shares, say
who holds a job, when it last beat, and how many times it was started.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from nats import errors as nats_errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js import errors as js_errors

from .errors import InvalidRequest
from .telemetry import counter, gauge, get_logger

if TYPE_CHECKING:
    from sqlalchemy import Column

    from .bus import EventBus

log = get_logger(__name__)

_STREAM_NAME_IN_USE = 10058
_SUBJECT_FULL = 10077  # maximum messages per subject exceeded: the job's message is there already
_FETCH_TIMEOUT_S = 2.0
_RETRY_PAUSE_S = 0.5
_HEARTBEAT_CAP_S = 2.0
_ATTEMPT_TIMEOUT_S = 2.0
_STREAM_MAX_AGE_S = 30 * 86_400.0  # a job nobody took in a month is dropped from the queue

REPORT_EVERY = 15.0  # seconds between reports of a queue's waiting and taken jobs
_JOBS = gauge(
    "work_queue_jobs",
    "Jobs on a work queue: waiting for a replica, or taken by one and not settled (every replica of the"
    " service reports the same numbers).",
    ("queue", "state"),
)
_SETTLED = counter("work_queue_deliveries_total", "Job deliveries settled, by queue and outcome.", ("queue", "outcome"))


@dataclass(frozen=True)
class QueueNames:
    """The stream, subjects and shared durable consumer of one kind of job."""

    kind: str

    @property
    def stream(self) -> str:
        return f"{self.kind.upper()}_JOBS"

    @property
    def subjects(self) -> str:
        return f"jobs.{self.kind}.*"

    @property
    def durable(self) -> str:
        return f"{self.kind}-workers"

    def subject(self, job_id: str) -> str:
        if not job_id or any(c in job_id for c in ".*> \t\r\n"):
            raise InvalidRequest(f"{job_id!r} cannot be a job id on a work queue (no dots, wildcards or spaces)")
        return f"jobs.{self.kind}.{job_id}"

    def job_of(self, subject: str) -> str:
        return subject.removeprefix(f"jobs.{self.kind}.")


TRAIN_JOBS = QueueNames("train")
OPTIMIZE_JOBS = QueueNames("optimize")


def replica_id() -> str:
    """Who this process is in a job's record: host name (a pod's name on Kubernetes) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_interval(ack_wait: float) -> float:
    """How often a running job beats: often enough that a live holder never looks stale."""
    return min(ack_wait / 4, _HEARTBEAT_CAP_S)


class Claim(StrEnum):
    """What a replica that was handed a job's message may do with the job."""

    START = "start"  # queued: run it
    TAKE_OVER = "take_over"  # running, but its holder stopped beating: run it again from the start
    GIVE_UP = "give_up"  # its holders stopped `max_attempts` times: fail it
    WAIT = "wait"  # another replica holds it and beats: look again later
    DONE = "done"  # ended, or unknown: nothing to run


def claim_decision(
    status: str | None,
    heartbeat_at: datetime | None,
    attempts: int,
    *,
    now: datetime,
    ack_wait: float,
    max_attempts: int,
) -> Claim:
    """Decide from a job's record (`queued` / `running` / anything final) whether a delivery runs it.

    A holder beats every `heartbeat_interval(ack_wait)`; JetStream redelivers a message `ack_wait`
    after the last `in_progress()`, which comes right after a beat. A beat older than half of
    `ack_wait` is therefore a dead holder's, with margin both ways for clocks that differ a little.
    """
    if status == "queued":
        return Claim.START
    if status != "running":
        return Claim.DONE
    if beating(heartbeat_at, now=now, ack_wait=ack_wait):
        return Claim.WAIT
    return Claim.GIVE_UP if attempts >= max_attempts else Claim.TAKE_OVER


def beating(heartbeat_at: datetime | None, *, now: datetime, ack_wait: float) -> bool:
    """Whether a running job's holder beat recently enough to be alive (see `claim_decision`)."""
    # SQLAlchemy loads with the job tables that call this, not with every client of the bus (nats_auth)
    from .db import as_utc

    last = as_utc(heartbeat_at)
    return last is not None and now - last < timedelta(seconds=ack_wait / 2)


@dataclass(frozen=True)
class Delivery:
    """A job's message as a replica received it."""

    job_id: str
    delivered: int  # how many times JetStream has handed this message out, this time included


class Settle(StrEnum):
    """How a worker's run of a delivery ends, for the queue."""

    ACK = "ack"  # the job ended here, or there was nothing to run: the message goes
    LATER = "later"  # another replica holds the job: deliver it again after a while
    GIVE_BACK = "give_back"  # this replica is stopping: deliver it to another one now
    LOST = "lost"  # another replica took the job over meanwhile: its delivery, not ours, settles it


class JobWorker(Protocol):
    """A service's side of a work queue; every method blocks (SQL, training) and runs in a thread."""

    def run(self, delivery: Delivery) -> Settle:
        """Claim the job and run it to its end, or say why not."""
        ...

    def heartbeat(self, delivery: Delivery) -> bool:
        """Record that the job is alive here (and pick up a cancel); False when it is no longer ours."""
        ...

    def stop(self) -> None:
        """Stop the jobs running here as soon as possible (their `run` then returns GIVE_BACK)."""
        ...


class WorkQueue:
    """One kind of job on JetStream: `submit` puts a job on the queue, `working(worker)` takes jobs.

    ::

        queue = WorkQueue(bus, TRAIN_JOBS, ack_wait=30, concurrency=2)
        await queue.ensure()
        async with queue.working(runner):
            await queue.submit(job_id)
    """

    def __init__(
        self,
        bus: EventBus,
        names: QueueNames,
        *,
        ack_wait: float = 30.0,
        concurrency: int = 1,
        stop_timeout: float = 30.0,
    ) -> None:
        if ack_wait <= 0 or concurrency < 1:
            raise ValueError("ack_wait must be > 0 and concurrency >= 1")
        self.bus = bus
        self.names = names
        self.ack_wait = ack_wait
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self.heartbeat_every = heartbeat_interval(ack_wait)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._outcome = {s: _SETTLED.labels(names.kind, s.value) for s in Settle}
        self._report: asyncio.Task[None] | None = None

    def stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.names.stream,
            subjects=[self.names.subjects],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=1,
            max_age=_STREAM_MAX_AGE_S,
            num_replicas=self.bus.stream_replicas or 1,
        )

    def consumer_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.names.durable,
            durable_name=self.names.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            # Retries are counted in the job's record (attempts), where a waiting delivery does not count.
            max_deliver=-1,
            filter_subject=self.names.subjects,
        )

    async def ensure(self) -> None:
        """Create the stream and the shared consumer, or bring them to this configuration."""
        self._loop = asyncio.get_running_loop()
        js = self.bus.js

        async def ensure() -> None:
            config = self.stream_config()
            try:
                await js.add_stream(config)
            except js_errors.BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                current = (await js.stream_info(self.names.stream)).config
                # as EventBus.ensure_streams: a bus without stream_replicas never shrinks a clustered
                # queue, and an update (a proposal to the cluster) is sent only when something differs
                wanted = replace(
                    current,
                    subjects=config.subjects,
                    discard=config.discard,
                    discard_new_per_subject=config.discard_new_per_subject,
                    max_msgs_per_subject=config.max_msgs_per_subject,
                    max_age=config.max_age,
                    num_replicas=current.num_replicas if self.bus.stream_replicas is None else config.num_replicas,
                )
                if wanted != current:
                    await js.update_stream(wanted)
            await js.add_consumer(self.names.stream, config=self.consumer_config())

        await self.bus.with_retry(ensure, what=f"ensure work queue {self.names.stream}")

    async def submit(self, job_id: str) -> bool:
        """Put the job on the queue; False when its message is there already. Unavailable when NATS is
        unreachable for the bus's publish deadline."""
        subject = self.names.subject(job_id)

        async def attempt() -> bool:
            try:
                await self.bus.js.publish(subject, b"", timeout=_ATTEMPT_TIMEOUT_S)
            except js_errors.APIError as exc:
                if exc.err_code == _SUBJECT_FULL:
                    return False
                raise
            return True

        return await self.bus.with_retry(attempt, what=f"queue job {job_id}")

    def submit_blocking(self, job_id: str) -> bool:
        """`submit` from a worker thread (a plain route, a job's after-hook)."""
        if self._loop is None:
            raise RuntimeError("WorkQueue.ensure() has not run")
        future = asyncio.run_coroutine_threadsafe(self.submit(job_id), self._loop)
        return future.result(timeout=self.bus.publish_deadline + 10)

    def working(self, worker: JobWorker) -> _Working:
        """Take jobs for `worker` while the context is open; on exit stop it and settle what it held."""
        return _Working(self, worker)

    async def _take(self, worker: JobWorker) -> None:
        js: JetStreamContext = self.bus.js
        sub = await js.pull_subscribe_bind(self.names.durable, self.names.stream)
        slots = asyncio.Semaphore(self.concurrency)
        try:
            while not self._stopping:
                await slots.acquire()
                msg = await self._fetch(sub)
                if msg is None:
                    slots.release()
                    continue
                task = asyncio.create_task(self._handle(worker, msg), name=f"job:{msg.subject}")
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            with suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> Msg | None:
        try:
            [msg] = await sub.fetch(1, timeout=_FETCH_TIMEOUT_S)
            return msg
        except TimeoutError:
            return None
        except (nats_errors.Error, js_errors.Error) as exc:  # a reconnect, or a new server without our consumer
            log.warning("work queue fetch failed", queue=self.names.stream, error=repr(exc))
            await asyncio.sleep(_RETRY_PAUSE_S)
            with suppress(Exception):
                await self.ensure()
            return None

    async def _handle(self, worker: JobWorker, msg: Msg) -> None:
        delivery = Delivery(self.names.job_of(msg.subject), msg.metadata.num_delivered or 1)
        beating = asyncio.create_task(self._heartbeat(worker, delivery, msg))
        try:
            settle = await anyio.to_thread.run_sync(worker.run, delivery, limiter=self._limiter)
        except Exception:
            log.error("job worker error", queue=self.names.stream, job_id=delivery.job_id, exc_info=True)
            settle = Settle.LATER
        finally:
            beating.cancel()
        self._outcome[settle].inc()
        try:
            if settle is Settle.ACK:
                await msg.ack_sync(timeout=_ATTEMPT_TIMEOUT_S)
            elif settle is Settle.LATER:
                await msg.nak(delay=self.ack_wait / 2)
            elif settle is Settle.GIVE_BACK:
                await msg.nak()
        except (nats_errors.Error, js_errors.Error, TimeoutError) as exc:
            # unsettled, the message comes back after ack_wait and the record says what is left to do
            log.warning("job message not settled", job_id=delivery.job_id, settle=settle.value, error=repr(exc))

    async def _heartbeat(self, worker: JobWorker, delivery: Delivery, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                # the record first: a message redelivered after this beat then finds it stale
                if not await anyio.to_thread.run_sync(worker.heartbeat, delivery):
                    return
            except Exception as exc:  # the database is away; the job itself will tell
                log.warning("job heartbeat failed", job_id=delivery.job_id, error=repr(exc))
            with suppress(nats_errors.Error, js_errors.Error):
                await msg.in_progress()

    async def _report_jobs(self) -> None:
        """Report the jobs waiting and taken every REPORT_EVERY seconds, so jobs that no replica takes show
        (deploy/prometheus/rules.yml alerts on them)."""
        # the flag ends it too: a stopping queue reports nothing more, whatever a report in flight brings back
        while not self._stopping:
            with suppress(nats_errors.Error, TimeoutError):  # a lost connection: the next report tells
                info = await self.bus.js.consumer_info(self.names.stream, self.names.durable)
                if not self._stopping:
                    _JOBS.labels(self.names.kind, "waiting").set(info.num_pending or 0)
                    _JOBS.labels(self.names.kind, "taken").set(info.num_ack_pending or 0)
            await asyncio.sleep(REPORT_EVERY)

    async def _stop(self, worker: JobWorker) -> None:
        self._stopping = True
        for task in (self._task, self._report):  # the bus's wait_for lets these cancels through (cancel_safe)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for state in ("waiting", "taken"):  # a replica that takes no jobs reports none
            with suppress(KeyError):
                _JOBS.remove(self.names.kind, state)
        await anyio.to_thread.run_sync(worker.stop)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.stop_timeout)


class _Working:
    def __init__(self, queue: WorkQueue, worker: JobWorker) -> None:
        self.queue = queue
        self.worker = worker

    async def __aenter__(self) -> WorkQueue:
        queue = self.queue
        queue._stopping = False
        queue._task = asyncio.create_task(queue._take(self.worker), name=f"work-queue:{queue.names.stream}")
        queue._report = asyncio.create_task(queue._report_jobs(), name=f"work-queue-report:{queue.names.stream}")
        return queue

    async def __aexit__(self, *exc: object) -> None:
        await self.queue._stop(self.worker)


SubmitFn = Callable[[str], object]
"""Puts a job on its work queue (blocking; from a thread)."""


def lease_columns() -> list[Column[Any]]:
    """The columns a job table needs for `claim_decision`: holder, heartbeat_at, attempts."""
    from sqlalchemy import Column, DateTime, Integer, String

    return [
        Column("holder", String(), nullable=True),
        Column("heartbeat_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer(), nullable=False, server_default="0"),
    ]


def add_lease_columns(table: str) -> None:
    """In an Alembic revision: add `lease_columns` to `table`, skipping those a database built from the
    current tables (and stamped at an older revision) holds already."""
    from alembic import op
    from sqlalchemy import inspect

    present = {c["name"] for c in inspect(op.get_bind()).get_columns(table)}
    for column in lease_columns():
        if column.name not in present:
            op.add_column(table, column)


def drop_lease_columns(table: str) -> None:
    """In an Alembic revision: drop `lease_columns` from `table` (SQLite rebuilds the table to do it)."""
    from alembic import op

    with op.batch_alter_table(table) as batch:
        for column in reversed(lease_columns()):
            batch.drop_column(column.name)
