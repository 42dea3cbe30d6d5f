"""Online experiments: one row per experiment with its arms' figures, and the points of its curves

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployer_experiment",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("split", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("mde", sa.Float(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("max_samples_per_arm", sa.Integer(), nullable=True),
        sa.Column("planned_samples_per_arm", sa.Integer(), nullable=True),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("floor", sa.Float(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("shares", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("winner", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_deployer_experiment_model"), "deployer_experiment", ["model"], unique=False)
    op.create_index(op.f("ix_deployer_experiment_status"), "deployer_experiment", ["status"], unique=False)
    op.create_table(
        "deployer_experiment_point",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("shares", sa.JSON(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_deployer_experiment_point_experiment_id"), "deployer_experiment_point", ["experiment_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_deployer_experiment_point_experiment_id"), table_name="deployer_experiment_point")
    op.drop_table("deployer_experiment_point")
    op.drop_index(op.f("ix_deployer_experiment_status"), table_name="deployer_experiment")
    op.drop_index(op.f("ix_deployer_experiment_model"), table_name="deployer_experiment")
    op.drop_table("deployer_experiment")
