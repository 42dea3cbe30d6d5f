"""Choosing a backend: a weighted split with sticky assignment, then the fallback chain."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from .routes import Backend


def sticky_point(key: str) -> float:
    """A stable point in [0, 1) for a session key, the same in every gateway process."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_weighted(backends: Sequence[Backend], point: float) -> Backend:
    """The backend whose cumulative-weight interval holds `point` (in [0, 1))."""
    total = sum(b.weight for b in backends)
    target = point * total
    running = 0.0
    chosen = backends[-1]
    for backend in backends:
        if backend.weight <= 0:
            continue
        running += backend.weight
        chosen = backend
        if target < running:
            return backend
    return chosen


def plan_chain(backends: Sequence[Backend], sticky_key: str | None, rng: random.Random) -> list[Backend]:
    """Backends in the order to try them: the chosen one, then the rest by fallback order."""
    point = sticky_point(sticky_key) if sticky_key else rng.random()
    first = choose_weighted(backends, point)
    rest = sorted((b for b in backends if b is not first), key=lambda b: (b.fallback_order, -b.weight))
    return [first, *rest]
