"""A role's leader claim as a Kubernetes Lease (coordination.k8s.io/v1), and the choice between it and
the JetStream key.

The Lease `<role>-leader` in the service's namespace holds the leader's `holderIdentity`,
`leaseDurationSeconds` (the TTL, whole seconds), `acquireTime`, `renewTime` and `leaseTransitions`;
its API URL rides in an annotation. Every write is conditional: a take of a Lease that does not
exist is a create (409 AlreadyExists when another candidate created it first), every other write a
replace carrying the `metadata.resourceVersion` last read (409 Conflict when anyone wrote since). The
API server enforces no expiry: a Lease whose `renewTime + leaseDurationSeconds` has passed by this
process's clock reads as released and may be taken at once; a live leader renews every third of the
duration, so that needs the clocks of two pods to differ by more than two thirds of it.

The term is `leaseTransitions + 1`. It changes only with a takeover and stays the same while the
leader renews, which is what a fencing token must do, and every candidate reads the same number from
the object. The `resourceVersion` changes with every renewal, and the API conventions forbid comparing
it as a number. Deleting the Lease restarts its transitions (no service is granted delete).
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from kubernetes import client

from .bus import EventBus
from .errors import Conflict, NotFound
from .kube_api import Obj, call, default_api_client, in_cluster, pod_namespace
from .leader import Claim, Held, KvLeaderLock, LeaderLock, LeaderSettings, LockLost

URL_ANNOTATION = "modelgallery.io/leader-url"
LEASE_SUFFIX = "-leader"
REQUEST_TIMEOUT_S = 5.0  # at most; a third of the duration when that is less
DEFAULT_NAMESPACE = "modelgallery"  # the manifests' namespace, as in the Kubernetes runtime's options


def lease_name(role: str) -> str:
    """The Lease a role's leader holds (RBAC names it in resourceNames)."""
    return f"{role}{LEASE_SUFFIX}"


