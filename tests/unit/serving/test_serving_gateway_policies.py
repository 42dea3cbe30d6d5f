"""The gateway's building blocks: circuit breaker, weighted/sticky choice and the LRU cache."""

from __future__ import annotations

import random

import pytest

from gallery_deployer.gateway.balance import choose_weighted, plan_chain, sticky_point
from gallery_deployer.gateway.breaker import BreakerState, CircuitBreaker
from gallery_deployer.gateway.cache import CachedAnswer, LruCache
from gallery_deployer.gateway.routes import Backend, ModelRoute


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(consecutive_failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.open
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.state is BreakerState.half_open
    assert breaker.allow()
    assert not breaker.allow(), "only one probe at a time while half-open"
    breaker.record_success()
    assert breaker.state is BreakerState.closed
    assert breaker.allow()


def test_breaker_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(consecutive_failures=1, cooldown_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.open
    clock.now = 9.0
    assert not breaker.allow()


def test_breaker_opens_on_error_rate_without_consecutive_run() -> None:
    breaker = CircuitBreaker(consecutive_failures=100, error_rate=0.5, window=10, min_calls=10)
    for i in range(1, 11):  # 7 failures in 10 calls, never more than 2 in a row
        if i % 3 == 0:
            breaker.record_success()
        else:
            breaker.record_failure()
    assert breaker.state is BreakerState.open


def test_breaker_success_resets_consecutive_count() -> None:
    breaker = CircuitBreaker(consecutive_failures=3, min_calls=100)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.closed


def _backend(bid: str, weight: float, order: int = 0) -> Backend:
    return Backend(id=bid, url="http://127.0.0.1:1", weight=weight, fallback_order=order)


def test_weighted_choice_follows_weights() -> None:
    backends = [_backend("stable", 90), _backend("canary", 10)]
    rng = random.Random(7)
    picks = [choose_weighted(backends, rng.random()).id for _ in range(20_000)]
    assert picks.count("canary") / len(picks) == pytest.approx(0.10, abs=0.01)


def test_zero_weight_backend_is_never_chosen_but_is_a_fallback() -> None:
    backends = [_backend("main", 1), _backend("cpu", 0, order=2), _backend("previous", 0, order=1)]
    rng = random.Random(1)
    for _ in range(200):
        chain = plan_chain(backends, None, rng)
        assert [b.id for b in chain] == ["main", "previous", "cpu"]


def test_sticky_key_maps_to_the_same_backend_every_time() -> None:
    backends = [_backend("a", 50), _backend("b", 50)]
    rng = random.Random()
    for session in ("alice", "bob", "carol"):
        first = plan_chain(backends, session, rng)[0].id
        assert all(plan_chain(backends, session, rng)[0].id == first for _ in range(50))
    assert 0 <= sticky_point("alice") < 1
    spread = {plan_chain(backends, f"user-{i}", rng)[0].id for i in range(100)}
    assert spread == {"a", "b"}


def test_route_rejects_duplicate_ids_and_all_zero_weights() -> None:
    with pytest.raises(ValueError, match="unique"):
        ModelRoute(backends=[_backend("a", 1), _backend("a", 1)])
    with pytest.raises(ValueError, match="weight above 0"):
        ModelRoute(backends=[_backend("a", 0)])


def test_lru_evicts_least_recently_used_and_expires() -> None:
    clock = Clock()
    cache = LruCache(size=2, ttl_s=10, clock=clock)
    answer = CachedAnswer(200, "application/json", b"{}")
    cache.put("a", answer)
    cache.put("b", answer)
    assert cache.get("a") == answer  # a is now the most recent
    cache.put("c", answer)
    assert cache.get("b") is None
    assert cache.get("a") == answer and cache.get("c") == answer
    clock.now = 10.0
    assert cache.get("a") is None
    assert len(cache) == 1
