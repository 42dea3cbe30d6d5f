"""The deployer's records: one row per deployed model version, and the events already handled.

Blocking SQL: call these from worker threads. Tables are migrated at start-up (Alembic, `migrations/`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlalchemy.engine import Engine
from sqlmodel import AutoString, Field, Session, SQLModel, select

from gallery_common.db import as_utc, timestamp_field, utcnow
from gallery_common.events import FP32_VARIANT
from gallery_common.projects import DEFAULT_PROJECT


class Stage(StrEnum):
    production = "production"  # takes the traffic the canary does not
    canary = "canary"  # a new version on a share of traffic, being judged
    previous = "previous"  # the version production replaced: a fallback until its drain ends
    retired = "retired"  # stopped after a promotion moved past it; can be brought back by a rollback
    rolled_back = "rolled_back"  # taken out of service by a failed canary or a degradation
    failed = "failed"  # never became ready
    held = "held"  # validated while the model's experiment ran: rolled out when the experiment ends


SERVING = (Stage.production, Stage.canary, Stage.previous)


class DeploymentRecord(SQLModel, table=True):
    """One model version (with its current variant) as the deployer runs it."""

    __tablename__ = "deployer_deployment"

    id: str = Field(primary_key=True)
    model: str = Field(index=True)
    # the model's project (its model.validated's, or the registry's for a deployment by hand); the
    # database's default fills rows written by code from before projects
    project: str = Field(
        default=DEFAULT_PROJECT,
        sa_column=Column(AutoString, nullable=False, index=True, server_default=DEFAULT_PROJECT),
    )
    version: int
    variant: str = FP32_VARIANT
    artifact_uri: str
    artifact_sha256: str
    validation_split: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # the version's explainer artifact (an ArtifactRef), handed to its model servers; None: no explanations
    explainer: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    policy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    stage: str = Field(index=True)
    traffic_percent: float = 0.0
    replicas: int = 1
    state: str = "starting"
    reason: str | None = None
    fallback: str | None = None
    analysis_due_at: datetime | None = timestamp_field()
    retire_at: datetime | None = timestamp_field()
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class VariantRecord(SQLModel, table=True):
    """One built variant of a version, as its `model.optimized` named it: what can be served by hand
    (`PUT /api/v1/deployments/{model}/variant`) besides the version's own FP32 file."""

    __tablename__ = "deployer_variant"

    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    name: str = Field(primary_key=True)
    artifact: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # an ArtifactRef
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cpu_target: str | None = None
    recommended: bool = False
    # why the deployer took it out of service (its answers broke the quality SLO): not rolled in again on the
    # deployer's own initiative, only by hand
    withdrawn: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class HandledEvent(SQLModel, table=True):
    """An event id whose work is done, so a redelivery changes nothing."""

    __tablename__ = "deployer_handled_event"

    event_id: str = Field(primary_key=True)
    handled_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class DeploymentStore:
    """Reads and writes deployment rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, deployment_id: str) -> DeploymentRecord | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(DeploymentRecord, deployment_id)

    def save(self, record: DeploymentRecord) -> DeploymentRecord:
        record.updated_at = utcnow()
        with Session(self.engine, expire_on_commit=False) as session:
            merged = session.merge(record)
            session.commit()
            session.refresh(merged)
            return merged

    def for_model(self, model: str, stages: Sequence[Stage] | None = None) -> list[DeploymentRecord]:
        """The model's deployments, newest version first, optionally only in `stages`."""
        query = select(DeploymentRecord).where(DeploymentRecord.model == model)
        if stages is not None:
            query = query.where(DeploymentRecord.stage.in_([s.value for s in stages]))  # type: ignore[attr-defined]
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(session.exec(query))
        return sorted(rows, key=lambda r: r.version, reverse=True)

    def project_of(self, model: str) -> str | None:
        """The project of the model's deployments; None when it has never been deployed."""
        query = select(DeploymentRecord.project).where(DeploymentRecord.model == model).limit(1)
        with Session(self.engine) as session:
            return session.exec(query).first()

    def all(
        self, stages: Sequence[Stage] | None = None, projects: Sequence[str] | None = None
    ) -> list[DeploymentRecord]:
        """Every deployment (in `stages`, in `projects` when given), by model then newest version."""
        query = select(DeploymentRecord)
        if projects is not None:
            query = query.where(DeploymentRecord.project.in_(list(projects)))  # type: ignore[attr-defined]
        if stages is not None:
            query = query.where(DeploymentRecord.stage.in_([s.value for s in stages]))  # type: ignore[attr-defined]
        with Session(self.engine, expire_on_commit=False) as session:
            return sorted(session.exec(query), key=lambda r: (r.model, -r.version))

    def remember_variants(self, model: str, version: int, variants: Sequence[VariantRecord]) -> None:
        """Keep the version's built variants (those of its latest `model.optimized`, replacing earlier ones); a
        variant withdrawn before stays, withdrawn, even where the new set lacks it."""
        names = {variant.name for variant in variants}
        with Session(self.engine) as session:
            query = select(VariantRecord).where(VariantRecord.model == model, VariantRecord.version == version)
            withdrawn = {}
            for old in session.exec(query):
                if old.withdrawn is not None and old.name not in names:
                    continue
                withdrawn[old.name] = old.withdrawn
                session.delete(old)
            session.flush()
            for variant in variants:
                variant.withdrawn = variant.withdrawn or withdrawn.get(variant.name)
                session.add(variant)
            session.commit()

    def withdraw_variant(
        self, model: str, version: int, name: str, reason: str | None, artifact: dict[str, Any] | None = None
    ) -> None:
        """Mark a variant as taken out of service for `reason` (None: served again by hand); one no
        `model.optimized` listed is kept with `artifact`, the file that served."""
        with Session(self.engine) as session:
            row = session.get(VariantRecord, (model, version, name))
            if row is None and reason is not None and artifact is not None:
                row = VariantRecord(model=model, version=version, name=name, artifact=artifact)
            if row is not None and row.withdrawn != reason:
                row.withdrawn = reason
                session.add(row)
                session.commit()

    def variants(self, model: str, version: int | None = None) -> list[VariantRecord]:
        """The built variants of the model's versions (of `version` alone when given), by version and name."""
        query = select(VariantRecord).where(VariantRecord.model == model)
        if version is not None:
            query = query.where(VariantRecord.version == version)
        with Session(self.engine, expire_on_commit=False) as session:
            return sorted(session.exec(query), key=lambda v: (-v.version, v.name))

    def was_handled(self, event_id: str) -> bool:
        with Session(self.engine) as session:
            return session.get(HandledEvent, event_id) is not None

    def mark_handled(self, event_id: str) -> None:
        with Session(self.engine) as session:
            if session.get(HandledEvent, event_id) is None:
                session.add(HandledEvent(event_id=event_id))
                session.commit()


def due(moment: datetime | None, now: datetime | None = None) -> bool:
    """True when a stored deadline has passed."""
    stored = as_utc(moment)
    return stored is not None and stored <= (now or utcnow())
