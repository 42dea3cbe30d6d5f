"""Optimizer schema: optimization jobs and policies

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
        "optimizer_job",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("step", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("artifacts", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("source_event_id", sa.String(), nullable=True),
        sa.Column("traceparent", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_event_id"),
    )
    op.create_index(op.f("ix_optimizer_job_model"), "optimizer_job", ["model"], unique=False)
    op.create_index(op.f("ix_optimizer_job_status"), "optimizer_job", ["status"], unique=False)
    op.create_index(op.f("ix_optimizer_job_version"), "optimizer_job", ["version"], unique=False)
    op.create_table(
        "optimizer_policy",
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )


def downgrade() -> None:
    op.drop_table("optimizer_policy")
    op.drop_index(op.f("ix_optimizer_job_version"), table_name="optimizer_job")
    op.drop_index(op.f("ix_optimizer_job_status"), table_name="optimizer_job")
    op.drop_index(op.f("ix_optimizer_job_model"), table_name="optimizer_job")
    op.drop_table("optimizer_job")
