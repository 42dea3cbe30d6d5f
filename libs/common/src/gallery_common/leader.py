"""Leader election: of the processes of one role (the deployer, the monitor) one leads and acts; the
others stand by and take over when it stops renewing its claim.

The claim lives in a `LeaderLock`: a key of the JetStream key-value bucket `leaders` (`KvLeaderLock`;
the bucket's TTL makes a dead leader's key expire) or a Kubernetes Lease (`LeaseLeaderLock` in
`gallery_common.leader_lease`, which also chooses between the two). The leader renews it every third
of the TTL with the version it last wrote, so a write expecting another version means someone else
holds it. A follower reads it as often: gone, released, or unchanged for a whole TTL (by its own
clock), it takes it; of two takers the store lets one win.

`LeaderElection.run(lock, lead)` runs `lead(term)` in a task of its own while this process leads
and cancels it the moment leadership is lost: another process took the claim, or no renewal
succeeded for two thirds of the TTL (the bus is down), which is before the claim can expire and a
follower take it. The term is the fencing token: it grows with every takeover (the KV revision of
the taking write, the Lease's transition count); leader-only actions call `check()`, which raises
`NotLeader` (a 503 naming the leader) in a process that does not lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from fastapi import APIRouter, Request
from nats.js import errors as js_errors
from nats.js.kv import KeyValue
from prometheus_client import Gauge
from pydantic import Field

from .auth import requires
from .bus import EventBus
from .errors import Unavailable
from .events import Payload, make_event
from .nats_auth import LEADERS_BUCKET
from .routes_kv import ensure_bucket
from .settings import GallerySettings
from .telemetry import gauge, get_logger

__all__ = [
    "LEADERS_BUCKET",
    "Claim",
    "Held",
    "KvLeaderLock",
    "LeaderElection",
    "LeaderLock",
    "LeaderSettings",
    "LockLost",
    "NotLeader",
    "leader_router",
    "publish_as_leader",
    "require_leader",
]

T = TypeVar("T")
TERM_EXTENSION = "leaderterm"  # the CloudEvents extension attribute a leader's events carry its term in
STEP_DOWN_GRACE_S = 5.0  # how long a cancelled term may take to hand back what it holds
log = get_logger(__name__)
_GAUGES: dict[str, Gauge] = {}


class LeaderSettings(GallerySettings):
    """The settings of a service that elects a leader (`GALLERY_LEADER_*`)."""

    leader_ttl_s: float = Field(
        default=6.0,
        ge=1.0,
        le=300.0,
        description="how long a leader's claim outlives its last renewal; renewed every third of it, a dead "
        "leader is replaced within about 4/3 of it",
    )
    leader_identity: str | None = Field(
        default=None,
        description="this process's name in the claim; default <hostname>-<pid> (the pod name on Kubernetes)",
    )
    leader_lock: Literal["auto", "kv", "lease"] = Field(
        default="auto",
        description="where the claim is held: kv (the JetStream bucket 'leaders'), lease (a Kubernetes Lease "
        "<role>-leader), auto (the Lease for a deployer with the Kubernetes runtime and a monitor in a pod, "
        "else the bucket)",
    )
    leader_lease_namespace: str | None = Field(
        default=None,
        description="the Lease's namespace; default the deployer's Kubernetes namespace, else the pod's own",
    )

    @property
    def resolved_leader_identity(self) -> str:
        return self.leader_identity or f"{socket.gethostname()}-{os.getpid()}"


async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
    """`awaitable` with a time limit (TimeoutError past it). Not `asyncio.wait_for`: on Python 3.11 a cancel
    that arrives as the awaited call finishes is lost there, and a campaign loop cancelled at that moment
    ran on forever (a stopping service never stopped; found as a hang of the election's unit tests)."""
    async with asyncio.timeout(seconds):
        return await awaitable


class NotLeader(Unavailable):
    """A leader-only action asked of a process that does not lead (503)."""


class LockLost(Exception):
    """The claim is someone else's: a write expecting the version this process last saw was refused."""


@dataclass(frozen=True)
class Claim:
    """Who leads a role, as the leader writes it: its identity, where its API is, the TTL it renews within."""

    holder: str
    url: str | None
    ttl_s: float


@dataclass(frozen=True)
class Held:
    """The claim as stored now. `version` changes with every write (a KV revision, a resourceVersion);
    `term` only with a takeover (the fencing token). `claim` is None once released."""

    claim: Claim | None
    version: str
    term: int


class LeaderLock(Protocol):
    """Where a role's claim is held; every write is conditional on the version last seen."""

    ttl_s: float  # the TTL the store enforces or the followers assume

    async def read(self) -> Held | None:
        """The stored claim; None when there is none (never written, or expired)."""
        ...

    async def take(self, seen: Held | None, claim: Claim) -> Held:
        """Write `claim` as a new term over `seen` (None: nothing stored); LockLost when it changed."""
        ...

    async def renew(self, mine: Held, claim: Claim) -> Held:
        """Write `claim` again in the same term; LockLost when the stored version is no longer `mine`'s."""
        ...

    async def release(self, mine: Held) -> None:
        """Give the claim up so that a follower takes it at once (only if it is still `mine`)."""
        ...


def _leader_gauge(role: str) -> Gauge:
    if role not in _GAUGES:
        _GAUGES[role] = gauge(f"{role}_leader_state", f"1 while this {role} process is the leader, else 0")
    return _GAUGES[role]


class LeaderElection:
    """This process's side of one role's election; see the module docstring."""

    def __init__(self, role: str, identity: str, url: str | None, ttl_s: float) -> None:
        self.role = role
        self.identity = identity
        self.url = url
        self.ttl_s = ttl_s
        self._held: Held | None = None
        self._seen: Held | None = None  # the last claim read from the store (another's, or ours)
        self._seen_since = 0.0  # monotonic time its version was first seen
        self._renewed_at = 0.0  # monotonic time the last successful write was sent
        self._term_task: asyncio.Task[None] | None = None
        self._gauge = _leader_gauge(role)
        self._gauge.set(0)

    @property
    def is_leader(self) -> bool:
        return self._held is not None

    @property
    def term(self) -> int | None:
        """The fencing token while leading, else None."""
        return self._held.term if self._held is not None else None

    @property
    def leader(self) -> Claim | None:
        """The leader as last seen: this process's claim while it leads."""
        if self._held is not None:
            return self._claim()
        return self._seen.claim if self._seen is not None else None

    def check(self) -> int:
        """The term, for a leader-only action about to run; NotLeader when this process does not lead."""
        held = self._held
        if held is None:
            raise NotLeader(self.refusal())
        return held.term

    def refusal(self) -> str:
        other = self.leader
        if other is None or other.holder == self.identity:
            return f"this {self.role} is not the leader and no leader is known yet; try again in a few seconds"
        where = f" at {other.url}" if other.url else ""
        return f"this {self.role} is not the leader; the leader is {other.holder}{where}"

    def status(self) -> dict[str, Any]:
        """What /leader answers."""
        other = self.leader
        return {
            "role": self.role,
            "identity": self.identity,
            "leader": self.is_leader,
            "term": self.term,
            "holder": other.holder if other else None,
            "holder_url": other.url if other else None,
            "ttl_s": self.ttl_s,
        }

    def _claim(self) -> Claim:
        return Claim(self.identity, self.url, self.ttl_s)

    async def run(self, lock: LeaderLock, lead: Callable[[int], Awaitable[None]]) -> None:
        """Campaign until cancelled; while leading, `lead(term)` runs and is cancelled when leadership ends.
        On the way out the claim is released, so a follower takes over without waiting for the TTL."""
        self.ttl_s = lock.ttl_s
        try:
            while True:
                if self._held is None:
                    await self._campaign(lock, lead)
                    await asyncio.sleep(self.ttl_s / 3)
                else:
                    await self._renew(lock)
                    if self._held is not None:
                        await asyncio.sleep(max(0.0, min(self.ttl_s / 3, self._deadline() - time.monotonic())))
        finally:
            held = self._held
            await self._step_down("the process is stopping")
            if held is not None:
                with contextlib.suppress(Exception):
                    await _within(2.0, lock.release(held))

    def _deadline(self) -> float:
        """When a leader that could not renew must have stepped down: the claim lives a third longer."""
        return self._renewed_at + self.ttl_s * 2 / 3

    async def _campaign(self, lock: LeaderLock, lead: Callable[[int], Awaitable[None]]) -> None:
        try:
            current = await _within(self.ttl_s / 3, lock.read())
        except Exception as exc:
            log.debug("leader_read_failed", role=self.role, reason=f"{type(exc).__name__}: {exc}")
            return
        now = time.monotonic()
        if current is not None and current.claim is not None and current.claim.holder != self.identity:
            if self._seen is None or current.version != self._seen.version:
                self._seen, self._seen_since = current, now
                return
            if now - self._seen_since < current.claim.ttl_s:
                return  # its leader renews it
            log.warning("leader_claim_stale", role=self.role, holder=current.claim.holder, ttl_s=current.claim.ttl_s)
        sent = time.monotonic()
        try:
            held = await _within(self.ttl_s / 3, lock.take(current, self._claim()))
        except LockLost:
            return  # another follower was faster
        except Exception as exc:
            log.debug("leader_take_failed", role=self.role, reason=f"{type(exc).__name__}: {exc}")
            return
        self._held, self._seen, self._renewed_at = held, held, sent
        self._gauge.set(1)
        log.info("leader_elected", role=self.role, identity=self.identity, term=held.term)
        self._term_task = asyncio.create_task(self._lead(lock, lead, held), name=f"leader:{self.role}")

    async def _lead(self, lock: LeaderLock, lead: Callable[[int], Awaitable[None]], held: Held) -> None:
        try:
            await lead(held.term)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("leader_duties_failed", role=self.role, term=held.term, exc_info=exc)
        # duties that end by themselves hand the lead to whichever process takes it first
        current = self._held
        if current is not None and current.term == held.term:
            self._held = None
            self._gauge.set(0)
            with contextlib.suppress(Exception):
                await _within(self.ttl_s / 3, lock.release(current))

    async def _renew(self, lock: LeaderLock) -> None:
        held = self._held
        assert held is not None
        sent = time.monotonic()
        try:
            renewed = await _within(max(0.05, self._deadline() - sent), lock.renew(held, self._claim()))
        except LockLost:
            await self._step_down("another process holds the claim")
            return
        except Exception as exc:
            if time.monotonic() >= self._deadline():
                await self._step_down(f"no renewal for {self.ttl_s * 2 / 3:g} s ({type(exc).__name__}: {exc})")
            else:
                log.warning("leader_renew_failed", role=self.role, reason=f"{type(exc).__name__}: {exc}")
            return
        if self._held is held:
            self._held, self._seen, self._renewed_at = renewed, renewed, sent

    async def _step_down(self, reason: str) -> None:
        """Stop acting at once (check() fails from here on), then wait for the term's task to end."""
        task, self._term_task = self._term_task, None
        was = self._held
        self._held = None
        self._gauge.set(0)
        if was is not None:
            log.warning("leader_stepped_down", role=self.role, term=was.term, reason=reason)
        if task is not None and not task.done():
            me = asyncio.current_task()
            cancels = me.cancelling() if me is not None else 0  # >0 when stepping down because run() was cancelled
            task.cancel()
            try:
                await _within(STEP_DOWN_GRACE_S, asyncio.shield(task))
            except TimeoutError:
                log.warning("leader_duties_still_running", role=self.role, grace_s=STEP_DOWN_GRACE_S)
            except asyncio.CancelledError:
                # the term's task ending cancelled is expected; a cancel of this task during the wait goes on up
                # (it may arrive as the term's task ends, so the count tells, not whether the term's task is done)
                if not task.done() or (me is not None and me.cancelling() > cancels):
                    raise


class KvLeaderLock:
    """A role's claim as key `<role>` of the JetStream key-value bucket `leaders`.

    The bucket keeps one revision per key for `ttl_s` (its max_age), so a key no one renews expires on
    the server; every write expects the key's current revision (`create()` expects none). A bucket
    that exists already keeps its TTL, and the election follows it.
    """

    def __init__(self, bus: EventBus, role: str, ttl_s: float, bucket: str = LEADERS_BUCKET) -> None:
        self.bus = bus
        self.role = role
        self.ttl_s = ttl_s
        self.bucket = bucket
        self._kv: KeyValue | None = None

    async def open(self) -> KvLeaderLock:
        """Find or create the bucket (with retries while NATS is away); returns self."""

        async def attempt() -> KeyValue:
            # replicas as the event streams': on a cluster a bucket on one node would lose every
            # leader's claim with that node
            return await ensure_bucket(
                self.bus.js,
                self.bucket,
                history=1,
                replicas=self.bus.stream_replicas,
                description="Model Gallery leader election: one key per role",
                ttl=self.ttl_s,
            )

        self._kv = await self.bus.with_retry(attempt, what=f"open the {self.bucket} bucket")
        found = (await self._kv.status()).ttl
        if found and abs(found - self.ttl_s) > 1e-3:
            log.warning("leader_bucket_ttl_differs", bucket=self.bucket, wanted=self.ttl_s, found=found)
            self.ttl_s = found
        return self

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("KvLeaderLock is not open: call open() first")
        return self._kv

    async def read(self) -> Held | None:
        try:
            entry = await self.kv.get(self.role)
        except js_errors.KeyNotFoundError:  # never written, expired, or deleted
            return None
        return _decode(entry.value or b"", entry.revision or 0)

    async def take(self, seen: Held | None, claim: Claim) -> Held:
        try:
            if seen is None:
                revision = await self.kv.create(self.role, _encode(claim, None))
            else:
                revision = await self.kv.update(self.role, _encode(claim, None), last=int(seen.version))
        except js_errors.KeyWrongLastSequenceError as exc:
            raise LockLost(str(exc)) from exc
        return Held(claim, str(revision), revision)

    async def renew(self, mine: Held, claim: Claim) -> Held:
        try:
            revision = await self.kv.update(self.role, _encode(claim, mine.term), last=int(mine.version))
        except js_errors.KeyWrongLastSequenceError as exc:  # taken, or expired meanwhile
            raise LockLost(str(exc)) from exc
        return Held(claim, str(revision), mine.term)

    async def release(self, mine: Held) -> None:
        with contextlib.suppress(js_errors.KeyWrongLastSequenceError):
            await self.kv.delete(self.role, last=int(mine.version))


def _encode(claim: Claim, term: int | None) -> bytes:
    return json.dumps({"holder": claim.holder, "url": claim.url, "ttl_s": claim.ttl_s, "term": term}).encode()


def _decode(value: bytes, revision: int) -> Held:
    """A stored claim; the taking write carries no term yet, its revision is the term."""
    try:
        doc = json.loads(value)
        claim = Claim(str(doc["holder"]), doc.get("url"), float(doc["ttl_s"]))
        term = int(doc.get("term") or revision)
    except (ValueError, KeyError, TypeError):
        return Held(None, str(revision), revision)  # unreadable: treated as released
    return Held(claim, str(revision), term)


async def publish_as_leader(bus: EventBus, election: LeaderElection, payload: Payload, event_id: str) -> None:
    """Publish `payload` only while this process leads (NotLeader otherwise), its term in `leaderterm`."""
    event = make_event(payload, bus.source, event_id=event_id)
    setattr(event, TERM_EXTENSION, election.check())
    await bus.publish_event(event)


def require_leader(request: Request) -> None:
    """Route dependency: 503 naming the leader unless this process leads (apps without an election pass)."""
    election: LeaderElection | None = getattr(request.app.state, "leader", None)
    if election is not None:
        election.check()


def leader_router(election: LeaderElection) -> APIRouter:
    """GET /leader: whether this process leads, its term, and who leads (no token, like /readyz)."""
    router = APIRouter(tags=["operations"], dependencies=[requires(None)])

    @router.get("/leader", summary="This process's part in its role's leader election")
    async def leader() -> dict[str, Any]:
        return election.status()

    return router
