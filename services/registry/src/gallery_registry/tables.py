"""The registry's tables. Rows stay inside the store; callers get `schemas` models.

Every child table cascades on delete, so deleting a model or a version removes what hangs off it.
Timestamps are stored in UTC (SQLite drops the zone; the store puts it back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from gallery_common.db import utcnow


class RegistryTable(SQLModel, registry=registry()):
    """Base of the registry's tables, with metadata of its own (other services' tables stay apart)."""


metadata = RegistryTable.metadata


def _fk(target: str, **kwargs: Any) -> Any:
    return Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False, **kwargs))


def _stamp() -> Any:
    return Field(default_factory=utcnow, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class RegisteredModelRow(RegistryTable, table=True):
    __tablename__ = "registered_model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(128), nullable=False, unique=True))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), index=True))
    # the project whose members may see and change the model: fixed when the model is created
    project: str = Field(
        default="default", sa_column=sa.Column(sa.String(63), nullable=False, server_default="default", index=True)
    )
    # Highest version number and SemVer ever given: deleting a version never frees them for reuse.
    last_version: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    last_semver: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp()


class ModelTagRow(RegistryTable, table=True):
    __tablename__ = "model_tag"

    model_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("registered_model.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    value: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class ModelVersionRow(RegistryTable, table=True):
    __tablename__ = "model_version"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "version", name="uq_model_version_number"),
        # a model's latest version in a status (the catalogue's featured version, its stage filter)
        sa.Index("ix_model_version_model_status_version", "model_id", "status", "version"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = _fk("registered_model.id")
    version: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    semver: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False, index=True))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    signature: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True)))
    metrics: dict[str, float] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))
    training_job_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(256)))
    dataset_fingerprint: str | None = Field(default=None, sa_column=sa.Column(sa.String(256)))
    config_hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(256)))
    parent_version: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    # a federated model's sites, rounds and privacy budget (gallery_common.contracts.refs.FederatedLineage)
    federation: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True)))
    run_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), index=True))
    source_event_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), unique=True))
    source: str | None = Field(default=None, sa_column=sa.Column(sa.String(2048)))
    task: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    class_names: list[str] | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True)))
    evaluation_report: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True)))
    rejection_reasons: list[str] | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True)))
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp()


class VersionTagRow(RegistryTable, table=True):
    __tablename__ = "model_version_tag"

    version_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("model_version.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    value: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class ArtifactRow(RegistryTable, table=True):
    __tablename__ = "artifact"
    __table_args__ = (sa.UniqueConstraint("version_id", "role", name="uq_artifact_role"),)

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = _fk("model_version.id")
    role: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    uri: str = Field(sa_column=sa.Column(sa.String(2048), nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    size: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    format: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    created_at: datetime = _stamp()


class AliasRow(RegistryTable, table=True):
    __tablename__ = "model_alias"
    __table_args__ = (sa.UniqueConstraint("model_id", "alias", name="uq_model_alias"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = _fk("registered_model.id")
    alias: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    version_id: int = _fk("model_version.id", index=True)
    updated_at: datetime = _stamp()
    updated_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(256)))


class AliasHistoryRow(RegistryTable, table=True):
    """Append-only: one row per move or deletion of an alias."""

    __tablename__ = "model_alias_history"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = _fk("registered_model.id", index=True)
    alias: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    from_version: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    to_version: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    actor: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    at: datetime = _stamp()


class ValidationPolicyRow(RegistryTable, table=True):
    __tablename__ = "validation_policy"

    model_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("registered_model.id", ondelete="CASCADE"), primary_key=True)
    )
    min_metrics: dict[str, float] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    max_metrics: dict[str, float] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    champion_alias: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    champion_metric: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    champion_tolerance: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    updated_at: datetime = _stamp()


class ModelCardRevisionRow(RegistryTable, table=True):
    """Append-only: one row per edit of a model's card text (the newest row is the card in force)."""

    __tablename__ = "model_card_revision"
    __table_args__ = (sa.UniqueConstraint("model_id", "revision", name="uq_model_card_revision"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = _fk("registered_model.id", index=True)
    revision: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    intended_use: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    limitations: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    updated_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(256)))
    updated_at: datetime = _stamp()
