"""Leader election over a Kubernetes Lease, through the official client against the API contract (the
in-process fake API server): two candidates get one leader, the holder renews, an expired Lease is
taken in the next transition, a write with a stale resourceVersion loses, a stopping leader hands over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from k8s_api_fake import FakeKubernetesApi
from kubernetes import client
from leader_candidates import Candidate, candidate
from waiting import eventually

from gallery_common.errors import Unavailable
from gallery_common.kube_api import call
from gallery_common.leader import Claim, LockLost
from gallery_common.leader_lease import URL_ANNOTATION, LeaseLeaderLock, micro_time

NS = "modelgallery"
TTL_S = 1.0  # leaseDurationSeconds is whole seconds: the shortest Lease there is


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApi]:
    with FakeKubernetesApi() as api:
        yield api


def api_client_for(fake: FakeKubernetesApi) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=fake.url, no_proxy="127.0.0.1"))


@asynccontextmanager
async def lease_lock(fake: FakeKubernetesApi, role: str = "deployer") -> AsyncIterator[LeaseLeaderLock]:
    api_client = api_client_for(fake)
    try:
        yield LeaseLeaderLock(role, TTL_S, NS, api_client)
    finally:
        api_client.close()


@asynccontextmanager
async def contender(fake: FakeKubernetesApi, name: str) -> AsyncIterator[Candidate[LeaseLeaderLock]]:
    """A candidate over its own API client."""
    async with lease_lock(fake) as lock, candidate(lock, name, url=f"http://{name}:8004") as running:
        yield running


def spec_of(fake: FakeKubernetesApi) -> dict[str, Any]:
    lease = fake.get("leases", "deployer-leader")
    assert lease is not None, "no Lease deployer-leader"
    return lease["spec"]  # type: ignore[no-any-return]


async def test_two_candidates_get_one_leader_and_the_holder_renews_the_lease(fake: FakeKubernetesApi) -> None:
    async with contender(fake, "a") as a_run, contender(fake, "b") as b_run:
        a, b = a_run.election, b_run.election
        await eventually(lambda: a.is_leader or b.is_leader, 15.0, "a leader")
        leader, follower = (a, b) if a.is_leader else (b, a)
        first = spec_of(fake)
        assert first["holderIdentity"] == leader.identity
        assert (first["leaseDurationSeconds"], first["leaseTransitions"]) == (1, 0)
        lease = fake.get("leases", "deployer-leader")
        assert lease is not None and lease["metadata"]["annotations"][URL_ANNOTATION] == leader.url

        await eventually(lambda: renewed_at(fake) > renewed_at(fake, first) + timedelta(seconds=0.6), 15.0, "renewals")
        assert leader.is_leader and not follower.is_leader, "a renewed Lease changed hands"
        assert a_run.terms + b_run.terms == [1]
        renewed = spec_of(fake)
        assert renewed["holderIdentity"] == leader.identity
        assert (renewed["acquireTime"], renewed["leaseTransitions"]) == (first["acquireTime"], 0)
        assert follower.leader == Claim(leader.identity, leader.url, TTL_S)
        created = [r for r in fake.requests if r.method == "POST"]
        assert len(created) >= 1 and all(r.path.endswith("/namespaces/modelgallery/leases") for r in created)


def renewed_at(fake: FakeKubernetesApi, spec: dict[str, Any] | None = None) -> datetime:
    return datetime.fromisoformat((spec or spec_of(fake))["renewTime"])


async def test_an_expired_lease_is_taken_at_once_in_the_next_transition(fake: FakeKubernetesApi) -> None:
    seeding = api_client_for(fake)
    try:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "deployer-leader", "namespace": NS},
            "spec": {
                "holderIdentity": "deployer-7d9f-dead",
                "leaseDurationSeconds": 15,
                "acquireTime": micro_time(an_hour_ago),
                "renewTime": micro_time(an_hour_ago),
                "leaseTransitions": 4,
            },
        }
        await call("seeding a Lease", client.CoordinationV1Api(seeding).create_namespaced_lease, NS, body, timeout_s=5)
    finally:
        seeding.close()
    started = time.monotonic()
    async with contender(fake, "heir") as running:
        heir = running.election
        # its duties started (the election creates their task once it holds the Lease)
        await eventually(lambda: running.terms, 15.0, "the heir leads")
        # expired by its renewTime: no need to watch it unchanged for its 15 s
        assert time.monotonic() - started < 15
        spec = spec_of(fake)
        assert (spec["holderIdentity"], spec["leaseTransitions"], spec["leaseDurationSeconds"]) == ("heir", 5, 1)
        assert datetime.fromisoformat(spec["acquireTime"]) > an_hour_ago + timedelta(minutes=59)
        assert running.terms == [6] and heir.term == 6  # the term is leaseTransitions + 1


async def test_a_write_with_a_stale_resource_version_loses(fake: FakeKubernetesApi) -> None:
    async with lease_lock(fake) as a, lease_lock(fake) as b:
        mine = await a.take(None, Claim("a", None, TTL_S))
        with pytest.raises(LockLost, match="already exists"):
            await b.take(None, Claim("b", None, TTL_S))  # created in between: 409 AlreadyExists
        seen = await b.read()
        assert seen is not None and seen.claim == Claim("a", None, TTL_S) and seen.term == 1
        mine = await a.renew(mine, Claim("a", None, TTL_S))  # a new resourceVersion
        with pytest.raises(LockLost, match="the object has been modified"):
            await b.take(seen, Claim("b", None, TTL_S))  # b read before that renewal
        assert spec_of(fake)["holderIdentity"] == "a"

        taken = await b.take(await b.read(), Claim("b", None, TTL_S))  # a takeover, as of a stale claim
        assert taken.term == 2 and spec_of(fake)["leaseTransitions"] == 1
        with pytest.raises(LockLost, match="the object has been modified"):
            await a.renew(mine, Claim("a", None, TTL_S))  # a learns it lost at its next renewal
        await a.release(mine)  # releasing what is no longer its own leaves b's claim alone
        assert spec_of(fake)["holderIdentity"] == "b"

        await b.release(taken)
        released = await a.read()
        assert released is not None and released.claim is None and released.term == 2
        assert "holderIdentity" not in spec_of(fake) and spec_of(fake)["leaseTransitions"] == 1


async def test_a_stopping_leader_releases_the_lease_and_the_follower_takes_it_at_its_next_look(
    fake: FakeKubernetesApi,
) -> None:
    async with contender(fake, "a") as a:
        await eventually(lambda: a.terms, 15.0, "a leads")
        async with contender(fake, "b") as b_run:
            b = b_run.election
            await eventually(lambda: b.leader is not None and b.leader.holder == "a", 15.0, "b sees a")
            a.task.cancel()
            await asyncio.gather(a.task, return_exceptions=True)
            stopped = len(fake.requests)
            [release] = [r for r in fake.requests if r.method == "PUT" and "holderIdentity" not in r.body["spec"]]
            assert release.body["spec"]["leaseTransitions"] == 0
            # is_leader turns true a moment before lead() starts: wait for its duties, not the flag
            await eventually(lambda: b_run.terms, 15.0, "b leads")
            looks = [r for r in fake.requests[stopped:] if r.method == "GET"]
            assert len(looks) <= 1, "b watched a released Lease for a TTL instead of taking it"
            spec = spec_of(fake)
            assert b_run.terms == [2] and (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)


async def test_an_api_that_refuses_is_a_failed_renewal_not_a_lost_claim(fake: FakeKubernetesApi) -> None:
    async with lease_lock(fake) as lock:
        mine = await lock.take(None, Claim("a", None, TTL_S))
        fake.fail_next("PUT", 403, "Forbidden", 'leases.coordination.k8s.io "deployer-leader" is forbidden')
        with pytest.raises(Unavailable, match="credentials for replacing Lease modelgallery/deployer-leader"):
            await lock.renew(mine, Claim("a", None, TTL_S))
        renewed = await lock.renew(mine, Claim("a", None, TTL_S))  # still its own
        assert renewed.term == mine.term and renewed.version != mine.version


async def test_a_hanging_api_fails_a_renewal_in_time_for_the_leader_to_step_down(
    fake: FakeKubernetesApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the lock's own client, as a service makes it (from the kubeconfig here)
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    lock = LeaseLeaderLock("deployer", 3.0, NS)
    try:
        mine = await lock.take(None, Claim("a", None, 3.0))
        fake.delay_next("PUT", 5.0)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="Kubernetes API unreachable while replacing Lease"):
            await lock.renew(mine, Claim("a", None, 3.0))  # one try, a third of the Lease: 1 s
        # the Lease is 3 s: the leader hears of the failure before it expires (the delay is 5 s)
        assert time.monotonic() - started < 3.0, "the leader would step down after its Lease expired"

        fake.delay_next("PUT", 5.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # the election's limit abandons the request
            await asyncio.wait_for(lock.renew(mine, Claim("a", None, 3.0)), 0.2)
        assert time.monotonic() - started < 3.0  # abandoned, not waited out
    finally:
        await lock.close()
