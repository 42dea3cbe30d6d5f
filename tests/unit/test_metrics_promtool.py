"""Every metric any Model Gallery process exports passes `promtool check metrics`, with samples in every
labelled series (a labelled metric nobody touched shows only its HELP and TYPE lines).

The lifecycle test checks the real pages of every running process too; this one names the offender fast.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from service_apps import LIFECYCLE_APPS

from gallery_common import telemetry
from gallery_deployer.modelserver.metrics import ExplainMetrics, Outcome, ServingMetrics

# the modules that define the services' metrics are imported through each service's app factory
# (LIFECYCLE_APPS; a model server makes its metrics per served model: the test below covers them)


# run in a fresh interpreter, so the samples it adds never reach the metrics other tests read
EXPOSE = """
import importlib, sys
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
importlib.import_module(sys.argv[1])
ours = [c for c in list(REGISTRY._collector_to_names)
        if isinstance(c, MetricWrapperBase) and c._name.startswith(sys.argv[2])]
assert ours, "no Model Gallery metric registered"
for metric in ours:
    child = metric.labels(*(f"x{i}" for i in range(len(metric._labelnames)))) if metric._labelnames else metric
    if metric._type in ("counter", "gauge"):
        child.inc()
    else:
        child.observe(0.5)
sys.stdout.write(generate_latest(REGISTRY).decode())
"""


@pytest.mark.parametrize("app", LIFECYCLE_APPS)
def test_the_metrics_a_service_defines_pass_promtool(app: str, promtool) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, "-c", EXPOSE, app, telemetry.METRIC_PREFIX], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{telemetry.METRIC_PREFIX}" in done.stdout
    assert promtool.problems(done.stdout) == ""


def test_a_model_servers_metrics_pass_promtool(promtool) -> None:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    metrics = ServingMetrics("digits", "1", "int8_dynamic", registry)
    for outcome in Outcome.all:
        metrics.request(outcome, 0.002)
    metrics.queued(0.0001)
    metrics.computed(0.001, 8)
    ExplainMetrics("digits", "1", "int8_dynamic", registry).explained("shap", "timeout", 30.0)
    assert promtool.problems(generate_latest(registry)) == ""


def test_promtool_finds_a_gauge_named_like_a_histogram_series(promtool) -> None:  # type: ignore[no-untyped-def]
    # the check itself can fail: the gateway's breaker gauge used to be `..._state_count`
    registry = CollectorRegistry()
    Gauge("modelgallery_gateway_breaker_state_count", "state", ("model",), registry=registry).labels("m").set(2)
    assert 'should not have "_count" suffix' in promtool.problems(generate_latest(registry))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (telemetry.gauge, "breaker_state_count"),
        (telemetry.gauge, "requests_total"),
        (telemetry.histogram, "requests_total"),
        (telemetry.counter, "latency_seconds"),
    ],
)
def test_the_metric_helpers_refuse_names_promtool_would(make, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=name):
        make(name, "doc", registry=CollectorRegistry())
