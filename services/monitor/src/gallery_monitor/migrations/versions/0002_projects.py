"""Projects: lifecycle events and alerts carry their model's project (those from before: `default`)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("monitor_event", "monitor_alert")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project", sa.String(length=63), nullable=False, server_default="default"))
            batch.create_index(f"ix_{table}_project", ["project"])


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_project")
            batch.drop_column("project")
