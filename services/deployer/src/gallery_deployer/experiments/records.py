"""The experiments' records: one row per experiment with its arms' running figures, and the points
their curves are drawn from.

Blocking SQL: call these from worker threads. The tables are the deployer's (its migrations create them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import JSON, Column, DateTime
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from gallery_common.db import new_id, utcnow

from ..deployer.records import HandledEvent

Metric = Literal["accuracy", "reward", "squared_error", "p99", "error_rate"]
Policy = Literal["fixed", "bandit"]


class ExperimentStatus(StrEnum):
    running = "running"
    concluded = "concluded"  # the test decided: a winner, or no difference
    stopped = "stopped"  # a person ended it


class ArmFigures(BaseModel):
    """One arm's outcomes so far: `n` samples, their sum and sum of squares (a proportion: successes twice)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def plus(self, n: int, total: float, total_sq: float) -> ArmFigures:
        return ArmFigures(n=self.n + n, total=self.total + total, total_sq=self.total_sq + total_sq)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


class ExperimentRecord(SQLModel, table=True):
    """An online experiment between versions of one model; `versions[0]` is the control."""

    __tablename__ = "deployer_experiment"

    id: str = Field(default_factory=new_id, primary_key=True)
    model: str = Field(index=True)
    project: str = Field(default="default", index=True)  # its model's deployments' when it started
    versions: list[int] = Field(sa_column=Column(JSON, nullable=False))
    split: list[float] = Field(sa_column=Column(JSON, nullable=False))
    metric: str
    mde: float
    alpha: float
    max_samples_per_arm: int | None = None
    planned_samples_per_arm: int | None = None
    policy: str = "fixed"
    floor: float = 0.0
    status: str = Field(default=ExperimentStatus.running, index=True)
    # version (as text) → ArmFigures as JSON; the traffic shares the route gives each version now
    arms: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    shares: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    verdict: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    winner: int | None = None
    reason: str | None = None
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))

    def figures(self, version: int) -> ArmFigures:
        return ArmFigures.model_validate(self.arms.get(str(version), {}))


class ExperimentPoint(SQLModel, table=True):
    """The arms' figures at one moment of an experiment: what its curves are drawn from."""

    __tablename__ = "deployer_experiment_point"

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    arms: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    shares: dict[str, float] = Field(sa_column=Column(JSON, nullable=False))
    p_value: float | None = None


class ExperimentStore:
    """Reads and writes experiment rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, experiment_id: str) -> ExperimentRecord | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(ExperimentRecord, experiment_id)

    def save(self, record: ExperimentRecord) -> ExperimentRecord:
        with Session(self.engine, expire_on_commit=False) as session:
            merged = session.merge(record)
            session.commit()
            session.refresh(merged)
            return merged

    def all(self, status: ExperimentStatus | None = None) -> list[ExperimentRecord]:
        """Experiments, newest first, optionally only those with `status`."""
        query = select(ExperimentRecord)
        if status is not None:
            query = query.where(ExperimentRecord.status == status.value)
        with Session(self.engine, expire_on_commit=False) as session:
            return sorted(session.exec(query), key=lambda r: r.started_at, reverse=True)

    def running_for(self, model: str) -> ExperimentRecord | None:
        query = select(ExperimentRecord).where(
            ExperimentRecord.model == model, ExperimentRecord.status == ExperimentStatus.running.value
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(query).first()

    def add_outcomes(
        self, experiment_id: str, version: int, n: int, total: float, total_sq: float, event_id: str
    ) -> ExperimentRecord | None:
        """Add outcomes to an arm once per event id (a redelivery adds nothing); None when the experiment
        no longer runs or `version` is not one of its arms."""
        with Session(self.engine, expire_on_commit=False) as session:
            record = session.get(ExperimentRecord, experiment_id)
            if record is None or record.status != ExperimentStatus.running or version not in record.versions:
                return None
            if session.get(HandledEvent, event_id) is not None:
                return record
            arms = dict(record.arms)
            arms[str(version)] = record.figures(version).plus(n, total, total_sq).model_dump()
            record.arms = arms
            session.add(record)
            session.add(HandledEvent(event_id=event_id))
            session.commit()
            session.refresh(record)
            return record

    def add_point(self, point: ExperimentPoint) -> None:
        with Session(self.engine) as session:
            session.add(point)
            session.commit()

    def points(self, experiment_id: str) -> list[ExperimentPoint]:
        query = select(ExperimentPoint).where(ExperimentPoint.experiment_id == experiment_id)
        with Session(self.engine, expire_on_commit=False) as session:
            return sorted(session.exec(query), key=lambda p: p.id or 0)
