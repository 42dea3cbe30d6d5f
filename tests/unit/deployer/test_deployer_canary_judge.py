"""The pass/fail judgement on a canary's window of model-server metrics beside the baseline's (reading the
pages and taking windows: tests/unit/test_contracts_serving_metrics.py)."""

from __future__ import annotations

import httpx
import pytest

from gallery_common.contracts.serving_metrics import REQUEST_DURATION, REQUESTS, ServingCounts, parse_page
from gallery_deployer.deployer.canary import Thresholds, judge, snapshot

LIMITS = Thresholds(
    max_error_rate=0.01,
    max_p99_ratio=1.5,
    p99_slack_ms=5.0,
    min_agreement=0.95,
    min_requests=20,
    min_latency_requests=50,
)


def metrics_text(ok: int, errors: int, buckets: dict[str, int]) -> str:
    labels = 'model="m",variant="fp32",version="1"'
    lines = [
        f"# TYPE {REQUESTS} counter",
        f'{REQUESTS}{{{labels},outcome="ok"}} {ok}',
        f'{REQUESTS}{{{labels},outcome="error"}} {errors}',
        f"# TYPE {REQUEST_DURATION} histogram",
    ]
    for bound, count in buckets.items():
        lines.append(f'{REQUEST_DURATION}_bucket{{{labels},le="{bound}"}} {count}')
    lines.append(f"{REQUEST_DURATION}_count{{{labels}}} {ok + errors}")
    return "\n".join(lines) + "\n"


def window(ok: int, errors: int, p99_bucket: str) -> ServingCounts:
    buckets = {"0.001": 0, "0.005": 0, "0.05": 0, "+Inf": ok + errors}
    for bound in buckets:
        if bound != "+Inf" and float(bound) >= float(p99_bucket):
            buckets[bound] = ok + errors
    return parse_page(metrics_text(ok, errors, buckets)).overall()


def test_a_healthy_canary_passes() -> None:
    verdict = judge(window(100, 0, "0.005"), window(900, 0, "0.005"), 0.99, LIMITS)
    assert verdict.passed and verdict.reasons == []
    assert verdict.canary_error_rate == 0.0 and verdict.agreement == 0.99


@pytest.mark.parametrize(
    ("canary", "agreement", "reason"),
    [
        (window(90, 10, "0.005"), 0.99, "canary error rate 0.100 is above 0.010"),
        (window(100, 0, "0.05"), 0.99, "canary p99"),
        (window(100, 0, "0.005"), 0.80, "agrees with the baseline on 80.0% of replayed rows"),
        (window(5, 0, "0.005"), None, "the canary served 5 requests, fewer than the 20 needed"),
    ],
)
def test_each_broken_threshold_fails_the_canary_with_its_reason(
    canary: ServingCounts, agreement: float | None, reason: str
) -> None:
    verdict = judge(canary, window(900, 0, "0.005"), agreement, LIMITS)
    assert not verdict.passed
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_slow_p99_over_too_few_requests_is_not_judged() -> None:
    verdict = judge(window(30, 0, "0.05"), window(900, 0, "0.005"), 0.99, LIMITS)
    assert verdict.passed and verdict.canary_p99_ms is not None


async def test_the_canary_window_is_taken_replica_by_replica() -> None:
    # replica a restarted during the window, b went on counting, c answered neither time
    start = {"http://a": metrics_text(500, 9, {"0.005": 509, "+Inf": 509}), "http://b": metrics_text(100, 0, {})}
    end = {"http://a": metrics_text(30, 0, {"0.005": 30, "+Inf": 30}), "http://b": metrics_text(150, 1, {})}

    def replicas(pages: dict[str, str]) -> httpx.AsyncClient:
        def answer(request: httpx.Request) -> httpx.Response:
            page = pages.get(f"{request.url.scheme}://{request.url.host}")
            return httpx.Response(200, text=page) if page else httpx.Response(503)

        return httpx.AsyncClient(transport=httpx.MockTransport(answer))

    endpoints = ["http://a", "http://b", "http://c"]
    async with replicas(start) as before, replicas(end) as after:
        window = (await snapshot(after, endpoints)).since(await snapshot(before, endpoints)).overall()

    assert (window.total, window.errors) == (81.0, 1.0)  # all 30 of the restarted replica, 51 more of b
    assert judge(window, window, None, LIMITS).canary_requests == 81.0
