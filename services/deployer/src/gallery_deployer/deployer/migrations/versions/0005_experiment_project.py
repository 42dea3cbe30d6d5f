"""Projects: every experiment keeps its project (its model's deployments' when it started); experiments
from before take their model's deployments' project, else `default`

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployer_experiment") as batch:
        batch.add_column(sa.Column("project", sa.String(), nullable=False, server_default="default"))
        batch.create_index("ix_deployer_experiment_project", ["project"])
    op.execute(
        "UPDATE deployer_experiment SET project = ("
        "SELECT d.project FROM deployer_deployment d WHERE d.model = deployer_experiment.model LIMIT 1"
        ") WHERE EXISTS (SELECT 1 FROM deployer_deployment d WHERE d.model = deployer_experiment.model)"
    )


def downgrade() -> None:
    with op.batch_alter_table("deployer_experiment") as batch:
        batch.drop_index("ix_deployer_experiment_project")
        batch.drop_column("project")
