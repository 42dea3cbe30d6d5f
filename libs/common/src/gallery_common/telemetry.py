"""Logs, traces and metrics, set up the same way in every service.

- structlog JSON lines carrying service, trace_id and span_id;
- an OpenTelemetry tracer provider, exporting over OTLP/HTTP when an endpoint is set;
- W3C trace context carried in events (`traceparent` / `tracestate` extensions);
- Prometheus metric names prefixed `modelgallery_` with the unit in the name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# structlog's console renderer loads rich when it is installed (a twentieth of a second of every start);
# these logs are JSON lines and never use it, so structlog is imported with rich hidden (None in
# sys.modules makes `import rich` fail), and rich imports normally afterwards for whoever wants it.
_HIDE_RICH = "structlog" not in sys.modules and "rich" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

METRIC_PREFIX = "modelgallery_"
# "_state": a gauge whose value is one of a few states (0 closed, 1 half-open, ...), unitless like Prometheus' `up`;
# "_revision": a gauge holding a JetStream sequence (the routes bucket's revision a gateway has applied)
UNIT_SUFFIXES = (
    "_seconds", "_bytes", "_total", "_ratio", "_count", "_info", "_events", "_requests", "_percent", "_state",
    "_revision", "_processes", "_jobs",
)  # fmt: skip
# the series a histogram or summary adds to its name: `promtool check metrics` refuses them on other types
_SERIES_SUFFIXES = ("_count", "_sum", "_bucket")
_propagator = TraceContextTextMapPropagator()


def _add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is now, not the one at configuration time.

    Test runners and daemonisers swap `sys.stderr`; a handler holding the old one writes to a
    closed stream.
    """

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON logs on stderr, one object per line, with the service and the current trace."""
    logging.basicConfig(format="%(message)s", level=level, handlers=[_CurrentStderrHandler()], force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def configure_tracing(service: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install a tracer provider for this process; spans go to OTLP when an endpoint is given.

    OpenTelemetry allows one global provider per process, so a second call returns the first. The
    SDK is imported here, not with this module: a process that never traces (a model server) skips it.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider


@cache  # the SDK builds a new Tracer per call (~30 us), and continued_span runs once per event
def tracer(name: str = "modelgallery") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_trace_context() -> dict[str, str]:
    """The current trace as `traceparent` (and `tracestate`) for an outgoing event."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def extract_trace_context(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context:
    carrier = {"traceparent": traceparent} if traceparent else {}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


@contextmanager
def continued_span(
    name: str, traceparent: str | None, tracestate: str | None = None, **attributes: Any
) -> Iterator[trace.Span]:
    """A span that continues the trace an incoming event carried (or starts one)."""
    ctx = extract_trace_context(traceparent, tracestate)
    with tracer().start_as_current_span(name, context=ctx, kind=trace.SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a W3C traceparent header."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


def metric_name(name: str, kind: str = "histogram") -> str:
    """Prefix a metric name and insist the unit is part of it, in a form `promtool check metrics` accepts.

    Only histograms may end like their own series (`_count`, `_sum`); only counters end in `_total`.
    """
    full = name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name
    if not full.endswith(UNIT_SUFFIXES):
        raise ValueError(f"metric {full!r} must end with its unit, one of {UNIT_SUFFIXES}")
    if kind != "histogram" and full.endswith(_SERIES_SUFFIXES):
        raise ValueError(f"a {kind} named {full!r} would look like a histogram's series; name its unit instead")
    if (kind == "counter") != full.endswith("_total"):
        raise ValueError(f"{full!r}: counters, and only counters, end in _total")
    return full


def counter(name: str, doc: str, labels: tuple[str, ...] = (), registry: CollectorRegistry = REGISTRY) -> Counter:
    # prometheus_client appends _total itself; strip it so the exposed name is not doubled
    return Counter(metric_name(name, "counter").removesuffix("_total"), doc, labels, registry=registry)


def histogram(
    name: str,
    doc: str,
    labels: tuple[str, ...] = (),
    buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS,
    registry: CollectorRegistry = REGISTRY,
) -> Histogram:
    return Histogram(metric_name(name), doc, labels, buckets=buckets, registry=registry)


def gauge(name: str, doc: str, labels: tuple[str, ...] = (), registry: CollectorRegistry = REGISTRY) -> Gauge:
    return Gauge(metric_name(name, "gauge"), doc, labels, registry=registry)
