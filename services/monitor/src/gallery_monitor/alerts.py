"""Alert episodes: a breach opens one alert and one `model.degraded`; it closes after a calm window.

An episode of (model, version, kind, variant) opens on the first breached evaluation and publishes exactly
one `model.degraded`, with the id `degraded:<model>:<version>:<kind>:<episode>` (a variant's:
`degraded:<model>:<version>:<kind>:<variant>:<episode>`). The variant is empty for the version as a whole
and for its own model (FP32); a quality episode of an optimized variant's answers names it, so an INT8
variant's episode and the version's own model's are told apart. Further breaches
while it is open publish nothing. It closes only once every evaluation for a whole window was
within the threshold (hysteresis), so a figure hovering at the threshold is one episode, not a
storm. Open alerts are rows in the database, so a restarted monitor resumes its episodes.

Blocking SQL: call `AlertBook` from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.db import new_id
from gallery_common.events import ModelDegraded
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import counter, get_logger

from .records import AlertPublic, AlertRecord

Kind = Literal["slo", "drift", "quality"]
Publish = Callable[[ModelDegraded, str], Awaitable[object]]

log = get_logger(__name__)
_OPENED = counter("monitor_alerts_opened_total", "Alert episodes opened, by kind.", ("kind",))


def degraded_event_id(model: str, version: int, kind: str, episode: int, variant: str = "") -> str:
    named = f"{variant}:" if variant else ""
    return f"degraded:{model}:{version}:{kind}:{named}{episode}"


@dataclass
class _Episode:
    alert_id: str
    calm_since: float | None = None  # epoch seconds since when every evaluation was within the threshold


class AlertBook:
    """Turns evaluations into alert episodes, stored in the database."""

    def __init__(self, engine: Engine, project_of: Callable[[str], str] = lambda model: DEFAULT_PROJECT) -> None:
        self.engine = engine
        self.project_of = project_of  # a model's project, which its alerts belong to
        self._open: dict[tuple[str, int, str, str], _Episode] = {}  # (model, version, kind, variant)
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        """Pick up the episodes that were open when the monitor last stopped."""
        with Session(self.engine) as session:
            rows = session.exec(select(AlertRecord).where(col(AlertRecord.closed_at).is_(None)))
            self._open = {(r.model, r.version, r.kind, r.variant): _Episode(r.id) for r in rows}

    def open_episodes(self, kind: Kind) -> dict[str, set[tuple[int, str]]]:
        """The (version, variant) of each model with an open episode of `kind`."""
        with self._lock:
            keys = list(self._open)
        episodes: dict[str, set[tuple[int, str]]] = {}
        for model, version, open_kind, variant in keys:
            if open_kind == kind:
                episodes.setdefault(model, set()).add((version, variant))
        return episodes

    def observe(
        self,
        model: str,
        version: int,
        kind: Kind,
        *,
        breached: bool,
        now: float,
        window_s: float,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
        variant: str = "",
    ) -> AlertPublic | None:
        """Record one evaluation of a version (of one `variant`'s answers when given); returns the alert when it
        opened a new episode (to be published)."""
        key = (model, version, kind, variant)
        with self._lock:
            episode = self._open.get(key)
            if episode is not None:
                if breached:
                    episode.calm_since = None
                elif episode.calm_since is None:
                    episode.calm_since = now
                elif now - episode.calm_since >= window_s:
                    self._close(episode.alert_id, now)
                    del self._open[key]
                return None
            if not breached:
                return None
            alert = self._open_alert(key, reason, evidence or {}, window_s, now)
            self._open[key] = _Episode(alert.id)
        _OPENED.labels(kind).inc()
        log.warning(
            "alert_opened",
            model=model, version=version, kind=kind, variant=variant, reason=reason, event_id=alert.event_id,
        )  # fmt: skip
        return alert

    def _open_alert(
        self, key: tuple[str, int, str, str], reason: str, evidence: dict[str, Any], window_s: float, now: float
    ) -> AlertPublic:
        model, version, kind, variant = key
        project = self.project_of(model)
        with Session(self.engine) as session:
            earlier = session.exec(
                select(func.count())
                .select_from(AlertRecord)
                .where(
                    AlertRecord.model == model,
                    AlertRecord.version == version,
                    AlertRecord.kind == kind,
                    AlertRecord.variant == variant,
                )
            ).one()
            episode = int(earlier) + 1
            row = AlertRecord(
                id=new_id(),
                model=model,
                project=project,
                version=version,
                kind=kind,
                variant=variant,
                episode=episode,
                reason=reason,
                evidence=evidence,
                window_s=window_s,
                event_id=degraded_event_id(model, version, kind, episode, variant),
                opened_at=datetime.fromtimestamp(now, UTC),
            )
            session.add(row)
            session.commit()
            session.refresh(row)
            return AlertPublic.of(row)

    def _close(self, alert_id: str, now: float) -> None:
        with Session(self.engine) as session:
            row = session.get(AlertRecord, alert_id)
            if row is not None and row.closed_at is None:
                row.closed_at = datetime.fromtimestamp(now, UTC)
                session.add(row)
                session.commit()
                log.info(
                    "alert_closed",
                    model=row.model, version=row.version, kind=row.kind, variant=row.variant, event_id=row.event_id,
                )  # fmt: skip

    def unpublished(self) -> list[AlertRecord]:
        """Alerts whose `model.degraded` was not stored on the bus yet, oldest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(AlertRecord).where(AlertRecord.published == False).order_by(col(AlertRecord.opened_at))  # noqa: E712
            return list(session.exec(query))

    def mark_published(self, alert_id: str) -> None:
        with Session(self.engine) as session:
            row = session.get(AlertRecord, alert_id)
            if row is not None:
                row.published = True
                session.add(row)
                session.commit()

    def recent(
        self,
        model: str | None = None,
        open_only: bool | None = None,
        limit: int = 100,
        projects: Sequence[str] | None = None,
    ) -> list[AlertPublic]:
        """Alerts newest first, of one model when given, of `projects` only when given; `open_only`
        True: open ones, False: closed ones."""
        query = select(AlertRecord).order_by(col(AlertRecord.opened_at).desc()).limit(limit)
        if projects is not None:
            query = query.where(col(AlertRecord.project).in_(projects))
        if model is not None:
            query = query.where(AlertRecord.model == model)
        if open_only is True:
            query = query.where(col(AlertRecord.closed_at).is_(None))
        elif open_only is False:
            query = query.where(col(AlertRecord.closed_at).is_not(None))
        with Session(self.engine) as session:
            return [AlertPublic.of(row) for row in session.exec(query)]


async def publish_pending(book: AlertBook, publish: Publish) -> int:
    """Publish `model.degraded` for every alert not yet on the bus; returns how many went out.

    The event id is the alert's, so a publish repeated after a crash is stored once by JetStream.
    A failure leaves the alert for the next call.
    """
    sent = 0
    for row in await anyio.to_thread.run_sync(book.unpublished):
        payload = ModelDegraded(
            model=row.model,
            project=row.project,
            version=row.version,
            kind=row.kind,  # type: ignore[arg-type]
            variant=row.variant,
            reason=row.reason,
            evidence=row.evidence,
            window_seconds=row.window_s,
        )
        try:
            await publish(payload, row.event_id)
        except Exception as exc:
            log.warning("degraded_publish_failed", event_id=row.event_id, reason=f"{type(exc).__name__}: {exc}")
            break
        await anyio.to_thread.run_sync(book.mark_published, row.id)
        sent += 1
    return sent
