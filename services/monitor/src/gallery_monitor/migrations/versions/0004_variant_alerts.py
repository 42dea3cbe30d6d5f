"""Quality alerts per variant: an alert names the variant whose answers broke the quality SLO (alerts from
before: none, the version's as a whole)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitor_alert") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("monitor_alert") as batch:
        batch.drop_column("variant")
