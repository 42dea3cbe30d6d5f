"""Alembic migrations of the optimizer's tables, run from code at start-up (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations, tables_of
from gallery_optimizer.records import OptimizationJob, OptimizationPolicyRecord

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="optimizer_alembic_version",
    tables=tables_of(OptimizationJob, OptimizationPolicyRecord),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
