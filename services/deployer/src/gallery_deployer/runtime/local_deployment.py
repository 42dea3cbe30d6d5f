"""One deployment of the local runtime: its replicas, the rolling update and scaling that converge them.

A single task per deployment changes the set of replicas (start, drain, stop); `apply` and `scale`
only move the target and wake it. Each step is chosen by `plan_step` from what runs now, so a new
target mid-update simply changes the next step.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gallery_common.telemetry import get_logger

from .base import ChangeCallback, DeploymentStatus, RuntimeState, ServerSpec
from .supervisor import Replica, spec_key

log = get_logger(__name__)


class ReplicaFactory(Protocol):
    """What a deployment needs from its runtime to make and retire replicas."""

    def create(self, deployment: LocalDeployment, spec: ServerSpec, name: str) -> Replica: ...

    def release(self, replica: Replica) -> None: ...


@dataclass(frozen=True)
class Step:
    """The next change: start `start` replicas of the target spec, or drain and stop `stop`."""

    start: int = 0
    stop: tuple[Replica, ...] = ()


def plan_step(replicas: Sequence[Replica], target: ServerSpec, desired: int, failed: bool) -> Step | None:
    """The next step toward `desired` ready replicas of `target`; None when there is nothing to do now.

    A rolling update surges by one: a new replica starts, and only once it is ready does an old one
    go, so the ready count never drops below the smaller of the old and the new replica counts.
    """
    live = [r for r in replicas if r.alive and not r.stopping]
    key = spec_key(target)
    current = [r for r in live if r.key == key]
    stale = sorted((r for r in live if r.key != key), key=lambda r: r.ready)  # not-ready ones go first
    if desired == 0 and live:
        return Step(stop=tuple(live))
    if failed:  # start nothing; retire what a failed update left of the new spec
        return Step(stop=tuple(stale)) if stale else None
    if len(current) > desired:
        return Step(stop=tuple(current[desired:]))  # the newest go first
    if stale:
        if any(not r.ready for r in current):
            return None  # wait for the surge replica to become ready (or be given up)
        if len(live) > desired:
            return Step(stop=(stale[0],))
        return Step(start=1)
    if len(current) < desired:
        return Step(start=desired - len(current))
    return None


class LocalDeployment:
    """Desired state (spec, replica count) and the replicas converging to it."""

    def __init__(self, spec: ServerSpec, factory: ReplicaFactory, on_change: ChangeCallback | None) -> None:
        self.id = spec.deployment_id
        self.spec = spec
        self.desired = spec.replicas
        self.wake_replicas = max(spec.replicas, 1)  # what wake() restores after a scale to zero
        self.failure: str | None = None
        self.replicas: list[Replica] = []
        self.last_activity = time.monotonic()
        self.served: dict[tuple[str, int], float] = {}  # (replica, pid) → requests it had served at the last check
        self.wake_task: asyncio.Task[DeploymentStatus] | None = None
        self._factory = factory
        self._on_change = on_change
        self._seq = 0
        self._target = 0  # bumped by every apply/scale; the converge loop records the last one it planned for
        self._planned = -1
        self._pulse = asyncio.Event()
        self._notify_lock = asyncio.Lock()
        self._notified: tuple[str, ...] = ()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._converge(), name=f"deployment-{self.id}")

    # -- desired state ---------------------------------------------------------------------------

    async def apply(self, spec: ServerSpec) -> None:
        """Move to `spec` (a new artifact, variant or batching rolls; a new replica count scales);
        returns once the first step is taken, without waiting for readiness."""
        if spec_key(spec) != spec_key(self.spec):
            log.info("rolling_update", deployment=self.id, artifact=spec.artifact_uri, variant=spec.variant)
        self.spec = spec
        target = self._set_desired(spec.replicas)
        await self.wait_until(lambda: self._planned >= target)

    async def scale(self, replicas: int) -> None:
        """Set the replica count; returns once new replicas are started (not yet ready) or the ones
        beyond the count are drained and stopped."""
        target = self._set_desired(replicas)
        # A later apply/scale (a wake during an idle scale-down) moves the target: stop waiting for this one.
        await self.wait_until(
            lambda: (
                self._target != target
                or (self._planned >= target and sum(1 for r in self.replicas if r.alive) <= replicas)
            )
        )

    def _set_desired(self, replicas: int) -> int:
        if replicas == 0 and self.desired > 0:
            self.wake_replicas = self.desired
        self.desired = replicas
        self.failure = None
        for dead in [r for r in self.replicas if r.gave_up]:
            self._remove(dead)
        self.last_activity = time.monotonic()
        self._target += 1
        self._wake()
        return self._target

    # -- observed state --------------------------------------------------------------------------

    def status(self) -> DeploymentStatus:
        """Where the deployment stands now; `endpoints` are the ready replicas' base URLs."""
        key = spec_key(self.spec)
        live = [r for r in self.replicas if r.gave_up is None]
        ready = [r for r in live if r.ready]
        stale = [r for r in live if r.key != key]
        current_ready = sum(1 for r in ready if r.key == key)
        if self.failure:
            state, detail = RuntimeState.failed, self.failure
        elif self.desired == 0:
            state, detail = RuntimeState.scaled_to_zero, ""
        elif not stale and current_ready >= self.desired:
            state, detail = RuntimeState.ready, ""
        elif any(r.crashing for r in live):
            crashing = next(r for r in live if r.crashing)
            state, detail = RuntimeState.degraded, f"{crashing.name}: {crashing.detail}"
        else:
            state, detail = RuntimeState.starting, f"{current_ready}/{self.desired} replicas ready"
            if stale:
                detail = f"rolling update: {detail} on the new spec, {len(stale)} old still serving"
        serving = [r for r in live if r.key == key]
        # the provider is reported as the first ready replica of the current spec found it
        first = next((r for r in serving if r.ready), serving[0] if serving else None)
        placed = next((r.fallback for r in serving if r.fallback), None)
        reasons = (placed, first.provider_fallback if first is not None else None)
        fallback = "; ".join(reason for reason in reasons if reason) or None
        return DeploymentStatus(
            deployment_id=self.id,
            state=state,
            desired=self.desired,
            ready=len(ready),
            endpoints=tuple(r.url for r in ready if r.url),
            replicas=tuple(r.status() for r in self.replicas),
            detail=detail,
            fallback=fallback,
            execution_provider=first.execution_provider if first is not None else None,
        )

    async def wait_until(self, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Wait until `done()` holds (re-checked on every change); False when the timeout passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            pulse = self._pulse
            if done():
                return True
            if self._closed:
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await pulse.wait()
            except TimeoutError:
                return done()

    # -- converging ------------------------------------------------------------------------------

    async def _converge(self) -> None:
        while True:
            pulse, target = self._pulse, self._target
            step = plan_step(self.replicas, self.spec, self.desired, self.failure is not None)
            if step is None:
                self._mark_planned(target)
                await pulse.wait()
                continue
            try:
                await self._take(step)
            except Exception as exc:  # a broken step must fail the deployment, not silently end its task
                log.exception("converge_failed", deployment=self.id)
                self.failure = f"internal error while converging: {type(exc).__name__}: {exc}"
                await self._publish()
            self._mark_planned(target)

    async def _take(self, step: Step) -> None:
        for _ in range(step.start):
            self._seq += 1
            replica = self._factory.create(self, self.spec, f"{self.id}-{self._seq}")
            self.replicas.append(replica)
            replica.start()
        if step.start:
            self._mark_planned(self._target)
        if step.stop:
            await asyncio.gather(*(self._retire(r) for r in step.stop))

    def _mark_planned(self, target: int) -> None:
        if self._planned < target:
            self._planned = target
            self._wake()

    async def _retire(self, replica: Replica) -> None:
        replica.stopping = True
        await replica.stop()  # if cancelled here, close() still finds the replica and waits for it
        self._remove(replica)
        await self.replica_changed(replica)

    def _remove(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)
            self._factory.release(replica)

    async def replica_changed(self, replica: Replica) -> None:
        """Called by a replica on every change of its own: readiness, crash, give-up, drain."""
        if replica.gave_up and replica in self.replicas:
            if replica.key != spec_key(self.spec):
                self._remove(replica)  # an old replica that a rolling update was replacing anyway
            elif self.failure is None:
                self._fail(replica)
        await self._publish()
        self._wake()

    def _fail(self, replica: Replica) -> None:
        key = spec_key(self.spec)
        old = [r for r in self.replicas if r.alive and not r.stopping and r.key != key]
        if old:
            # A rolling update whose new replicas cannot run: keep the old ones serving.
            previous = old[0].spec
            self.failure = (
                f"rolling update to {self.spec.artifact_uri} failed ({replica.name}: {replica.gave_up}); "
                f"still serving {previous.artifact_uri}"
            )
            self.spec = previous
        else:
            self.failure = f"{replica.name}: {replica.gave_up}"
        log.error("deployment_failed", deployment=self.id, reason=self.failure)

    async def _publish(self) -> None:
        """Tell on_change when the set of ready endpoints changed, in order, with the latest status."""
        async with self._notify_lock:
            status = self.status()
            if status.endpoints == self._notified:
                return
            self._notified = status.endpoints
            if self._on_change is None:
                return
            try:
                result = self._on_change(status)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change_failed", deployment=self.id)

    def _wake(self) -> None:
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def close(self) -> None:
        """Stop converging and drain every replica; waiters (wait_ready, wake) return at once."""
        self._closed = True
        self._wake()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
        for replica in list(self.replicas):
            self._remove(replica)
        await self._publish()
        self._wake()
