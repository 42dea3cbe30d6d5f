"""Deployer schema: deployments, handled events, deployment policies

Revision ID: 0001
Revises:
Create Date: 2026-12-05
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
        "deployer_deployment",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("artifact_uri", sa.String(), nullable=False),
        sa.Column("artifact_sha256", sa.String(), nullable=False),
        sa.Column("validation_split", sa.JSON(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("traffic_percent", sa.Float(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("fallback", sa.String(), nullable=True),
        sa.Column("analysis_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_deployer_deployment_model"), "deployer_deployment", ["model"], unique=False)
    op.create_index(op.f("ix_deployer_deployment_stage"), "deployer_deployment", ["stage"], unique=False)
    op.create_table(
        "deployer_handled_event",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_table(
        "deployer_policy",
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )


def downgrade() -> None:
    op.drop_table("deployer_policy")
    op.drop_table("deployer_handled_event")
    op.drop_index(op.f("ix_deployer_deployment_stage"), table_name="deployer_deployment")
    op.drop_index(op.f("ix_deployer_deployment_model"), table_name="deployer_deployment")
    op.drop_table("deployer_deployment")
