"""Trainer schema: jobs, runs and their metrics, searches and their trials

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
        "trainer_job",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("phase", sa.String(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("latest_metrics", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("search_id", sa.String(), nullable=True),
        sa.Column("trial", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_trainer_job_model"), "trainer_job", ["model"], unique=False)
    op.create_index(op.f("ix_trainer_job_run_id"), "trainer_job", ["run_id"], unique=False)
    op.create_index(op.f("ix_trainer_job_search_id"), "trainer_job", ["search_id"], unique=False)
    op.create_index(op.f("ix_trainer_job_status"), "trainer_job", ["status"], unique=False)
    op.create_table(
        "trainer_run",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("system", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("task", sa.String(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("config_hash", sa.String(), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(), nullable=True),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_trainer_run_job_id"), "trainer_run", ["job_id"], unique=False)
    op.create_index(op.f("ix_trainer_run_model"), "trainer_run", ["model"], unique=False)
    op.create_table(
        "trainer_run_metric",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("time", sa.Float(), nullable=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_trainer_run_metric_run_id"), "trainer_run_metric", ["run_id"], unique=False)
    op.create_table(
        "trainer_search",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("base_spec", sa.JSON(), nullable=False),
        sa.Column("winner_run_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "trainer_search_trial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("search_id", "number", name="uq_trial_number"),
    )
    op.create_index(op.f("ix_trainer_search_trial_search_id"), "trainer_search_trial", ["search_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_trainer_search_trial_search_id"), table_name="trainer_search_trial")
    op.drop_table("trainer_search_trial")
    op.drop_table("trainer_search")
    op.drop_index(op.f("ix_trainer_run_metric_run_id"), table_name="trainer_run_metric")
    op.drop_table("trainer_run_metric")
    op.drop_index(op.f("ix_trainer_run_model"), table_name="trainer_run")
    op.drop_index(op.f("ix_trainer_run_job_id"), table_name="trainer_run")
    op.drop_table("trainer_run")
    op.drop_index(op.f("ix_trainer_job_status"), table_name="trainer_job")
    op.drop_index(op.f("ix_trainer_job_search_id"), table_name="trainer_job")
    op.drop_index(op.f("ix_trainer_job_run_id"), table_name="trainer_job")
    op.drop_index(op.f("ix_trainer_job_model"), table_name="trainer_job")
    op.drop_table("trainer_job")
