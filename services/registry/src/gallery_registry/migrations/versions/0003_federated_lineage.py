"""A federated version's lineage: its sites, rounds, aggregation and privacy budget

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "model_version"
COLUMN = "federation"


def upgrade() -> None:
    # a database built from the current tables and stamped at an older revision holds it already
    if COLUMN in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}:
        return
    op.add_column(TABLE, sa.Column(COLUMN, sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column(COLUMN)
