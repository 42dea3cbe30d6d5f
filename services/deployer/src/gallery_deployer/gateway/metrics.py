"""The gateway's Prometheus metrics (names get the modelgallery_ prefix)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client.metrics import MetricWrapperBase

from gallery_common.contracts import serving_metrics
from gallery_common.telemetry import counter, gauge, histogram

M = TypeVar("M", bound=MetricWrapperBase)
_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def bound(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, looked up once: `labels()` takes a lock and checks its arguments on every
    call, which the request path pays several times per request. The gateway never removes a child."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child  # type: ignore[no-any-return]


REQUESTS = counter(
    "gateway_requests_total",
    "Attempts at a backend by outcome (ok, client_error, server_error, timeout, unreachable, open)",
    ("model", "backend", "outcome"),
)
LATENCY = histogram(
    "gateway_request_duration_seconds",
    "Time from receiving an inference request to answering it",
    ("model",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ROUTES_REVISION = gauge(
    "gateway_routes_revision", "Highest revision of the routes bucket this replica's routing table has taken in"
)
BREAKER_STATE = gauge("gateway_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open", ("model", "backend"))
FALLBACKS = counter("gateway_fallbacks_total", "Requests answered by a link after the first", ("model",))
FAILURES = counter("gateway_failures_total", "Requests where every link failed", ("model", "status"))
CACHE_HITS = counter(serving_metrics.CACHE_HITS, "Inference answers served from the cache", ("model",))
CACHE_MISSES = counter(serving_metrics.CACHE_MISSES, "Cacheable requests not found in the cache", ("model",))
SHADOW_LATENCY = histogram("gateway_shadow_duration_seconds", "Shadow backend answer time", ("model", "backend"))
SHADOW_AGREEMENT = counter(
    "gateway_shadow_agreement_total",
    "Shadow answers compared with the served one (argmax of the first output): agree true/false/error",
    ("model", "backend", "agree"),
)
SAMPLES = counter("gateway_samples_total", "Request/answer samples for the monitor by outcome", ("model", "outcome"))
COLD_STARTS = histogram(
    "gateway_cold_start_duration_seconds",
    "Time requests waited for a scaled-to-zero model to wake",
    ("model",),
    (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
EXPLAIN_REQUESTS = counter(
    "gateway_explain_requests_total",
    "Explain attempts at a backend by outcome, apart from inference (ok, client_error, server_error, timeout, "
    "unreachable, open)",
    ("model", "backend", "outcome"),
)
EXPLAIN_LATENCY = histogram(
    "gateway_explain_duration_seconds",
    "Time from receiving an explain request to answering it",
    ("model",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
OUTCOME_RECORDS = counter(
    "gateway_outcome_records_total",
    "Answers of routes that record outcomes, by what became of them (recorded, dropped: the queue was full, "
    "duplicate: the request id had a record, unreadable, failed)",
    ("model", "outcome"),
)
# Online accuracy of a version (of one variant of it: the variant the route named for the backend that
# answered): outcome_correct_rows / outcome_rows; its mean reward:
# (outcome_reward_gained - outcome_reward_lost) / outcomes{kind="reward"}.
_ANSWERED_BY = ("model", "version", "variant")
OUTCOMES = counter(
    "outcomes_total",
    "Feedback joined to an answer, by the version and variant that answered and kind (label, reward, value)",
    (*_ANSWERED_BY, "kind"),
)
OUTCOME_ROWS = counter("outcome_rows_total", "Rows of answers that got a label", _ANSWERED_BY)
OUTCOME_CORRECT_ROWS = counter("outcome_correct_rows_total", "Rows whose label is the answer's top class", _ANSWERED_BY)
# Online error of a regressor's version: sqrt(outcome_squared_error / outcome_value_rows) is its rmse.
OUTCOME_VALUE_ROWS = counter("outcome_value_rows_total", "Rows of answers that got a true value", _ANSWERED_BY)
OUTCOME_SQUARED_ERROR = counter(
    "outcome_squared_error_total",
    "Sum over valued rows of the squared error of the predictions (averaged over a row's outputs)",
    _ANSWERED_BY,
)
OUTCOME_REWARD_GAINED = counter("outcome_reward_gained_total", "Sum of the positive rewards", _ANSWERED_BY)
OUTCOME_REWARD_LOST = counter(
    "outcome_reward_lost_total", "Sum of the negative rewards, as a positive number", _ANSWERED_BY
)
