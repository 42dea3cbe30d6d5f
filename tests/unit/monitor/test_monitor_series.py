"""Histogram quantiles and window figures over scrapes of real model servers' and the gateway's /metrics
(the parser itself: tests/unit/test_contracts_serving_metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gallery_common.contracts.serving_metrics import CACHE_HITS, CACHE_MISSES, parse_page
from gallery_common.promtext import histogram_quantile
from gallery_common.telemetry import counter
from gallery_deployer.modelserver.metrics import ServingMetrics
from gallery_monitor.series import SeriesBook


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    # 100 observations: 50 ≤ 10 ms, 40 in (10, 50] ms, 10 in (50, 100] ms
    buckets = {0.01: 50.0, 0.05: 90.0, 0.1: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.005)  # half of the first bucket, from 0
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.01 + 0.04 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.05 + 0.05 * 9 / 10)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    # past the last finite bound Prometheus answers that bound
    assert histogram_quantile(0.99, {0.1: 10.0, float("inf"): 20.0}) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        histogram_quantile(1.5, buckets)


def serving_page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def scrape_round(book: SeriesBook, now: float, *, registries: list[CollectorRegistry]) -> None:
    """One scrape round of the model servers whose metrics live in `registries`."""
    pages = {f"http://replica-{i}": parse_page(serving_page(r)) for i, r in enumerate(registries)}
    book.record(now, pages)


def test_window_figures_from_two_replicas_over_several_scrapes() -> None:
    book = SeriesBook(retention_s=300, interval_s=5)
    registries = [CollectorRegistry(), CollectorRegistry()]
    replicas = [ServingMetrics("iris", "3", "fp32", r) for r in registries]
    replicas[0].request("ok", 0.001)  # before the first scrape: only the baseline
    scrape_round(book, 1000.0, registries=registries)
    assert book.figures("iris", 60, now=1000.0) == []
    for _ in range(40):
        replicas[0].request("ok", 0.003)
        replicas[1].request("ok", 0.003)
    replicas[1].request("error", 0.03)
    replicas[0].computed(0.001, rows=10)
    scrape_round(book, 1005.0, registries=registries)
    for _ in range(19):
        replicas[0].request("ok", 0.003)
    scrape_round(book, 1010.0, registries=registries)

    [figures] = book.figures("iris", 60, now=1010.0)
    assert (figures.version, figures.variant, figures.requests) == ("3", "fp32", 100)
    assert figures.rps == pytest.approx(100 / 10)  # the two points cover 10 s
    assert figures.error_rate == pytest.approx(0.01)
    assert 2.5 < figures.p50_ms < 5 and 2.5 < figures.p95_ms < 5
    assert figures.p99_ms == pytest.approx(5.0)  # 99 of 100 took at most 5 ms (the bucket's bound)
    assert figures.batch_size_mean == 10
    # the last 5 s alone: 19 requests
    [recent] = book.figures("iris", 5, now=1010.0)
    assert recent.requests == 19 and recent.rps == pytest.approx(19 / 5) and recent.error_rate == 0
    points = book.points("iris", 60, now=1010.0)
    assert [(t, f.requests) for t, f in points] == [(1005.0, 81), (1010.0, 19)]


def test_a_restarted_model_server_counts_from_zero_again() -> None:
    book = SeriesBook(retention_s=300, interval_s=5)
    registry = CollectorRegistry()
    metrics = ServingMetrics("iris", "3", "fp32", registry)
    for _ in range(50):
        metrics.request("ok", 0.003)
    scrape_round(book, 0.0, registries=[registry])
    restarted = CollectorRegistry()
    metrics = ServingMetrics("iris", "3", "fp32", restarted)
    for _ in range(7):
        metrics.request("ok", 0.003)
    scrape_round(book, 5.0, registries=[restarted])
    [figures] = book.figures("iris", 60, now=5.0)
    assert figures.requests == 7


def test_versions_and_cache_hit_rate_of_a_model() -> None:
    book = SeriesBook(retention_s=300, interval_s=5)
    registries = [CollectorRegistry(), CollectorRegistry(), CollectorRegistry()]  # two model servers, the gateway
    v3 = ServingMetrics("iris", "3", "fp32", registries[0])
    v4 = ServingMetrics("iris", "4", "int8_dynamic", registries[1])
    hits = counter(CACHE_HITS, "hits", ("model",), registries[2])
    misses = counter(CACHE_MISSES, "misses", ("model",), registries[2])
    scrape_round(book, 0.0, registries=registries)
    for _ in range(9):
        v3.request("ok", 0.003)
    v4.request("overloaded", 0.0001)
    hits.labels("iris").inc(3)
    misses.labels("iris").inc(1)
    scrape_round(book, 5.0, registries=registries)
    figures = {f.version: f for f in book.figures("iris", 60, now=5.0)}
    assert figures["3"].requests == 9 and figures["3"].error_rate == 0
    assert figures["4"].variant == "int8_dynamic" and figures["4"].error_rate == 1.0
    assert book.cache_hit_rate("iris", 60, now=5.0) == 0.75
    assert book.version_figures("iris", "5", 60, now=5.0).requests == 0
    # past the retention a model is forgotten
    book.record(1000.0, {})
    assert not book.knows("iris")
