"""The gateways' routing table in a JetStream key-value bucket: one key per model, a few revisions each.

The deployer writes a model's route (`RoutesBucket.put` / `delete`, each against the revision it read);
every gateway replica follows the bucket (`RoutesFollower`) into its in-memory table and its local
snapshot. Values are a route's JSON; this module does not know their shape (the gateway validates them).

A model name may hold '.', which NATS reads as a subject token separator (and a trailing or doubled '.'
makes no valid subject at all), so a key is the name with each '.' written '=', a character KV keys
allow and no model name holds: `iris.v2` is the key `iris=v2`, one token of `$KV.routes.iris=v2`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from nats.js import JetStreamContext, api
from nats.js import errors as js_errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .contracts.names import MODEL_NAME_RULE, is_model_name
from .errors import Conflict, InvalidRequest
from .telemetry import get_logger

if TYPE_CHECKING:
    from .bus import EventBus

BUCKET = "routes"
STREAM = f"KV_{BUCKET}"
SUBJECTS = f"$KV.{BUCKET}.>"
HISTORY = 5  # revisions kept per model: what a route was just before, for an operator to look back
_STREAM_NAME_IN_USE = 10058
_CONFLICT_RETRIES = 5
log = get_logger(__name__)
T = TypeVar("T")
B = TypeVar("B", bound="RoutesBucket")


def route_key(model: str) -> str:
    """The bucket key of `model`: its name with each '.' written '='."""
    if not is_model_name(model):
        raise InvalidRequest(f"model name {model!r} must be {MODEL_NAME_RULE}")
    return model.replace(".", "=")


def model_of_key(key: str) -> str | None:
    """The model `route_key` made `key` from; None for a key no model name gives."""
    model = key.replace("=", ".")
    return model if "." not in key and is_model_name(model) else None


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    history: int,
    replicas: int | None,
    description: str,
    ttl: float | None = None,
) -> KeyValue:
    """Create the KV bucket `bucket`, or bind to it as it is (a file-stored stream either way).

    `replicas` as in `EventBus.ensure_streams`: given, an existing bucket is brought to it (and to
    `history`); None, a new bucket gets 1 and an existing one keeps its count. `ttl` is a new
    bucket's; an existing one keeps its own.
    """
    config = api.KeyValueConfig(
        bucket=bucket,
        description=description,
        history=history,
        ttl=ttl,
        replicas=replicas or 1,
        storage=api.StorageType.FILE,
    )
    try:
        return await js.create_key_value(config)
    except js_errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    kv = await js.key_value(bucket)
    current = (await js.stream_info(f"KV_{bucket}")).config
    wanted = replace(
        current,
        max_msgs_per_subject=history,
        num_replicas=current.num_replicas if replicas is None else replicas,
    )
    if wanted != current:
        await js.update_stream(wanted)
    return kv


async def ensure_expiring_bucket(
    bus: EventBus, bucket: str, *, description: str, ttl_s: float, max_bytes: int
) -> KeyValue:
    """Create the bucket `bucket` or bind to it: one revision per key, entries gone `ttl_s` after their last
    write, and the oldest giving way once it holds `max_bytes` (discard old). An existing bucket is brought to
    `ttl_s` and `max_bytes`, so every process that opens it should be given the same ones."""
    kv = await ensure_bucket(
        bus.js, bucket, history=1, replicas=bus.stream_replicas, description=description, ttl=ttl_s
    )
    current = (await bus.js.stream_info(f"KV_{bucket}")).config
    # JetStream refuses a duplicate window longer than the messages live
    window = min(current.duplicate_window or ttl_s, ttl_s)
    wanted = replace(
        current, max_age=ttl_s, max_bytes=max_bytes, discard=api.DiscardPolicy.OLD, duplicate_window=window
    )
    if wanted != current:
        await bus.js.update_stream(wanted)
    return kv


@dataclass(frozen=True)
class RouteEntry:
    """A model's route as the bucket holds it, with the revision that wrote it."""

    model: str
    value: bytes
    revision: int


