"""One terminal line per lifecycle event, for `gallery events tail`."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from gallery_common.events import CloudEvent
from gallery_common.telemetry import trace_id_of

SUMMARY_WIDTH = 100


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if "uri" in value:  # an ArtifactRef: where it is matters, its digest is noise here
            return str(value["uri"])
        if value and all(isinstance(v, dict) for v in value.values()):
            return "[" + ",".join(value) + "]"
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float | bool) for v in value):
            return "[" + ",".join(_compact(v) for v in value) + "]"
        return f"[{len(value)} item{'s' if len(value) != 1 else ''}]"
    return str(value)


def summarize(data: Any, width: int = SUMMARY_WIDTH) -> str:
    """`key=value` pairs of a payload, cut to `width`; defaults and what the subject says are left out."""
    fields = data.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    label = data.version_label()
    fields.pop("model", None)
    fields.pop("version", None)
    if fields.get("run_id") == label:
        fields.pop("run_id")
    text = " ".join(f"{key}={_compact(value)}" for key, value in fields.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def event_line(event: CloudEvent[Any], subject: str | None = None) -> str:
    """time, NATS subject, CloudEvent subject, short id, trace id and a data summary."""
    when = event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    trace = trace_id_of(event.traceparent) or "-"
    return "  ".join(
        (when, subject or event.nats_subject, event.subject, event.id[:8], f"trace={trace}", summarize(event.data))
    )