def micro_time(when: datetime) -> str:
    """A `MicroTime` as the API writes it: RFC 3339 in UTC with microseconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


class LeaseLeaderLock:
    """`LeaderLock` over the Lease `<role>-leader` in `namespace`; see the module docstring.

    `api_client` defaults to the in-cluster service account, else the local kubeconfig, without
    retries. Each request ends after a third of the duration at most, and the election's own time
    limits abandon one that hangs: a leader that cannot renew must step down before its Lease expires.
    """

    def __init__(
        self,
        role: str,
        ttl_s: float,
        namespace: str,
        api_client: client.ApiClient | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self.role = role
        self.name = lease_name(role)
        self.namespace = namespace
        self.duration_s = max(1, math.ceil(ttl_s))  # leaseDurationSeconds is a whole number
        self.ttl_s = float(self.duration_s)
        self.request_timeout_s = request_timeout_s or min(REQUEST_TIMEOUT_S, max(0.5, self.duration_s / 3))
        self._owns_client = api_client is None
        self._client = api_client or default_api_client(retries=False)
        self._leases = client.CoordinationV1Api(self._client)
        self._acquired = ""  # acquireTime of the term this process holds

    async def close(self) -> None:
        """Close the API client when this lock created it."""
        if self._owns_client:
            await anyio.to_thread.run_sync(self._client.close)

    async def read(self) -> Held | None:
        try:
            lease = await self._call("reading", self._leases.read_namespaced_lease, self.name, self.namespace)
        except NotFound:
            return None
        return self._held(lease, datetime.now(UTC))

    async def take(self, seen: Held | None, claim: Claim) -> Held:
        now = datetime.now(UTC)
        transitions = 0 if seen is None else seen.term  # the term taken over is its transitions + 1
        body = self._lease(claim, transitions, micro_time(now), now, None if seen is None else seen.version)
        try:
            if seen is None:
                lease = await self._call("creating", self._leases.create_namespaced_lease, self.namespace, body)
            else:
                lease = await self._replace(body)
        except Conflict as exc:
            raise LockLost(str(exc)) from None
        self._acquired = body["spec"]["acquireTime"]
        return self._written(lease, claim)

    async def renew(self, mine: Held, claim: Claim) -> Held:
        body = self._lease(claim, mine.term - 1, self._acquired, datetime.now(UTC), mine.version)
        try:
            lease = await self._replace(body)
        except (Conflict, NotFound) as exc:  # taken, or deleted under it
            raise LockLost(str(exc)) from None
        return self._written(lease, claim)

    async def release(self, mine: Held) -> None:
        body = self._lease(None, mine.term - 1, self._acquired, datetime.now(UTC), mine.version)
        try:
            await self._replace(body)
        except (Conflict, NotFound):
            return  # no longer ours: nothing to give up

    def _lease(
        self, claim: Claim | None, transitions: int, acquired: str, renewed: datetime, version: str | None
    ) -> Obj:
        metadata: Obj = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/name": self.role, "app.kubernetes.io/part-of": "modelgallery"},
        }
        if claim is not None and claim.url:
            metadata["annotations"] = {URL_ANNOTATION: claim.url}
        if version is not None:
            metadata["resourceVersion"] = version
        spec: Obj = {
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": acquired or None,
            "renewTime": micro_time(renewed),
            "leaseTransitions": transitions,
        }
        if claim is not None:
            spec["holderIdentity"] = claim.holder
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _replace(self, body: Obj) -> Obj:
        return await self._call("replacing", self._leases.replace_namespaced_lease, self.name, self.namespace, body)

    async def _call(self, verb: str, fn: Any, *args: Any) -> Obj:
        what = f"{verb} Lease {self.namespace}/{self.name}"
        return await call(what, fn, *args, timeout_s=self.request_timeout_s, abandon_on_cancel=True)

    def _written(self, lease: Obj, claim: Claim) -> Held:
        spec = lease.get("spec") or {}
        return Held(claim, str(lease["metadata"]["resourceVersion"]), int(spec.get("leaseTransitions") or 0) + 1)

    def _held(self, lease: Obj, now: datetime) -> Held:
        """The stored claim; None as its claim when released or expired, so that a follower takes it."""
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        version, term = str(meta.get("resourceVersion", "")), int(spec.get("leaseTransitions") or 0) + 1
        holder, duration = spec.get("holderIdentity"), spec.get("leaseDurationSeconds")
        renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
        if not holder or not duration or renewed is None or renewed + timedelta(seconds=int(duration)) < now:
            return Held(None, version, term)
        url = (meta.get("annotations") or {}).get(URL_ANNOTATION)
        return Held(Claim(str(holder), url, float(duration)), version, term)


async def open_leader_lock(
    settings: LeaderSettings,
    bus: EventBus,
    role: str,
    stack: AsyncExitStack,
    *,
    on_kubernetes: bool,
    namespace: str | None = None,
) -> LeaderLock:
    """The lock GALLERY_LEADER_LOCK names: `lease` (a Kubernetes Lease), `kv` (the JetStream key), or
    `auto`: the Lease when `on_kubernetes` (the service says what that means), else the key. The
    Lease's namespace: GALLERY_LEADER_LEASE_NAMESPACE, else `namespace`, else the pod's own, else
    `modelgallery`. `stack` closes the lock's API client."""
    if settings.leader_lock == "lease" or (settings.leader_lock == "auto" and on_kubernetes):
        where = settings.leader_lease_namespace or namespace or pod_namespace() or DEFAULT_NAMESPACE
        lease = LeaseLeaderLock(role, settings.leader_ttl_s, where)
        stack.push_async_callback(lease.close)
        return lease
    return await KvLeaderLock(bus, role, settings.leader_ttl_s).open()


__all__ = ["URL_ANNOTATION", "LeaseLeaderLock", "in_cluster", "lease_name", "open_leader_lock"]
