"""Projects: every deployment belongs to its model's project; deployments from before are in `default`

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


def upgrade() -> None:
    with op.batch_alter_table("deployer_deployment") as batch:
        batch.add_column(sa.Column("project", sa.String(), nullable=False, server_default="default"))
        batch.create_index("ix_deployer_deployment_project", ["project"])


def downgrade() -> None:
    with op.batch_alter_table("deployer_deployment") as batch:
        batch.drop_index("ix_deployer_deployment_project")
        batch.drop_column("project")
