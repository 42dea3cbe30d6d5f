"""`LeaderElection`'s edge cases over an in-memory `LeaderLock` with a tiny TTL: a leader that cannot
renew steps down after two thirds of it, one whose claim was taken steps down at its next renewal, a
claim no one renews is taken in a new term, and a stopping leader hands over at once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from leader_candidates import candidate
from waiting import eventually

from gallery_common.leader import Claim, Held, LeaderElection, LockLost, NotLeader

TTL_S = 0.3  # renewals every 0.1 s; a leader that cannot renew steps down after 0.2 s


class ClaimStore:
    """One stored claim with a version that changes on every write, like a KV key or a Lease."""

    def __init__(self) -> None:
        self.held: Held | None = None
        self._versions = 0
        self._terms = 0

    def write(self, claim: Claim | None, term: int) -> Held:
        self._versions += 1
        self.held = Held(claim, str(self._versions), term)
        return self.held

    def next_term(self) -> int:
        self._terms += 1
        return self._terms


@dataclass
class FakeLock:
    """A candidate's view of a `ClaimStore`; `down` makes every call fail as an unreachable store does."""

    store: ClaimStore
    ttl_s: float = TTL_S
    down: bool = False
    calls: list[str] = field(default_factory=list)
    renewed_at: float = 0.0  # monotonic time of the last successful renewal

    def _reach(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise ConnectionError("the store is unreachable")

    async def read(self) -> Held | None:
        self._reach("read")
        return self.store.held

    async def take(self, seen: Held | None, claim: Claim) -> Held:
        self._reach("take")
        if self.store.held != seen:
            raise LockLost("changed since it was read")
        return self.store.write(claim, self.store.next_term())

    async def renew(self, mine: Held, claim: Claim) -> Held:
        self._reach("renew")
        if self.store.held is None or self.store.held.version != mine.version:
            raise LockLost("not the version this leader wrote")
        self.renewed_at = time.monotonic()
        return self.store.write(claim, mine.term)

    async def release(self, mine: Held) -> None:
        self._reach("release")
        if self.store.held is not None and self.store.held.version == mine.version:
            self.store.write(None, mine.term)


async def test_two_candidates_get_one_leader_that_keeps_renewing() -> None:
    store = ClaimStore()
    async with candidate(FakeLock(store), "a") as a, candidate(FakeLock(store), "b") as b:
        await eventually(lambda: a.election.is_leader or b.election.is_leader, 5.0, "a leader")
        leader, follower = (a, b) if a.election.is_leader else (b, a)
        await asyncio.sleep(TTL_S * 2)  # six renewals
        assert leader.election.is_leader and not follower.election.is_leader
        assert leader.terms == [1] and follower.terms == []
        assert leader.lock.calls.count("renew") >= 3
        assert follower.election.leader == Claim(leader.election.identity, leader.election.url, TTL_S)
        with pytest.raises(NotLeader, match=f"the leader is {leader.election.identity} at http://"):
            follower.election.check()


async def test_a_leader_that_cannot_renew_for_two_thirds_of_the_ttl_steps_down() -> None:
    store = ClaimStore()
    async with candidate(FakeLock(store), "a") as a:
        await eventually(lambda: a.lock.renewed_at > 0, 5.0, "a renewal")
        a.lock.down = True
        await eventually(lambda: not a.election.is_leader, 5.0, "a steps down")
        assert a.lock.calls.count("renew") >= 2, "no renewal failed"
        assert time.monotonic() - a.lock.renewed_at >= TTL_S * 2 / 3 - 0.01, "stepped down at the first failure"
        # check() fails from the step-down on; the duties' task ends a moment later
        await eventually(lambda: a.cancelled == [1], 5.0, "the term's duties cancelled")
        with pytest.raises(NotLeader):
            a.election.check()
        # it could not release: its claim stays until it expires, and no one else acted meanwhile
        assert store.held is not None and store.held.claim is not None and store.held.claim.holder == "a"


async def test_a_renewal_failing_for_less_than_two_thirds_of_the_ttl_keeps_the_lead() -> None:
    store = ClaimStore()
    async with candidate(FakeLock(store), "a") as a:
        await eventually(lambda: a.election.is_leader, 5.0, "a leads")
        renewals = a.lock.calls.count("renew")
        await eventually(lambda: a.lock.calls.count("renew") > renewals, 5.0, "a renewal")
        a.lock.down = True
        failed = a.lock.calls.count("renew")
        await eventually(lambda: a.lock.calls.count("renew") > failed, 5.0, "one failed renewal")
        a.lock.down = False
        await eventually(lambda: a.lock.calls.count("renew") > failed + 2, 5.0, "a renewal after the outage")
        assert a.election.is_leader and a.election.term == 1 and a.cancelled == []


async def test_a_leader_whose_claim_another_took_steps_down_at_its_next_renewal() -> None:
    store = ClaimStore()
    async with candidate(FakeLock(store), "a") as a:
        await eventually(lambda: a.election.is_leader, 5.0, "a leads")
        renewals = a.lock.calls.count("renew")
        usurper = await FakeLock(store).take(store.held, Claim("usurper", None, TTL_S))
        await eventually(lambda: not a.election.is_leader, 5.0, "a steps down")
        assert a.lock.calls.count("renew") == renewals + 1, "the renewal that met the other claim did not depose a"
        await eventually(lambda: a.cancelled == [1], 5.0, "the term's duties cancelled")
        assert store.held == usurper, "a wrote over the claim it lost"
        assert a.election.leader == Claim("usurper", None, TTL_S)


async def test_a_claim_no_one_renews_is_taken_after_a_ttl_in_a_new_term() -> None:
    store = ClaimStore()
    dead = await FakeLock(store).take(None, Claim("dead", None, TTL_S))  # a leader that dies right after
    started = time.monotonic()
    async with candidate(FakeLock(store), "heir") as heir:
        await eventually(lambda: heir.terms, 5.0, "the heir leads")
        assert heir.election.is_leader
        assert time.monotonic() - started >= TTL_S, "took a claim younger than its TTL"
        assert heir.terms == [dead.term + 1]
        assert store.held is not None and store.held.claim is not None and store.held.claim.holder == "heir"


async def test_a_claim_its_leader_renews_is_never_taken() -> None:
    store = ClaimStore()
    live = FakeLock(store)
    mine = await live.take(None, Claim("live", None, TTL_S))
    async with candidate(FakeLock(store), "b") as b:
        for _ in range(int(TTL_S * 2 / 0.05)):  # two TTLs
            mine = await live.renew(mine, Claim("live", None, TTL_S))
            await asyncio.sleep(0.05)
        assert not b.election.is_leader and b.terms == []
        assert b.election.leader == Claim("live", None, TTL_S)


async def test_a_stopping_leader_releases_and_the_follower_takes_over_at_once() -> None:
    store = ClaimStore()
    async with candidate(FakeLock(store), "a") as a, candidate(FakeLock(store), "b") as b:
        await eventually(lambda: a.terms or b.terms, 5.0, "a leader at its duties")
        leader, follower = (a, b) if a.terms else (b, a)
        leader.task.cancel()
        await asyncio.gather(leader.task, return_exceptions=True)
        looks = follower.lock.calls.count("read")
        assert leader.cancelled == [1] and "release" in leader.lock.calls
        await eventually(lambda: follower.terms, 5.0, "the follower leads")
        # a released claim is taken at the follower's next look, not after watching it for a TTL
        assert follower.lock.calls.count("read") == looks + 1
        assert follower.terms == [2]


async def test_duties_that_end_by_themselves_hand_the_lead_over() -> None:
    store = ClaimStore()
    lock = FakeLock(store)
    election = LeaderElection("monitor", "a", None, TTL_S)
    terms: list[int] = []

    async def lead(term: int) -> None:
        terms.append(term)
        if len(terms) == 1:
            raise RuntimeError("the consumer died")
        await asyncio.Event().wait()

    task = asyncio.create_task(election.run(lock, lead))
    try:
        await eventually(lambda: len(terms) == 2, 5.0, "a second term")
        assert terms == [1, 2], "the claim was not given up when the first term's duties ended"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
