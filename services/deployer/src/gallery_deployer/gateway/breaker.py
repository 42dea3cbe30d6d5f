"""A circuit breaker per backend: stop sending traffic to a backend that keeps failing."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """The numeric values are what the breaker-state gauge exports."""

    closed = 0
    half_open = 1
    open = 2


class CircuitBreaker:
    """Opens on N consecutive failures or an error rate over a window; probes after a cool-down.

    Closed lets everything through. Open lets nothing through until `cooldown_s` has passed, then
    turns half-open and lets exactly one probe through: its success closes the breaker, its
    failure opens it again for another cool-down.
    """

    def __init__(
        self,
        *,
        consecutive_failures: int = 5,
        error_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = consecutive_failures
        self._error_rate = error_rate
        self._min_calls = min_calls
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._consecutive = 0
        self._state = BreakerState.closed
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.open and self._clock() - self._opened_at >= self._cooldown_s:
            self._state = BreakerState.half_open
            self._probe_out = False
        return self._state

    def allow(self) -> bool:
        """Whether a request may go to the backend now; in half-open only one probe at a time."""
        state = self.state
        if state is BreakerState.closed:
            return True
        if state is BreakerState.half_open and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> bool:
        """Count a success; True when it changed the state (closed the breaker)."""
        self._consecutive = 0
        if self._state is not BreakerState.closed:
            self._state = BreakerState.closed
            self._outcomes.clear()
            self._probe_out = False
            return True
        self._outcomes.append(True)
        return False

    def record_failure(self) -> bool:
        """Count a failure; True when it changed the state (opened the breaker)."""
        self._consecutive += 1
        if self._state is BreakerState.half_open:
            self._trip()
            return True
        self._outcomes.append(False)
        failures = self._outcomes.count(False)
        rate_exceeded = len(self._outcomes) >= self._min_calls and failures / len(self._outcomes) > self._error_rate
        if self._consecutive >= self._threshold or rate_exceeded:
            self._trip()
            return True
        return False

    def _trip(self) -> None:
        self._state = BreakerState.open
        self._opened_at = self._clock()
        self._probe_out = False
        self._outcomes.clear()
