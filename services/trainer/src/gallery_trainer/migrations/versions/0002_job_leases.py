"""Jobs on a work queue: who holds a job, its last heartbeat, how many times it was started

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from gallery_common.work_queue import add_lease_columns, drop_lease_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_lease_columns("trainer_job")


def downgrade() -> None:
    drop_lease_columns("trainer_job")
