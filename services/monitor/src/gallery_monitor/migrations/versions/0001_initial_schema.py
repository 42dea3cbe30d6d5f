"""Monitor schema: lifecycle events, SLOs, alerts

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
        "monitor_alert",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(op.f("ix_monitor_alert_model"), "monitor_alert", ["model"], unique=False)
    op.create_table(
        "monitor_event",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("summary", sa.String(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(op.f("ix_monitor_event_model"), "monitor_event", ["model"], unique=False)
    op.create_table(
        "monitor_slo",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("p99_ms", sa.Float(), nullable=False),
        sa.Column("error_rate", sa.Float(), nullable=False),
        sa.Column("drift_psi", sa.Float(), nullable=False),
        sa.Column("drift_min_samples", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )


def downgrade() -> None:
    op.drop_table("monitor_slo")
    op.drop_index(op.f("ix_monitor_event_model"), table_name="monitor_event")
    op.drop_table("monitor_event")
    op.drop_index(op.f("ix_monitor_alert_model"), table_name="monitor_alert")
    op.drop_table("monitor_alert")
