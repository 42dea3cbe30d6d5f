"""Short in-memory series of serving figures, one point per scrape per model version and variant.

A point holds what happened between two scrapes (the difference of cumulative counters, summed
over the replicas that serve the same version and variant). Figures over a window add the points
up: requests per second, error rate, latency quantiles from the summed histogram buckets, mean
batch size; the gateway's cache counts give the hit rate. Everything runs on the event loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gallery_common.contracts.serving_metrics import (
    CacheCounts,
    Scrape,
    SeriesKey,
    ServingCounts,
    ServingPage,
    summed,
)


@dataclass(frozen=True)
class Point:
    """What one key saw between the previous scrape round (`t - dt`) and this one (`t`, epoch seconds)."""

    t: float
    dt: float
    counts: ServingCounts


@dataclass(frozen=True)
class CachePoint:
    t: float
    counts: CacheCounts


@dataclass(frozen=True)
class Figures:
    """A version's (and variant's) serving figures over a window; latencies in milliseconds."""

    version: str
    variant: str
    requests: int
    rps: float
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    batch_size_mean: float | None

    @classmethod
    def of(cls, version: str, variant: str, counts: ServingCounts, seconds: float) -> Figures:
        total, error_rate, batch_size = counts.total, counts.error_rate, counts.batch_size_mean
        return cls(
            version=version,
            variant=variant,
            requests=int(total),
            rps=round(total / seconds, 3) if seconds > 0 else 0.0,
            error_rate=None if error_rate is None else round(error_rate, 6),
            p50_ms=counts.quantile_ms(0.50),
            p95_ms=counts.quantile_ms(0.95),
            p99_ms=counts.quantile_ms(0.99),
            batch_size_mean=None if batch_size is None else round(batch_size, 3),
        )


class SeriesBook:
    """Every key's recent points, and the per-target counters the next scrape is compared with."""

    def __init__(self, retention_s: float, interval_s: float) -> None:
        self.retention_s = retention_s
        self._maxlen = math.ceil(retention_s / interval_s) + 2
        self._points: dict[SeriesKey, deque[Point]] = {}
        self._cache: dict[str, deque[CachePoint]] = {}
        self._last: dict[str, ServingPage] = {}  # target → its previous page
        self._last_round: float | None = None

    def record(self, now: float, pages: Mapping[str, ServingPage | None]) -> None:
        """Add one scrape round: `pages` maps every current target to its page, or None when it failed.

        A failed target keeps its previous counters, so its next page covers the gap; a target no
        longer listed is forgotten.
        """
        dt = now - self._last_round if self._last_round is not None else None
        self._last_round = now
        scraped = {target: page for target, page in pages.items() if page is not None}
        # the first page of a target is only the baseline
        window = Scrape({t: page for t, page in scraped.items() if t in self._last}).since(Scrape(self._last))
        self._last.update(scraped)
        for target in set(self._last) - set(pages):
            del self._last[target]
        if dt is None:
            return
        for key, counts in window.serving.items():
            self._points.setdefault(key, deque(maxlen=self._maxlen)).append(Point(now, dt, counts))
        for model, totals in window.cache.items():
            self._cache.setdefault(model, deque(maxlen=self._maxlen)).append(CachePoint(now, totals))
        self._forget_before(now - self.retention_s)

    def _forget_before(self, oldest: float) -> None:
        for key in [k for k, points in self._points.items() if points[-1].t < oldest]:
            del self._points[key]
        for model in [m for m, points in self._cache.items() if points[-1].t < oldest]:
            del self._cache[model]

    def models(self) -> set[str]:
        # list() copies in one step, so a reader in a worker thread never iterates a dict being resized
        return {key.model for key in list(self._points)} | set(list(self._cache))

    def knows(self, model: str) -> bool:
        return model in self.models()

    def _window(self, key: SeriesKey, since: float) -> list[Point]:
        return [p for p in self._points.get(key, ()) if p.t > since]

    def keys_of(self, model: str) -> list[SeriesKey]:
        return sorted(key for key in self._points if key.model == model)

    def figures(self, model: str, window_s: float, now: float) -> list[Figures]:
        """Each version and variant of the model with points in the window, by version and variant."""
        out = []
        for key in self.keys_of(model):
            points = self._window(key, now - window_s)
            if points:
                seconds = min(window_s, sum(p.dt for p in points))
                out.append(Figures.of(key.version, key.variant, summed(p.counts for p in points), seconds))
        return out

    def version_counts(self, model: str, version: str, window_s: float, now: float) -> tuple[ServingCounts, float]:
        """One version's counts over the window, all its variants together, and the seconds they cover."""
        since = now - window_s
        windows = [self._window(key, since) for key in self.keys_of(model) if key.version == version]
        points = [p for w in windows for p in w]
        seconds = min(window_s, max((sum(p.dt for p in w) for w in windows), default=0.0))
        return summed(p.counts for p in points), seconds

    def version_figures(self, model: str, version: str, window_s: float, now: float, variant: str = "") -> Figures:
        """One version's figures over the window, all its variants together (zeros when it saw nothing)."""
        counts, seconds = self.version_counts(model, version, window_s, now)
        return Figures.of(version, variant, counts, seconds)

    def versions(self, model: str) -> set[str]:
        return {key.version for key in self.keys_of(model)}

    def points(self, model: str, window_s: float, now: float) -> list[tuple[float, Figures]]:
        """Per scrape round and version (variants together): the round's time and figures, oldest first."""
        since = now - window_s
        by_round: dict[tuple[float, str], list[Point]] = {}
        for key in self.keys_of(model):
            for p in self._window(key, since):
                by_round.setdefault((p.t, key.version), []).append(p)
        return [
            (t, Figures.of(version, "", summed(p.counts for p in points), points[0].dt))
            for (t, version), points in sorted(by_round.items())
        ]

    def cache_hit_rate(self, model: str, window_s: float, now: float) -> float | None:
        points: Iterable[CachePoint] = [p for p in self._cache.get(model, ()) if p.t > now - window_s]
        hits = sum(p.counts.hits for p in points)
        misses = sum(p.counts.misses for p in points)
        return round(hits / (hits + misses), 6) if hits + misses else None
