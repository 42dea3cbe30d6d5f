"""Online quality: outcomes (feedback joined to answers) in their own table, out of the timeline; quality SLOs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Outcomes used to be stored as lifecycle events, one timeline line per feedback; they move to
`monitor_outcome` with the counts that add up over a window.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SLO_COLUMNS = (
    "min_online_accuracy", "max_accuracy_drop", "max_online_rmse", "max_rmse_ratio", "quality_min_rows",
    "quality_window_s",
)  # fmt: skip

EVENTS = sa.table(
    "monitor_event",
    sa.column("seq", sa.Integer),
    sa.column("event_id", sa.String),
    sa.column("model", sa.String),
    sa.column("project", sa.String),
    sa.column("event", sa.String),
    sa.column("data", sa.JSON),
)


def _moved(event_id: str, model: str, project: str, data: dict[str, Any]) -> dict[str, Any]:
    answered = datetime.fromisoformat(str(data["answered_at"]).replace("Z", "+00:00"))
    epoch = (answered if answered.tzinfo else answered.replace(tzinfo=UTC)).timestamp()
    kind, rows = str(data["kind"]), int(data["rows"])
    return {
        "event_id": event_id,
        "model": model,
        "project": project,
        "version": str(data.get("version", "")),
        "variant": str(data.get("variant", "")),
        "kind": kind,
        "answered_s": epoch,
        "answered_minute": int(epoch // 60),
        "rows": rows,
        "labelled_rows": rows if kind == "label" else 0,
        "correct_rows": int(data.get("correct_rows") or 0),
        "valued_rows": rows if kind == "value" else 0,
        "squared_error": math.fsum(data.get("squared_error") or ()),
        "rewarded": 1 if kind == "reward" else 0,
        "reward": float(data.get("reward") or 0.0),
    }


def upgrade() -> None:
    outcomes = op.create_table(
        "monitor_outcome",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("project", sa.String(length=63), nullable=False, server_default="default"),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("answered_s", sa.Float(), nullable=False),
        sa.Column("answered_minute", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("labelled_rows", sa.Integer(), nullable=False),
        sa.Column("correct_rows", sa.Integer(), nullable=False),
        sa.Column("valued_rows", sa.Integer(), nullable=False),
        sa.Column("squared_error", sa.Float(), nullable=False),
        sa.Column("rewarded", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_monitor_outcome_model_answered_s", "monitor_outcome", ["model", "answered_s"])
    op.create_index("ix_monitor_outcome_project", "monitor_outcome", ["project"])
    op.create_index("ix_monitor_outcome_answered_s", "monitor_outcome", ["answered_s"])
    with op.batch_alter_table("monitor_slo") as batch:
        batch.add_column(sa.Column("min_online_accuracy", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_accuracy_drop", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_online_rmse", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_rmse_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("quality_min_rows", sa.Integer(), nullable=False, server_default="50"))
        batch.add_column(sa.Column("quality_window_s", sa.Float(), nullable=False, server_default="3600"))

    bind = op.get_bind()
    query = sa.select(EVENTS.c.seq, EVENTS.c.event_id, EVENTS.c.model, EVENTS.c.project, EVENTS.c.data).where(
        EVENTS.c.event == "outcome"
    )
    old = list(bind.execute(query))
    if old:
        op.bulk_insert(outcomes, [_moved(row.event_id, row.model, row.project, row.data) for row in old])
        bind.execute(sa.delete(EVENTS).where(EVENTS.c.event == "outcome"))


def downgrade() -> None:
    with op.batch_alter_table("monitor_slo") as batch:
        for column in (
            "quality_window_s",
            "quality_min_rows",
            "max_rmse_ratio",
            "max_online_rmse",
            "max_accuracy_drop",
        ):
            batch.drop_column(column)
        batch.drop_column("min_online_accuracy")
    op.drop_index("ix_monitor_outcome_answered_s", table_name="monitor_outcome")
    op.drop_index("ix_monitor_outcome_project", table_name="monitor_outcome")
    op.drop_index("ix_monitor_outcome_model_answered_s", table_name="monitor_outcome")
    op.drop_table("monitor_outcome")
