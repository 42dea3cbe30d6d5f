"""The one reader of serving metrics: real model-server and gateway pages parse into counts per model
version and variant, windows follow one counter-reset rule, and the canary comparison both the deployer
and the monitor use."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gallery_common.contracts.serving_metrics import (
    BATCH_SIZE,
    CACHE_HITS,
    CACHE_MISSES,
    REQUEST_DURATION,
    REQUESTS,
    SERIES_LABELS,
    CacheCounts,
    Outcome,
    Scrape,
    SeriesKey,
    ServingCounts,
    ServingPage,
    compare,
    parse_page,
)
from gallery_common.telemetry import counter
from gallery_deployer.modelserver.metrics import ServingMetrics

KEY = SeriesKey("iris", "3", "fp32")


def page_of(registry: CollectorRegistry) -> ServingPage:
    return parse_page(generate_latest(registry).decode())


def served(ok: int, *, error: int = 0, seconds: float = 0.003) -> CollectorRegistry:
    """A fresh model server process's registry after `ok` good and `error` failed requests."""
    registry = CollectorRegistry()
    metrics = ServingMetrics(KEY.model, KEY.version, KEY.variant, registry)
    for _ in range(ok):
        metrics.request(Outcome.ok, seconds)
    for _ in range(error):
        metrics.request(Outcome.error, seconds)
    return registry


def test_parses_what_a_real_model_server_exports() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("iris", "3", "fp32", registry)
    for seconds in (0.002, 0.004, 0.02, 0.2):
        metrics.request(Outcome.ok, seconds)
    metrics.request(Outcome.error, 0.3)
    metrics.request(Outcome.bad_request, 0.001)
    metrics.computed(0.001, rows=4)
    metrics.computed(0.001, rows=8)
    text = generate_latest(registry).decode()
    assert all(name in text for name in (REQUESTS, REQUEST_DURATION, BATCH_SIZE)), "the names the server exports"

    counts = parse_page(text).serving[KEY]

    assert counts.requests == {"ok": 4, "bad_request": 1, "not_found": 0, "overloaded": 0, "error": 1}
    assert counts.total == 6 and counts.errors == 1  # a client's bad request is not the server's error
    assert counts.error_rate == pytest.approx(1 / 6)
    assert counts.buckets[float("inf")] == 6 and counts.buckets[0.0025] == 2
    assert counts.batch_sum == 12 and counts.batch_count == 2 and counts.batch_size_mean == 6


def test_overloaded_and_error_are_the_server_failing() -> None:
    assert set(Outcome.errors) == {Outcome.overloaded, Outcome.error} and set(Outcome.errors) < set(Outcome.all)
    counts = ServingCounts({outcome: 1.0 for outcome in Outcome.all})
    assert (counts.total, counts.errors) == (5.0, 2.0)


def test_parses_the_gateways_cache_counters() -> None:
    registry = CollectorRegistry()
    counter(CACHE_HITS, "hits", ("model",), registry).labels("iris").inc(3)
    counter(CACHE_MISSES, "misses", ("model",), registry).labels("iris").inc(1)
    page = page_of(registry)
    assert page.cache == {"iris": CacheCounts(hits=3, misses=1)}
    assert page.serving == {}


def test_a_page_that_is_not_prometheus_text_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_page("<html>not metrics</html>\n")


def test_the_quantile_comes_from_the_request_duration_buckets() -> None:
    counts = page_of(served(99, seconds=0.003)).serving[KEY]
    counts.add(page_of(served(1, seconds=0.3)).serving[KEY])
    assert counts.quantile(0.5) == pytest.approx(0.0025 + 0.0025 * (50 / 99))  # inside (2.5, 5] ms
    assert counts.quantile_ms(0.99) == 5.0  # 99 of 100 took at most 5 ms, the bucket's bound
    assert ServingCounts().quantile(0.99) is None and ServingCounts().error_rate is None


