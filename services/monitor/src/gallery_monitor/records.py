"""The monitor's tables (lifecycle events, SLOs, alerts) and what its API gives out.

Table rows never leave the store modules; they answer with the `...Public` models below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer
from sqlmodel import AutoString, SQLModel
from sqlmodel import Field as SQLField

from gallery_common.db import as_utc, utcnow
from gallery_common.projects import DEFAULT_PROJECT


def _project_column() -> Column[str]:
    """The project a row belongs to; the database's default (not SQLAlchemy's) fills rows from before."""
    return Column(AutoString(63), nullable=False, index=True, server_default=DEFAULT_PROJECT)


class LifecycleEvent(SQLModel, table=True):
    """One lifecycle event as the monitor saw it; `event_id` is unique, so a redelivery adds nothing."""

    __tablename__ = "monitor_event"

    seq: int | None = SQLField(default=None, primary_key=True)
    event_id: str = SQLField(unique=True, max_length=256)
    model: str = SQLField(index=True, max_length=128)
    project: str = SQLField(default=DEFAULT_PROJECT, sa_column=_project_column())  # the event's (its model's)
    version: int | None = None
    event: str = SQLField(max_length=64)
    time: datetime = SQLField(sa_column=Column(DateTime(timezone=True), nullable=False))
    trace_id: str | None = SQLField(default=None, max_length=32)
    summary: str = ""
    data: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))


class OutcomeRecord(SQLModel, table=True):
    """One `model.outcome` (feedback on one answer) as sums that add up over any window; `event_id` is
    unique, so a redelivery adds nothing. `answered_s` / `answered_minute`: when the answer was given."""

    __tablename__ = "monitor_outcome"
    __table_args__ = (Index("ix_monitor_outcome_model_answered_s", "model", "answered_s"),)

    seq: int | None = SQLField(default=None, primary_key=True)
    event_id: str = SQLField(unique=True, max_length=256)
    model: str = SQLField(max_length=128)
    project: str = SQLField(default=DEFAULT_PROJECT, sa_column=_project_column())
    version: str = SQLField(max_length=64)
    variant: str = SQLField(default="", max_length=128)
    kind: str = SQLField(max_length=16)
    answered_s: float = SQLField(index=True)
    answered_minute: int
    rows: int
    labelled_rows: int = 0
    correct_rows: int = 0
    valued_rows: int = 0
    squared_error: float = 0.0
    rewarded: int = 0
    reward: float = 0.0


class SloRecord(SQLModel, table=True):
    """A model's SLOs as set over REST; a model without a row uses the settings' defaults."""

    __tablename__ = "monitor_slo"

    model: str = SQLField(primary_key=True, max_length=128)
    p99_ms: float
    error_rate: float
    drift_psi: float
    drift_min_samples: int
    window_s: float
    min_online_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    max_online_rmse: float | None = None
    max_rmse_ratio: float | None = None
    # rows from before quality SLOs get the defaults of then from the database
    quality_min_rows: int = SQLField(sa_column=Column(Integer, nullable=False, server_default="50"))
    quality_window_s: float = SQLField(sa_column=Column(Float, nullable=False, server_default="3600"))
    updated_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class AlertRecord(SQLModel, table=True):
    """One episode of a breached SLO or of drift, open until the figure was fine for a whole window."""

    __tablename__ = "monitor_alert"

    id: str = SQLField(primary_key=True, max_length=32)
    model: str = SQLField(index=True, max_length=128)
    project: str = SQLField(default=DEFAULT_PROJECT, sa_column=_project_column())  # the model's
    version: int
    kind: str = SQLField(max_length=16)
    # the variant whose answers broke a quality SLO; empty: the version's as a whole
    variant: str = SQLField(default="", sa_column=Column(AutoString(128), nullable=False, server_default=""))
    episode: int
    reason: str
    evidence: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    window_s: float
    event_id: str = SQLField(unique=True, max_length=256)
    published: bool = False
    opened_at: datetime = SQLField(sa_column=Column(DateTime(timezone=True), nullable=False))
    closed_at: datetime | None = SQLField(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class Slo(BaseModel):
    """A model's service-level objectives and drift thresholds."""

    p99_ms: float = Field(gt=0, description="p99 latency a version may have over the window, in ms")
    error_rate: float = Field(ge=0, le=1, description="share of requests that may fail (server errors, overload)")
    drift_psi: float = Field(gt=0, description="largest per-feature PSI before a feature may count as drifted")
    drift_min_samples: int = Field(ge=10, description="samples a window needs before drift is judged")
    window_s: float = Field(gt=0, description="the window SLOs and drift are evaluated over, in seconds")
    min_online_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="online accuracy (from feedback labels) a version may not fall below; null: off",
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="how far online accuracy may fall below the test accuracy of what answered (0.05: 5 points): "
        "the gate's for the version's own model, the optimizer's for an optimized variant; null: off",
    )
    max_online_rmse: float | None = Field(
        default=None,
        gt=0,
        description="a regressor's online rmse (from feedback values) a version may not exceed; null: off",
    )
    max_rmse_ratio: float | None = Field(
        default=None,
        ge=1,
        description="how many times the test rmse of what answered (the gate's, or the optimizer's for an optimized "
        "variant) a regressor's online rmse may reach (1.2: 20 % worse); null: off",
    )
    quality_min_rows: int = Field(
        default=50,
        ge=1,
        description="rows with feedback a version (each variant of it on its own) needs in the quality window before "
        "it is judged",
    )
    quality_window_s: float = Field(
        default=3600.0, gt=0, description="the window online quality is judged over, in seconds (feedback comes late)"
    )


