import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gallery_common.telemetry import (
    configure_logging,
    configure_tracing,
    continued_span,
    counter,
    get_logger,
    histogram,
    inject_trace_context,
    trace_id_of,
    tracer,
)


def test_log_lines_are_json_with_service_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("registry")
    configure_tracing("registry")
    with tracer().start_as_current_span("work") as span:
        get_logger().info("version registered", model="digits")
        trace_id = format(span.get_span_context().trace_id, "032x")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["service"] == "registry"
    assert line["event"] == "version registered"
    assert line["trace_id"] == trace_id
    assert len(line["span_id"]) == 16


def test_trace_context_continues_across_an_event() -> None:
    configure_tracing("trainer")
    with tracer().start_as_current_span("publish") as span:
        carrier = inject_trace_context()
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id_of(carrier["traceparent"]) == trace_id
    with continued_span("handle", carrier["traceparent"]) as consumer_span:
        assert format(consumer_span.get_span_context().trace_id, "032x") == trace_id


def test_metric_names_carry_prefix_and_unit() -> None:
    registry = CollectorRegistry()
    counter("widgets_built_total", "widgets", registry=registry).inc()
    histogram("widget_build_seconds", "time", registry=registry).observe(0.1)
    text = generate_latest(registry).decode()
    assert "modelgallery_widgets_built_total 1.0" in text
    assert "modelgallery_widget_build_seconds_bucket" in text
    with pytest.raises(ValueError, match="unit"):
        counter("widgets", "no unit", registry=registry)
