"""Registry schema: models, versions, artifacts, aliases, policies

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registered_model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=256), nullable=True),
        sa.Column("last_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_semver", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_registered_model_owner"), "registered_model", ["owner"], unique=False)
    op.create_table(
        "model_alias_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_model_alias_history_model_id"), "model_alias_history", ["model_id"], unique=False)
    op.create_table(
        "model_tag",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "key"),
    )
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("semver", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("signature", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("training_job_id", sa.String(length=256), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(length=256), nullable=True),
        sa.Column("config_hash", sa.String(length=256), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(length=256), nullable=True),
        sa.Column("source_event_id", sa.String(length=256), nullable=True),
        sa.Column("source", sa.String(length=2048), nullable=True),
        sa.Column("task", sa.String(length=32), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("evaluation_report", sa.JSON(), nullable=True),
        sa.Column("rejection_reasons", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "version", name="uq_model_version_number"),
        sa.UniqueConstraint("source_event_id"),
    )
    op.create_index(op.f("ix_model_version_run_id"), "model_version", ["run_id"], unique=False)
    op.create_index(op.f("ix_model_version_status"), "model_version", ["status"], unique=False)
    op.create_table(
        "validation_policy",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("min_metrics", sa.JSON(), nullable=False),
        sa.Column("max_metrics", sa.JSON(), nullable=False),
        sa.Column("champion_alias", sa.String(length=64), nullable=False),
        sa.Column("champion_metric", sa.String(length=128), nullable=False),
        sa.Column("champion_tolerance", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("format", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["model_version.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "role", name="uq_artifact_role"),
    )
    op.create_table(
        "model_alias",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["model_version.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "alias", name="uq_model_alias"),
    )
    op.create_index(op.f("ix_model_alias_version_id"), "model_alias", ["version_id"], unique=False)
    op.create_table(
        "model_version_tag",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["model_version.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("model_version_tag")
    op.drop_index(op.f("ix_model_alias_version_id"), table_name="model_alias")
    op.drop_table("model_alias")
    op.drop_table("artifact")
    op.drop_table("validation_policy")
    op.drop_index(op.f("ix_model_version_status"), table_name="model_version")
    op.drop_index(op.f("ix_model_version_run_id"), table_name="model_version")
    op.drop_table("model_version")
    op.drop_table("model_tag")
    op.drop_index(op.f("ix_model_alias_history_model_id"), table_name="model_alias_history")
    op.drop_table("model_alias_history")
    op.drop_index(op.f("ix_registered_model_owner"), table_name="registered_model")
    op.drop_table("registered_model")
