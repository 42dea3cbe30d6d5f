"""Model card text with its history; an index for a model's latest version in a status (the catalogue)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "model_card_revision"
VERSION_INDEX = "ix_model_version_model_status_version"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    # a database built by create_all from the current tables (then adopted) already holds these
    if VERSION_INDEX not in {i["name"] for i in inspector.get_indexes("model_version")}:
        op.create_index(VERSION_INDEX, "model_version", ["model_id", "status", "version"], unique=False)
    if TABLE in inspector.get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("intended_use", sa.Text(), nullable=True),
        sa.Column("limitations", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(length=256), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_model.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "revision", name="uq_model_card_revision"),
    )
    op.create_index(op.f("ix_model_card_revision_model_id"), TABLE, ["model_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_model_card_revision_model_id"), table_name=TABLE)
    op.drop_table(TABLE)
    op.drop_index(VERSION_INDEX, table_name="model_version")
