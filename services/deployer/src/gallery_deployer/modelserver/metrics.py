"""Prometheus metrics of one model server, each labelled with model, version and variant.

Explanations have series of their own (`ExplainMetrics`): the canary analysis compares the inference
series of two versions, and an explanation (seconds of work) must not count as an infer request there.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from gallery_common.contracts.serving_metrics import (
    BATCH_SIZE,
    REQUEST_DURATION,
    REQUESTS,
    SERIES_LABELS,
    Outcome,
)
from gallery_common.telemetry import counter, histogram

__all__ = [
    "BATCH_BUCKETS",
    "EXPLAIN_BUCKETS",
    "EXPLAIN_METHODS",
    "EXPLAIN_OUTCOMES",
    "LATENCY_BUCKETS",
    "ExplainMetrics",
    "Outcome",
    "ServingMetrics",
]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EXPLAIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
EXPLAIN_METHODS = ("shap", "lime", "unknown")  # unknown: the request ended before its method was read
EXPLAIN_TIMEOUT = "timeout"  # an explanation stopped at GALLERY_EXPLAIN_TIMEOUT_S
EXPLAIN_OUTCOMES = (*Outcome.all, EXPLAIN_TIMEOUT)


class ServingMetrics:
    """The metrics of one served model, bound to its labels once so the hot path does no label lookups."""

    def __init__(self, model: str, version: str, variant: str, registry: CollectorRegistry = REGISTRY) -> None:
        labels = (model, version, variant)
        requests = counter(REQUESTS, "Inference requests by outcome.", (*SERIES_LABELS, "outcome"), registry)
        self._requests = {outcome: requests.labels(*labels, outcome) for outcome in Outcome.all}
        self._request_seconds = histogram(
            REQUEST_DURATION, "Whole infer request time.", SERIES_LABELS, LATENCY_BUCKETS, registry
        ).labels(*labels)
        self._queue_seconds = histogram(
            "inference_queue_duration_seconds", "Wait for a batch.", SERIES_LABELS, LATENCY_BUCKETS, registry
        ).labels(*labels)
        self._compute_seconds = histogram(
            "inference_compute_duration_seconds",
            "ONNX Runtime time per batch.",
            SERIES_LABELS,
            LATENCY_BUCKETS,
            registry,
        ).labels(*labels)
        self._batch_size = histogram(
            BATCH_SIZE, "Rows per batch run by ONNX Runtime.", SERIES_LABELS, BATCH_BUCKETS, registry
        ).labels(*labels)

    def request(self, outcome: str, seconds: float) -> None:
        """Count one finished infer request and its duration."""
        self._requests[outcome].inc()
        self._request_seconds.observe(seconds)

    def queued(self, seconds: float) -> None:
        self._queue_seconds.observe(seconds)

    def computed(self, seconds: float, rows: int) -> None:
        self._compute_seconds.observe(seconds)
        self._batch_size.observe(rows)


class ExplainMetrics:
    """The explanations of one served model: requests by method and outcome, and their duration."""

    def __init__(self, model: str, version: str, variant: str, registry: CollectorRegistry = REGISTRY) -> None:
        labels = (model, version, variant)
        requests = counter(
            "explain_requests_total",
            "Explain requests by method and outcome.",
            (*SERIES_LABELS, "method", "outcome"),
            registry,
        )
        seconds = histogram(
            "explain_request_duration_seconds",
            "Whole explain request time, queue wait included.",
            (*SERIES_LABELS, "method"),
            EXPLAIN_BUCKETS,
            registry,
        )
        self._requests = {
            (method, outcome): requests.labels(*labels, method, outcome)
            for method in EXPLAIN_METHODS
            for outcome in EXPLAIN_OUTCOMES
        }
        self._seconds = {method: seconds.labels(*labels, method) for method in EXPLAIN_METHODS}

    def explained(self, method: str, outcome: str, seconds: float) -> None:
        """Count one finished explain request (`method` one of EXPLAIN_METHODS) and its duration."""
        self._requests[method, outcome].inc()
        self._seconds[method].observe(seconds)
