"""A candidate in a leader election for the election's tests: `LeaderElection.run` over a given lock in
a task of its own, recording each term it led and each term whose duties were cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gallery_common.leader import LeaderElection, LeaderLock

L = TypeVar("L", bound=LeaderLock)


@dataclass
class Candidate(Generic[L]):
    election: LeaderElection
    lock: L
    task: asyncio.Task[None]
    terms: list[int] = field(default_factory=list)  # each term lead() started in
    cancelled: list[int] = field(default_factory=list)  # each term whose lead() was cancelled


@asynccontextmanager
async def candidate(lock: L, name: str, role: str = "deployer", url: str | None = None) -> AsyncIterator[Candidate[L]]:
    """Campaign as `name` (its URL `url`, default http://<name>) until the block ends, then stop."""
    election = LeaderElection(role, name, url or f"http://{name}", lock.ttl_s)
    terms: list[int] = []
    cancelled: list[int] = []

    async def lead(term: int) -> None:
        terms.append(term)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(term)
            raise

    task = asyncio.create_task(election.run(lock, lead))
    try:
        yield Candidate(election, lock, task, terms, cancelled)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
