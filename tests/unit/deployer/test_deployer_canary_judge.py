"""Canary figures from model-server metrics text, and the pass/fail judgement on them."""

from __future__ import annotations

import pytest

from gallery_deployer.deployer.canary import Snapshot, Thresholds, judge, parse_snapshot

LIMITS = Thresholds(
    max_error_rate=0.01,
    max_p99_ratio=1.5,
    p99_slack_ms=5.0,
    min_agreement=0.95,
    min_requests=20,
    min_latency_requests=50,
)


def metrics_text(ok: int, errors: int, buckets: dict[str, int]) -> str:
    lines = [
        "# TYPE modelgallery_inference_requests_total counter",
        f'modelgallery_inference_requests_total{{model="m",outcome="ok",variant="fp32",version="1"}} {ok}',
        f'modelgallery_inference_requests_total{{model="m",outcome="error",variant="fp32",version="1"}} {errors}',
        "# TYPE modelgallery_inference_request_duration_seconds histogram",
    ]
    for bound, count in buckets.items():
        lines.append(f'modelgallery_inference_request_duration_seconds_bucket{{le="{bound}",model="m"}} {count}')
    lines.append(f'modelgallery_inference_request_duration_seconds_count{{model="m"}} {ok + errors}')
    return "\n".join(lines) + "\n"


def test_replicas_add_up_and_a_window_is_the_difference_of_two_snapshots() -> None:
    start = parse_snapshot(metrics_text(10, 0, {"0.001": 10, "0.01": 10, "+Inf": 10}))
    now = parse_snapshot(metrics_text(60, 1, {"0.001": 50, "0.01": 61, "+Inf": 61}))
    parse_snapshot(metrics_text(40, 0, {"0.001": 40, "0.01": 40, "+Inf": 40}), into=now)  # a second replica

    window = now.minus(start)

    assert (window.total, window.errors) == (91.0, 1.0)
    assert window.quantile(0.5) == pytest.approx(0.001 * 45.5 / 80)  # inside the first bucket
    p99 = window.quantile(0.99)
    assert p99 is not None and 0.001 < p99 <= 0.01


def test_an_empty_window_has_no_quantile() -> None:
    assert Snapshot().quantile(0.99) is None


def window(ok: int, errors: int, p99_bucket: str) -> Snapshot:
    buckets = {"0.001": 0, "0.005": 0, "0.05": 0, "+Inf": ok + errors}
    for bound in buckets:
        if bound != "+Inf" and float(bound) >= float(p99_bucket):
            buckets[bound] = ok + errors
    return parse_snapshot(metrics_text(ok, errors, buckets))


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
    canary: Snapshot, agreement: float | None, reason: str
) -> None:
    verdict = judge(canary, window(900, 0, "0.005"), agreement, LIMITS)
    assert not verdict.passed
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_slow_p99_over_too_few_requests_is_not_judged() -> None:
    verdict = judge(window(30, 0, "0.05"), window(900, 0, "0.005"), 0.99, LIMITS)
    assert verdict.passed and verdict.canary_p99_ms is not None
