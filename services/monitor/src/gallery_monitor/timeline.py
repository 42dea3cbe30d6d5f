"""Every lifecycle event per model version, with its trace id, and what the monitor learns from them.

Blocking SQL: call from worker threads. Recording is idempotent on the event id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.db import as_utc, insert_once
from gallery_common.errors import NotFound
from gallery_common.events import CloudEvent
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import trace_id_of

from .records import LifecycleEvent, ModelOverview, TimelineItem, VersionOverview

SUMMARY_LIMIT = 300
PRODUCTION = "production"


def _metrics_text(metrics: dict[str, Any], names: tuple[str, ...] = ("accuracy", "macro_f1", "loss")) -> str:
    shown = [f"{name} {metrics[name]:.3g}" for name in names if isinstance(metrics.get(name), int | float)]
    return f" ({', '.join(shown)})" if shown else ""


def summarize(event: str, data: dict[str, Any]) -> str:
    """One line a person reads in the timeline."""
    if event == "trained":
        text = f"trained by run {data.get('run_id')}{_metrics_text(data.get('metrics') or {})}"
    elif event == "validated":
        semver = f" (semver {data['semver']})" if data.get("semver") else ""
        text = f"validated as version {data.get('version')}{semver}{_metrics_text(data.get('report') or {})}"
    elif event == "rejected":
        text = "rejected: " + "; ".join(data.get("reasons") or [])
    elif event == "optimized":
        variants = data.get("variants") or []
        text = f"optimized: {data.get('recommended')} recommended of {len(variants)} variants"
    elif event == "deployed":
        fallback = f"; fallback: {data['fallback']}" if data.get("fallback") else ""
        text = (
            f"deployed {data.get('variant')} as {data.get('stage')} with {data.get('traffic_percent', 0):g}% "
            f"of traffic ({data.get('runtime')}){fallback}"
        )
    elif event == "deployment_failed":
        text = f"deployment failed: {data.get('reason')}"
    elif event == "rolled_back":
        target = f" to version {data['to_version']}" if data.get("to_version") else ""
        text = f"rolled back{target}: {data.get('reason')}"
    elif event == "degraded":
        text = f"degraded ({data.get('kind')}): {data.get('reason')}"
    else:
        text = event.replace("_", " ")
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


@dataclass
class _VersionState:
    version: int
    last_event: str
    last_event_at: datetime
    stage: str | None = None
    variant: str | None = None
    traffic_percent: float | None = None


def overview(model: str, events: list[LifecycleEvent]) -> ModelOverview:
    """Fold a model's events (oldest first) into its versions' stages and its production alias.

    Stage, variant and traffic come from a version's latest `model.deployed`; a version rolled back
    becomes `rolled_back` (no traffic) and the one rolled back to `production`; a production
    version another one replaced in production becomes `previous` (a fallback without traffic).
    """
    versions: dict[int, _VersionState] = {}
    production: int | None = None
    for row in events:
        moment = as_utc(row.time)
        assert moment is not None
        if row.version is None:
            continue
        state = versions.setdefault(row.version, _VersionState(row.version, row.event, moment))
        state.last_event, state.last_event_at = row.event, moment
        if row.event == "deployed":
            state.stage = row.data.get("stage")
            state.variant = row.data.get("variant")
            state.traffic_percent = row.data.get("traffic_percent")
            if state.stage == PRODUCTION:
                _demote_others(versions, keep=row.version)
                production = row.version
        elif row.event == "rolled_back":
            state.stage, state.traffic_percent = "rolled_back", 0.0
            to_version = row.data.get("to_version")
            if isinstance(to_version, int):
                target = versions.setdefault(to_version, _VersionState(to_version, "rolled_back", moment))
                _demote_others(versions, keep=to_version)
                target.stage, target.traffic_percent = PRODUCTION, 100.0
                production = to_version
    return ModelOverview(
        model=model,
        versions=[VersionOverview(**vars(s)) for s in sorted(versions.values(), key=lambda s: s.version)],
        aliases={PRODUCTION: production},
    )


def _demote_others(versions: dict[int, _VersionState], keep: int) -> None:
    for other in versions.values():
        if other.version != keep and other.stage == PRODUCTION:
            other.stage, other.traffic_percent = "previous", 0.0


class TimelineStore:
    """Reads and writes lifecycle events."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, event: CloudEvent[Any]) -> bool:
        """Store an event once; False when its id is already stored."""
        data = event.data.model_dump(mode="json", exclude_none=True)
        row = LifecycleEvent(
            event_id=event.id,
            model=event.data.model,
            project=event.data.project,
            version=data.get("version") if isinstance(data.get("version"), int) else None,
            event=event.event,
            time=event.time,
            trace_id=trace_id_of(event.traceparent),
            summary=summarize(event.event, data),
            data=data,
        )
        return insert_once(self.engine, row, LifecycleEvent.event_id, event.id)

    def _events(self, model: str) -> list[LifecycleEvent]:
        with Session(self.engine) as session:
            query = (
                select(LifecycleEvent)
                .where(LifecycleEvent.model == model)
                .order_by(col(LifecycleEvent.time), col(LifecycleEvent.seq))
            )
            return list(session.exec(query))

    def knows(self, model: str) -> bool:
        with Session(self.engine) as session:
            return session.exec(select(LifecycleEvent.seq).where(LifecycleEvent.model == model)).first() is not None

    @staticmethod
    def missing(model: str) -> NotFound:
        """The answer for a model without events, and for one in a project the caller cannot see."""
        return NotFound(f"the monitor has seen no lifecycle event of model {model!r}")

    def timeline(self, model: str) -> list[TimelineItem]:
        """The model's events, oldest first; NotFound when the monitor never saw one."""
        events = self._events(model)
        if not events:
            raise self.missing(model)
        return [
            TimelineItem(
                version=row.version,
                event=row.event,
                time=as_utc(row.time),  # type: ignore[arg-type]
                event_id=row.event_id,
                trace_id=row.trace_id,
                summary=row.summary,
            )
            for row in events
        ]

    def model_names(self, projects: Sequence[str] | None = None) -> list[str]:
        """The models the monitor saw an event of; of `projects` only when given."""
        query = select(LifecycleEvent.model).distinct()
        if projects is not None:
            query = query.where(col(LifecycleEvent.project).in_(projects))
        with Session(self.engine) as session:
            return sorted(session.exec(query))

    def project_of(self, model: str) -> str:
        """The model's project, from its latest lifecycle event (a model's project never changes; the
        gateway's figures and samples name only the model). `default` for a model never seen in an
        event, as for models from before projects."""
        query = (
            select(LifecycleEvent.project)
            .where(LifecycleEvent.model == model)
            .order_by(col(LifecycleEvent.time).desc(), col(LifecycleEvent.seq).desc())
            .limit(1)
        )
        with Session(self.engine) as session:
            return session.exec(query).first() or DEFAULT_PROJECT

    def _latest_data(self, model: str, event: str) -> dict[int, dict[str, Any]]:
        """Each version's latest `event` of the model, its data by version number."""
        query = (
            select(LifecycleEvent.version, LifecycleEvent.data)
            .where(LifecycleEvent.model == model, LifecycleEvent.event == event)
            .order_by(col(LifecycleEvent.time), col(LifecycleEvent.seq))
        )
        with Session(self.engine) as session:
            rows = list(session.exec(query))
        return {version: dict(data) for version, data in rows if version is not None}

    def gate_reports(self, model: str) -> dict[int, dict[str, Any]]:
        """Each version's latest gate report, from its `model.validated` (what online quality is held to)."""
        return {
            version: dict(data.get("report") or {}) for version, data in self._latest_data(model, "validated").items()
        }

    def variant_metrics(self, model: str) -> dict[tuple[int, str], dict[str, Any]]:
        """What the optimizer measured of each variant of each version (its `model.optimized`), by
        (version, variant name): accuracy or rmse on the version's test split, latency, size."""
        return {
            (version, str(variant.get("name"))): dict(variant.get("metrics") or {})
            for version, data in self._latest_data(model, "optimized").items()
            for variant in data.get("variants") or []
            if isinstance(variant, dict) and variant.get("name")
        }

    def overview(self, model: str) -> ModelOverview:
        return overview(model, self._events(model)).model_copy(update={"project": self.project_of(model)})

    def overviews(self, projects: Sequence[str] | None = None) -> list[ModelOverview]:
        return [self.overview(name) for name in self.model_names(projects)]
