"""The serving metrics the model servers and the gateway export, named, read and compared in one place.

The model server (`gallery_deployer.modelserver.metrics`) and the gateway create their series under the
names below; the deployer's canary analysis, its local runtime's idle watch and the monitor read them
back with `parse_page`. Counters are cumulative, so what happened over a window is the difference of two
pages of one target (`ServingPage.since`). A restarted process counts from zero again: a counter lower
than on the earlier page means the target restarted in between, and then the later page is the window.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from gallery_common.promtext import histogram_quantile

# The names as the series are created and exposed (the `modelgallery_` prefix included).
REQUESTS = "modelgallery_inference_requests_total"  # counter, by SERIES_LABELS and `outcome`
REQUEST_DURATION = "modelgallery_inference_request_duration_seconds"  # histogram of whole infer requests
BATCH_SIZE = "modelgallery_inference_batch_size_count"  # histogram of rows per batch run
CACHE_HITS = "modelgallery_gateway_cache_hits_total"  # counter, by `model`
CACHE_MISSES = "modelgallery_gateway_cache_misses_total"  # counter, by `model`
SERIES_LABELS = ("model", "version", "variant")

# a counter's family (HELP, TYPE, `_created`) is named without `_total`; a histogram's series add a suffix
_FAMILIES = tuple(
    name.removesuffix("_total") for name in (REQUESTS, REQUEST_DURATION, BATCH_SIZE, CACHE_HITS, CACHE_MISSES)
)
_SAMPLE_LINE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*[{ ]")


class Outcome:
    """Values of the `outcome` label on the requests counter."""

    ok = "ok"
    bad_request = "bad_request"
    not_found = "not_found"
    overloaded = "overloaded"
    error = "error"

    all = (ok, bad_request, not_found, overloaded, error)
    # a request the server could not answer; a client's own mistake (bad_request, not_found) is not one
    errors = (overloaded, error)


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
        return sum(self.requests.get(outcome, 0.0) for outcome in Outcome.errors)

    @property
    def error_rate(self) -> float | None:
        """Errors per request; None without requests."""
        total = self.total
        return self.errors / total if total else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the request duration in seconds, interpolated inside its bucket; None without requests."""
        return histogram_quantile(q, self.buckets)

    def quantile_ms(self, q: float) -> float | None:
        """The q-quantile in milliseconds, to the microsecond; None without requests."""
        seconds = self.quantile(q)
        return None if seconds is None else round(seconds * 1000, 3)

    @property
    def batch_size_mean(self) -> float | None:
        return self.batch_sum / self.batch_count if self.batch_count else None

    def add(self, other: ServingCounts) -> None:
        """Add `other`'s counts to these (two replicas, or two windows)."""
        for outcome, value in other.requests.items():
            self.requests[outcome] = self.requests.get(outcome, 0.0) + value
        for bound, value in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + value
        self.batch_sum += other.batch_sum
        self.batch_count += other.batch_count

    def minus(self, earlier: ServingCounts) -> ServingCounts:
        """The counts since `earlier`, a reading of the same process; `ServingPage.since` decides
        whether the process restarted in between."""
        return ServingCounts(
            {k: max(0.0, v - earlier.requests.get(k, 0.0)) for k, v in self.requests.items()},
            {k: max(0.0, v - earlier.buckets.get(k, 0.0)) for k, v in self.buckets.items()},
            max(0.0, self.batch_sum - earlier.batch_sum),
            max(0.0, self.batch_count - earlier.batch_count),
        )

    def copy(self) -> ServingCounts:
        return ServingCounts(dict(self.requests), dict(self.buckets), self.batch_sum, self.batch_count)

    def went_below(self, earlier: ServingCounts) -> bool:
        """Whether any counter is lower than in `earlier`: only a restart makes a counter go down."""
        return (
            any(v < earlier.requests[k] for k, v in self.requests.items() if k in earlier.requests)
            or any(v < earlier.buckets[k] for k, v in self.buckets.items() if k in earlier.buckets)
            or self.batch_count < earlier.batch_count
            or self.batch_sum < earlier.batch_sum
        )


def summed(counts: Iterable[ServingCounts]) -> ServingCounts:
    total = ServingCounts()
    for c in counts:
        total.add(c)
    return total


@dataclass
class CacheCounts:
    """The gateway's answers from its cache and cacheable requests it did not find there."""

    hits: float = 0.0
    misses: float = 0.0

    def add(self, other: CacheCounts) -> None:
        self.hits += other.hits
        self.misses += other.misses

    def minus(self, earlier: CacheCounts) -> CacheCounts:
        return CacheCounts(max(0.0, self.hits - earlier.hits), max(0.0, self.misses - earlier.misses))

    def went_below(self, earlier: CacheCounts) -> bool:
        return self.hits < earlier.hits or self.misses < earlier.misses


