"""The explainer artifact of each deployment, handed to its model servers

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: deployments made before explanations existed have none, and their servers answer 404
    op.add_column("deployer_deployment", sa.Column("explainer", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployer_deployment") as batch:
        batch.drop_column("explainer")
