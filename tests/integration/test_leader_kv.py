"""Leader election on a real nats-server: the `leaders` bucket's TTL expires a dead leader's key, a
follower takes it, two candidates get one leader, and a stopping leader hands over at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from leader_candidates import Candidate, candidate
from waiting import eventually

from gallery_common.bus import EventBus
from gallery_common.leader import Claim, KvLeaderLock
from gallery_common.nats_server import EmbeddedNats

TTL_S = 1.5


@asynccontextmanager
async def contender(url: str, name: str, role: str = "deployer") -> AsyncIterator[Candidate[KvLeaderLock]]:
    """A candidate on its own connection."""
    bus = await EventBus(url, f"test-{name}").connect(ensure_streams=False)
    try:
        lock = await KvLeaderLock(bus, role, TTL_S).open()
        async with candidate(lock, name, role) as running:
            yield running
    finally:
        await bus.close()


async def test_two_candidates_one_leader_and_a_dead_leaders_key_expires(nats_server: EmbeddedNats) -> None:
    async with contender(nats_server.url, "a") as a_run, contender(nats_server.url, "b") as b_run:
        a, b = a_run.election, b_run.election
        await eventually(lambda: a.is_leader or b.is_leader, 15, "a leader")
        leader, follower = (a, b) if a.is_leader else (b, a)
        await asyncio.sleep(TTL_S * 2)  # several renewals: still one leader, the same one
        assert leader.is_leader and not follower.is_leader
        assert len(a_run.terms) + len(b_run.terms) == 1
        assert follower.leader == Claim(leader.identity, f"http://{leader.identity}", TTL_S)
        first_term = leader.term
        assert first_term is not None

    async with contender(nats_server.url, "c") as c:
        # the dead leader's key (a or b released it on the way out): c leads at once
        await eventually(lambda: c.election.is_leader, TTL_S * 3, "c leads")
        assert c.election.term is not None and c.election.term > first_term


async def test_a_key_no_one_renews_expires_and_a_follower_takes_it_in_a_new_term(nats_server: EmbeddedNats) -> None:
    bus = await EventBus(nats_server.url, "test-dead").connect(ensure_streams=False)
    try:
        dead = await KvLeaderLock(bus, "monitor", TTL_S).open()
        held = await dead.take(None, Claim("dead", None, TTL_S))  # a leader that dies right after
        started = time.monotonic()
        async with contender(nats_server.url, "heir", "monitor") as heir:
            await eventually(lambda: heir.election.is_leader, TTL_S * 4, "the heir leads")
            assert time.monotonic() - started >= TTL_S * 0.5, "the dead leader's key lived its TTL"
            assert heir.election.term is not None and heir.election.term > held.term
    finally:
        await bus.close()
