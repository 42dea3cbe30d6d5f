"""A built variant the deployer took out of service after its answers broke the quality SLO keeps why, so a
later model.optimized of the version does not roll it in again

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployer_variant") as batch:
        batch.add_column(sa.Column("withdrawn", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployer_variant") as batch:
        batch.drop_column("withdrawn")