def test_a_window_is_the_difference_of_two_pages_of_one_target() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("iris", "3", "fp32", registry)
    for _ in range(10):
        metrics.request(Outcome.ok, 0.003)
    earlier = page_of(registry)
    for _ in range(5):
        metrics.request(Outcome.ok, 0.003)
    metrics.request(Outcome.overloaded, 0.0001)
    metrics.computed(0.001, rows=4)

    window = page_of(registry).since(earlier).serving[KEY]

    assert window.requests["ok"] == 5 and (window.total, window.errors) == (6, 1)
    assert window.buckets[float("inf")] == 6 and window.buckets[0.0005] == 1
    assert (window.batch_sum, window.batch_count) == (4, 1)


def test_a_restarted_target_counts_from_zero_again() -> None:
    earlier = page_of(served(50))
    window = page_of(served(7)).since(earlier).serving[KEY]
    assert window.total == 7 and window.buckets[float("inf")] == 7


def test_one_counter_going_down_is_a_restart_even_when_the_total_went_up() -> None:
    # before the restart 50 good and 5 failed requests, after it 60 and 3: only `error` shows the restart
    earlier = page_of(served(50, error=5))
    later = page_of(served(60, error=3))
    assert later.overall().total > earlier.overall().total
    window = later.since(earlier).serving[KEY]
    assert window.requests["ok"] == 60 and window.errors == 3  # not 10 and 0


def test_a_restarted_gateway_counts_every_models_cache_from_zero() -> None:
    earlier = ServingPage(cache={"iris": CacheCounts(hits=100, misses=10), "wine": CacheCounts(hits=20, misses=5)})
    later = ServingPage(cache={"iris": CacheCounts(hits=150, misses=12), "wine": CacheCounts(hits=2, misses=1)})
    window = later.since(earlier)
    assert window.cache == later.cache  # wine's counters went down: the gateway restarted


def test_a_series_that_appears_between_two_scrapes_counts_in_full() -> None:
    registry = CollectorRegistry()
    requests = counter(REQUESTS, "requests", (*SERIES_LABELS, "outcome"), registry)
    hits = counter(CACHE_HITS, "hits", ("model",), registry)
    requests.labels("iris", "3", "fp32", Outcome.ok).inc()
    hits.labels("iris").inc()
    earlier = page_of(registry)
    requests.labels("iris", "3", "fp32", Outcome.ok).inc()
    requests.labels("iris", "3", "int8_dynamic", Outcome.ok).inc(4)
    hits.labels("wine").inc(2)

    window = page_of(registry).since(earlier)

    assert window.serving[KEY].total == 1
    assert window.serving[SeriesKey("iris", "3", "int8_dynamic")].total == 4
    assert window.cache == {"iris": CacheCounts(), "wine": CacheCounts(hits=2)}


def test_a_scrape_of_several_targets_adds_up_each_targets_window() -> None:
    earlier = Scrape({"http://a": page_of(served(10)), "http://b": page_of(served(500, error=2))})
    later = Scrape(
        {
            "http://a": page_of(served(40)),  # 30 more
            "http://b": page_of(served(8)),  # restarted: 8
            "http://c": page_of(served(5, error=1)),  # new since: all of it
        }
    )
    window = later.since(earlier).serving[KEY]
    assert window.requests["ok"] == 30 + 8 + 5 and window.errors == 1


def test_the_canary_comparison_puts_the_same_figures_side_by_side() -> None:
    canary = page_of(served(98, error=2, seconds=0.03)).serving[KEY]
    baseline = page_of(served(400, seconds=0.003)).serving[KEY]
    comparison = compare(canary, baseline)
    assert (comparison.canary_requests, comparison.baseline_requests) == (100, 400)
    assert (comparison.canary_error_rate, comparison.baseline_error_rate) == (0.02, 0.0)
    assert comparison.canary_p99_ms == canary.quantile_ms(0.99) and 25 < comparison.canary_p99_ms <= 50
    assert comparison.baseline_p99_ms == pytest.approx(2.5 + 2.5 * 0.99)  # inside the (2.5, 5] ms bucket
    empty = compare(ServingCounts(), ServingCounts())
    assert (empty.canary_error_rate, empty.canary_p99_ms) == (None, None)