@dataclass
class ServingPage:
    """The serving and cache counts of one target's `/metrics` (or, added up, of several)."""

    serving: dict[SeriesKey, ServingCounts] = field(default_factory=dict)
    cache: dict[str, CacheCounts] = field(default_factory=dict)  # by model

    def overall(self) -> ServingCounts:
        """Every series added up."""
        return summed(self.serving.values())

    def add(self, other: ServingPage) -> None:
        """Add `other`'s counts series by series."""
        for key, counts in other.serving.items():
            self.serving.setdefault(key, ServingCounts()).add(counts)
        for model, cached in other.cache.items():
            self.cache.setdefault(model, CacheCounts()).add(cached)

    def restarted_since(self, earlier: ServingPage) -> bool:
        """Whether the target restarted after `earlier` was read: one of its counters went down."""
        serving = any(c.went_below(earlier.serving[k]) for k, c in self.serving.items() if k in earlier.serving)
        return serving or any(c.went_below(earlier.cache[m]) for m, c in self.cache.items() if m in earlier.cache)

    def since(self, earlier: ServingPage) -> ServingPage:
        """What the target counted after `earlier`, a page of the same target read before this one.

        After a restart (any counter lower than on `earlier`) everything on this page is new, so this
        page is the window; otherwise each counter's difference, a series new since `earlier` in full.
        """
        if self.restarted_since(earlier):
            return ServingPage(
                {key: counts.copy() for key, counts in self.serving.items()},
                {model: CacheCounts(c.hits, c.misses) for model, c in self.cache.items()},
            )
        return ServingPage(
            {key: counts.minus(earlier.serving.get(key, ServingCounts())) for key, counts in self.serving.items()},
            {model: cached.minus(earlier.cache.get(model, CacheCounts())) for model, cached in self.cache.items()},
        )


@dataclass
class Scrape:
    """The pages of several targets read at about the same moment, by target URL."""

    pages: dict[str, ServingPage] = field(default_factory=dict)

    def since(self, earlier: Scrape) -> ServingPage:
        """What every target counted after `earlier`, added up series by series.

        Each target's page is taken since its own page in `earlier` (the counter-reset rule applies per
        target: per process); a target `earlier` lacks started since, so its page counts in full.
        """
        window = ServingPage()
        for target, page in self.pages.items():
            window.add(page.since(earlier.pages.get(target, ServingPage())))
        return window


def relevant_lines(text: str) -> str:
    """Only the lines of the serving and cache families (prometheus_client's parser is pure Python and
    slow; a model server's page is mostly queue and compute histograms and process metrics).

    Raises ValueError on a line that is not in the Prometheus text format.
    """
    kept = []
    for line in text.splitlines():
        name = line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line
        if name.startswith(_FAMILIES):
            kept.append(line)
        elif line and not line.startswith("#") and not _SAMPLE_LINE.match(line):
            # an HTML error page or the like must not pass for a page without serving metrics
            raise ValueError(f"not in the Prometheus text format: {line[:80]!r}")
    return "\n".join(kept) + "\n"


def _key(labels: Mapping[str, str]) -> SeriesKey | None:
    model = labels.get("model")
    if not model:
        return None
    return SeriesKey(model, labels.get("version", ""), labels.get("variant", ""))


def parse_page(text: str) -> ServingPage:
    """Read the serving and cache counts out of a `/metrics` page; other metrics are ignored, and so are
    samples without a `model` label.

    Raises ValueError when the page is not in the Prometheus text format.
    """
    page = ServingPage()
    for family in text_string_to_metric_families(relevant_lines(text)):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in (CACHE_HITS, CACHE_MISSES):
                model = labels.get("model")
                if model:
                    cached = page.cache.setdefault(model, CacheCounts())
                    if name == CACHE_HITS:
                        cached.hits += value
                    else:
                        cached.misses += value
                continue
            key = _key(labels)
            if key is None:
                continue
            if name == REQUESTS:
                counts = page.serving.setdefault(key, ServingCounts())
                outcome = labels.get("outcome", Outcome.ok)
                counts.requests[outcome] = counts.requests.get(outcome, 0.0) + value
            elif name == f"{REQUEST_DURATION}_bucket":
                counts = page.serving.setdefault(key, ServingCounts())
                bound = float(labels["le"])
                counts.buckets[bound] = counts.buckets.get(bound, 0.0) + value
            elif name == f"{BATCH_SIZE}_sum":
                page.serving.setdefault(key, ServingCounts()).batch_sum += value
            elif name == f"{BATCH_SIZE}_count":
                page.serving.setdefault(key, ServingCounts()).batch_count += value
    return page


@dataclass(frozen=True)
class CanaryComparison:
    """A canary's serving figures beside its baseline's (production's) over the same window; p99 in ms."""

    canary_requests: float
    baseline_requests: float
    canary_error_rate: float | None
    baseline_error_rate: float | None
    canary_p99_ms: float | None
    baseline_p99_ms: float | None


def compare(canary: ServingCounts, baseline: ServingCounts) -> CanaryComparison:
    """The figures a canary is judged on, for both versions: what the deployer's analysis decides on and
    what the monitor shows."""
    return CanaryComparison(
        canary_requests=canary.total,
        baseline_requests=baseline.total,
        canary_error_rate=canary.error_rate,
        baseline_error_rate=baseline.error_rate,
        canary_p99_ms=canary.quantile_ms(0.99),
        baseline_p99_ms=baseline.quantile_ms(0.99),
    )
