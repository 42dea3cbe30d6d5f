"""Projects: every optimization job belongs to its model's project (those from before to `default`)

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
    with op.batch_alter_table("optimizer_job") as batch:
        batch.add_column(sa.Column("project", sa.String(), nullable=False, server_default="default"))
        batch.create_index("ix_optimizer_job_project", ["project"])


def downgrade() -> None:
    with op.batch_alter_table("optimizer_job") as batch:
        batch.drop_index("ix_optimizer_job_project")
        batch.drop_column("project")
