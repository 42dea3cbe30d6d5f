"""Every registered model belongs to a project; the models of the single-project days to `default`

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "registered_model"
COLUMN = "project"
INDEX = "ix_registered_model_project"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    # a database built from the current tables and stamped at an older revision holds it already
    if COLUMN not in {c["name"] for c in inspector.get_columns(TABLE)}:
        # the server default fills every existing row: they all belong to `default`
        op.add_column(TABLE, sa.Column(COLUMN, sa.String(63), nullable=False, server_default="default"))
    if INDEX not in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, [COLUMN])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    # SQLite drops a column by rebuilding the table
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column(COLUMN)
