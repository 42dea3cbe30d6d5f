"""Leader election on a real nats-server: the `leaders` bucket's TTL expires a dead leader's key, a
follower takes it, two candidates get one leader, and a stopping leader hands over at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gallery_common.bus import EventBus
from gallery_common.leader import Claim, KvLeaderLock, LeaderElection
from gallery_common.nats_server import EmbeddedNats

TTL_S = 1.5


async def until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> float:
    """Seconds until `check()` held; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@asynccontextmanager
async def candidate(
    url: str, name: str, role: str = "deployer"
) -> AsyncIterator[tuple[LeaderElection, list[int], asyncio.Task[None]]]:
    """An election on its own connection; the list gets each term this candidate led."""
    bus = await EventBus(url, f"test-{name}").connect(ensure_streams=False)
    lock = await KvLeaderLock(bus, role, TTL_S).open()
    election = LeaderElection(role, name, f"http://{name}", TTL_S)
    terms: list[int] = []

    async def lead(term: int) -> None:
        terms.append(term)
        await asyncio.Event().wait()

    task = asyncio.create_task(election.run(lock, lead))
    try:
        yield election, terms, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()


async def test_two_candidates_one_leader_and_a_dead_leaders_key_expires(nats_server: EmbeddedNats) -> None:
    async with candidate(nats_server.url, "a") as (a, a_terms, _), candidate(nats_server.url, "b") as (b, b_terms, _):
        await until("a leader", lambda: a.is_leader or b.is_leader)
        leader, follower = (a, b) if a.is_leader else (b, a)
        await asyncio.sleep(TTL_S * 2)  # several renewals: still one leader, the same one
        assert leader.is_leader and not follower.is_leader
        assert len(a_terms) + len(b_terms) == 1
        assert follower.leader == Claim(leader.identity, f"http://{leader.identity}", TTL_S)
        first_term = leader.term
        assert first_term is not None

    async with candidate(nats_server.url, "c") as (c, _, c_task):
        # the dead leader's key (a or b released it on the way out): c leads at once
        await until("c leads", lambda: c.is_leader, timeout=TTL_S * 3)
        assert c.term is not None and c.term > first_term
        # killed without a word: c's task stops renewing but does not release
        c_task.cancel()
        await asyncio.gather(c_task, return_exceptions=True)


async def test_a_key_no_one_renews_expires_and_a_follower_takes_it_in_a_new_term(nats_server: EmbeddedNats) -> None:
    bus = await EventBus(nats_server.url, "test-dead").connect(ensure_streams=False)
    try:
        dead = await KvLeaderLock(bus, "monitor", TTL_S).open()
        held = await dead.take(None, Claim("dead", None, TTL_S))  # a leader that dies right after
        async with candidate(nats_server.url, "heir", "monitor") as (heir, _, _):
            took = await until("the heir leads", lambda: heir.is_leader, timeout=TTL_S * 4)
            assert took >= TTL_S * 0.5, "the dead leader's key lived its TTL"
            assert heir.term is not None and heir.term > held.term
    finally:
        await bus.close()