class SloUpdate(BaseModel):
    """A PUT body: fields left out keep their current value."""

    model_config = ConfigDict(extra="forbid")

    p99_ms: float | None = Field(default=None, gt=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    drift_psi: float | None = Field(default=None, gt=0)
    drift_min_samples: int | None = Field(default=None, ge=10)
    window_s: float | None = Field(default=None, gt=0)
    min_online_accuracy: float | None = Field(default=None, ge=0, le=1, description="null: off")
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1, description="null: off")
    max_online_rmse: float | None = Field(default=None, gt=0, description="null: off")
    max_rmse_ratio: float | None = Field(default=None, ge=1, description="null: off")
    quality_min_rows: int | None = Field(default=None, ge=1)
    quality_window_s: float | None = Field(default=None, gt=0)


# the SLOs a PUT may set to null (off); null for another field leaves it as it is
NULLABLE_SLOS = frozenset({"min_online_accuracy", "max_accuracy_drop", "max_online_rmse", "max_rmse_ratio"})


class SloPublic(Slo):
    model: str


class TimelineItem(BaseModel):
    version: int | None
    event: str
    time: datetime
    event_id: str
    trace_id: str | None
    summary: str


class VersionOverview(BaseModel):
    version: int
    last_event: str
    last_event_at: datetime
    stage: str | None = None
    variant: str | None = None
    traffic_percent: float | None = None


class ModelOverview(BaseModel):
    model: str
    project: str = DEFAULT_PROJECT
    versions: list[VersionOverview]
    aliases: dict[str, int | None]


class AlertPublic(BaseModel):
    id: str
    model: str
    project: str = DEFAULT_PROJECT
    version: int | None
    kind: Literal["slo", "drift", "quality"]
    variant: str = Field(default="", description="the variant whose answers broke a quality SLO; empty: the version's")
    reason: str
    evidence: dict[str, Any]
    opened_at: datetime
    closed_at: datetime | None
    event_id: str

    @classmethod
    def of(cls, row: AlertRecord) -> AlertPublic:
        return cls(
            id=row.id,
            model=row.model,
            project=row.project,
            version=row.version,
            kind=row.kind,  # type: ignore[arg-type]
            variant=row.variant,
            reason=row.reason,
            evidence=row.evidence,
            opened_at=as_utc(row.opened_at),  # type: ignore[arg-type]
            closed_at=as_utc(row.closed_at),
            event_id=row.event_id,
        )
