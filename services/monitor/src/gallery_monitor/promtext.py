"""What the monitor reads from a `/metrics` page: serving counts per model version and variant, cache counts.

Counts are cumulative as scraped; `ServingCounts.minus` turns two scrapes into the window between
them; `gallery_common.promtext.histogram_quantile` reads a latency quantile from the bucket counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "modelgallery_inference_requests"
DURATION = "modelgallery_inference_request_duration_seconds"
BATCH_SIZE = "modelgallery_inference_batch_size_count"
CACHE_HITS = "modelgallery_gateway_cache_hits"
CACHE_MISSES = "modelgallery_gateway_cache_misses"
# a request the server could not answer; a client's own mistake (bad_request, not_found) is not one
ERROR_OUTCOMES = ("error", "overloaded")
_WANTED = (REQUESTS, DURATION, BATCH_SIZE, CACHE_HITS, CACHE_MISSES)
_SAMPLE_LINE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*[{ ]")


@dataclass(frozen=True, order=True)
class SeriesKey:
    """One served model version and variant, as the model servers label their metrics."""

    model: str
    version: str
    variant: str


@dataclass
class ServingCounts:
    """Requests by outcome, cumulative latency buckets (upper bound in s → count) and batch sizes."""

    requests: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)
    batch_sum: float = 0.0
    batch_count: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    @property
    def errors(self) -> float:
        return sum(self.requests.get(outcome, 0.0) for outcome in ERROR_OUTCOMES)

    def add(self, other: ServingCounts) -> None:
        for outcome, value in other.requests.items():
            self.requests[outcome] = self.requests.get(outcome, 0.0) + value
        for bound, value in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + value
        self.batch_sum += other.batch_sum
        self.batch_count += other.batch_count

    def minus(self, earlier: ServingCounts) -> ServingCounts:
        """What happened since `earlier`; after a counter went down (the server restarted) everything counts."""
        if self.total < earlier.total or self.batch_count < earlier.batch_count:
            return ServingCounts(dict(self.requests), dict(self.buckets), self.batch_sum, self.batch_count)
        return ServingCounts(
            {k: max(0.0, v - earlier.requests.get(k, 0.0)) for k, v in self.requests.items()},
            {k: max(0.0, v - earlier.buckets.get(k, 0.0)) for k, v in self.buckets.items()},
            max(0.0, self.batch_sum - earlier.batch_sum),
            max(0.0, self.batch_count - earlier.batch_count),
        )


@dataclass
class CacheCounts:
    hits: float = 0.0
    misses: float = 0.0

    def minus(self, earlier: CacheCounts) -> CacheCounts:
        if self.hits < earlier.hits or self.misses < earlier.misses:
            return CacheCounts(self.hits, self.misses)
        return CacheCounts(self.hits - earlier.hits, self.misses - earlier.misses)


@dataclass
class ScrapedPage:
    """Everything the monitor uses from one target's `/metrics`."""

    serving: dict[SeriesKey, ServingCounts] = field(default_factory=dict)
    cache: dict[str, CacheCounts] = field(default_factory=dict)


def _key(labels: dict[str, str]) -> SeriesKey | None:
    model = labels.get("model")
    if not model:
        return None
    return SeriesKey(model, labels.get("version", ""), labels.get("variant", ""))


def relevant_lines(text: str) -> str:
    """Only the lines of the families the monitor reads (prometheus_client's parser is pure Python and
    slow; a model server's page is mostly queue and compute histograms and process metrics)."""
    kept = []
    for line in text.splitlines():
        name = line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line
        if name.startswith(_WANTED):
            kept.append(line)
        elif line and not line.startswith("#") and not _SAMPLE_LINE.match(line):
            # an HTML error page or the like must not pass for a page without serving metrics
            raise ValueError(f"not in the Prometheus text format: {line[:80]!r}")
    return "\n".join(kept) + "\n"


def parse_metrics(text: str) -> ScrapedPage:
    """Read the serving and cache figures out of a Prometheus text page; other metrics are ignored.

    Raises ValueError when the page is not in the Prometheus text format.
    """
    page = ScrapedPage()
    for family in text_string_to_metric_families(relevant_lines(text)):
        if family.name in (REQUESTS, DURATION, BATCH_SIZE):
            for sample in family.samples:
                key = _key(sample.labels)
                if key is None:
                    continue
                counts = page.serving.setdefault(key, ServingCounts())
                if family.name == REQUESTS and sample.name.endswith("_total"):
                    outcome = sample.labels.get("outcome", "ok")
                    counts.requests[outcome] = counts.requests.get(outcome, 0.0) + sample.value
                elif family.name == DURATION and sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    counts.buckets[bound] = counts.buckets.get(bound, 0.0) + sample.value
                elif family.name == BATCH_SIZE and sample.name.endswith("_sum"):
                    counts.batch_sum += sample.value
                elif family.name == BATCH_SIZE and sample.name.endswith("_count_count"):
                    counts.batch_count += sample.value
        elif family.name in (CACHE_HITS, CACHE_MISSES):
            for sample in family.samples:
                model = sample.labels.get("model")
                if not model or not sample.name.endswith("_total"):
                    continue
                cache = page.cache.setdefault(model, CacheCounts())
                if family.name == CACHE_HITS:
                    cache.hits += sample.value
                else:
                    cache.misses += sample.value
    return page


def summed(counts: Iterable[ServingCounts]) -> ServingCounts:
    total = ServingCounts()
    for c in counts:
        total.add(c)
    return total