class RoutesBucket:
    """The deployer's side: read and write models' routes, each write against the revision it read.

    A write that finds another writer came first (an operator, another deployer) reads again and
    retries; one that would store what the bucket already holds stores nothing (a redelivered event
    makes no new revision). NATS outages are retried like publishes (`EventBus.with_retry`).
    """

    bucket = BUCKET
    history = HISTORY
    description = "Model Gallery gateway routes: one key per model"
    thing = "route"

    @staticmethod
    def key_of(name: str) -> str:
        return route_key(name)

    def __init__(self, bus: EventBus, kv: KeyValue) -> None:
        self.bus = bus
        self.kv = kv
        self._ensuring: set[asyncio.Task[None]] = set()

    @classmethod
    async def _ensure(cls, bus: EventBus) -> KeyValue:
        return await ensure_bucket(
            bus.js, cls.bucket, history=cls.history, replicas=bus.stream_replicas, description=cls.description
        )

    @classmethod
    async def open(cls: type[B], bus: EventBus) -> B:
        """The bucket on `bus`, created when missing (replicas: the bus's stream replicas) and
        again after a reconnect (the server may be a new one with an empty store)."""
        bucket = cls(bus, await bus.with_retry(lambda: cls._ensure(bus), what=f"ensure KV bucket {cls.bucket}"))
        bus.on_reconnected(bucket._ensure_again)
        return bucket

    def _ensure_again(self) -> None:
        async def ensure() -> None:
            try:
                what = f"ensure KV bucket {self.bucket}"
                self.kv = await self.bus.with_retry(lambda: self._ensure(self.bus), what=what)
            except Exception as exc:  # a background task: the next reconnect or write tries again
                log.warning("could not restore a bucket after a reconnect", bucket=self.bucket, error=repr(exc))

        task = asyncio.create_task(ensure(), name=f"{self.bucket}-bucket:{self.bus.service}")
        self._ensuring.add(task)
        task.add_done_callback(self._ensuring.discard)

    async def _current(self, key: str) -> tuple[KeyValue.Entry | None, int]:
        """The key's live entry (None when absent or deleted) and the revision a write must expect."""
        try:
            entry = await self.kv.get(key)
        except js_errors.KeyNotFoundError as exc:
            # a deleted key: its delete marker's revision (nats.py hands the marker over as `entry`)
            marker = exc.entry
            return None, (marker.revision or 0) if marker is not None else 0
        return entry, entry.revision or 0

    async def get(self, model: str) -> RouteEntry | None:
        key = self.key_of(model)
        entry, _ = await self.bus.with_retry(lambda: self._current(key), what=f"read the {self.thing} of {model}")
        if entry is None:
            return None
        return RouteEntry(model, entry.value or b"", entry.revision or 0)

    async def put(self, model: str, value: bytes) -> int:
        """Store `value` as `model`'s route; returns the revision that holds it."""
        key = self.key_of(model)

        async def attempt() -> int:
            entry, expected = await self._current(key)
            if entry is not None and entry.value == value:
                return expected
            return await self.kv.update(key, value, last=expected)

        return await self._settle(attempt, f"set the {self.thing} of {model}")

    async def delete(self, model: str) -> bool:
        """Remove `model`'s route (a delete marker every follower sees); False when it had none."""
        key = self.key_of(model)

        async def attempt() -> bool:
            entry, expected = await self._current(key)
            if entry is None:
                return False
            await self.kv.delete(key, last=expected)
            return True

        return await self._settle(attempt, f"delete the {self.thing} of {model}")

    async def _settle(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self.bus.with_retry(attempt, what=what)
            except js_errors.KeyWrongLastSequenceError:
                continue  # another writer came between the read and the write: read again
        raise Conflict(f"{what}: the {self.thing} kept changing under {_CONFLICT_RETRIES} attempts")


@dataclass(frozen=True)
class RouteChange:
    """One model's route as the bucket now has it: `value` None when it was deleted."""

    model: str
    value: bytes | None
    revision: int


# Takes changes into the table; `synced` is True from the batch that completes the initial state on.
ApplyChanges = Callable[[Sequence[RouteChange], bool], Awaitable[None]]


class RoutesFollower:
    """A gateway's side: follows the bucket into `apply`, from whenever the bus is up, forever.

    Each watch starts with the last value of every key (delete markers included), handed to `apply`
    as one batch, then every change as it is stored. A reconnect starts the watch again (the server
    may have lost the watch's ephemeral consumer), so changes missed while the bus was down arrive
    as part of that batch. With the bus down nothing is applied and the table stays as it was.
    """

    def __init__(
        self,
        bus: EventBus,
        apply: ApplyChanges,
        *,
        revision: int = 0,
        retry_s: float = 1.0,
        bucket: str = BUCKET,
        name_of: Callable[[str], str | None] = model_of_key,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self.name_of = name_of
        self.apply = apply
        self.revision = revision  # the highest bucket revision applied so far
        self.retry_s = retry_s
        self.synced = False  # the current watch has delivered the bucket's state
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    def start(self) -> RoutesFollower:
        self.bus.on_reconnected(self._on_reconnected)
        self._task = asyncio.create_task(self._run(), name=f"{self.bucket}-follower:{self.bus.service}")
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._restarts, return_exceptions=True)
        await self._stop_watch()

    def _on_reconnected(self) -> None:
        task = asyncio.create_task(self._stop_watch())
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):  # its subscription may be gone with the old connection
                await watcher.stop()

    async def _run(self) -> None:
        waiting_for_bucket = False
        while True:
            if not self.bus.is_connected:
                await asyncio.sleep(0.05)
                continue
            try:
                await self._follow()
            except js_errors.BucketNotFoundError:
                if not waiting_for_bucket:
                    log.info("bucket not there yet; its writer creates it", bucket=self.bucket)
                waiting_for_bucket = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken watch is started again; the table keeps serving meanwhile
                log.warning("bucket watch failed; starting it again", bucket=self.bucket, error=repr(exc))
            else:
                waiting_for_bucket = False
                continue  # the watch was stopped by a reconnect: start the next one at once
            self.synced = False
            await asyncio.sleep(self.retry_s)

    async def _follow(self) -> None:
        kv = await self.bus.js.key_value(self.bucket)
        watcher = self._watcher = await kv.watchall()
        self.synced = False
        initial: list[RouteChange] = []
        async for entry in watcher:
            if entry is None:  # the bucket's state so far is delivered
                await self._apply(initial, synced=True)
                initial = []
                continue
            change = self._change_of(entry)
            if change is None:
                continue
            if self.synced:
                await self._apply([change], synced=True)
            else:
                initial.append(change)

    async def _apply(self, changes: list[RouteChange], *, synced: bool) -> None:
        await self.apply(changes, synced)
        self.revision = max([self.revision, *(c.revision for c in changes)])
        self.synced = synced

    def _change_of(self, entry: KeyValue.Entry) -> RouteChange | None:
        model = self.name_of(entry.key)
        if model is None:
            log.warning("ignoring a key that names nothing", bucket=self.bucket, key=entry.key)
            return None
        deleted = entry.operation in (KV_DEL, KV_PURGE)
        return RouteChange(model, None if deleted else entry.value or b"", entry.revision or 0)
