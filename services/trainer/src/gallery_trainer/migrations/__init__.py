"""Alembic migrations of the trainer's tables, run from code at start-up (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations, tables_of
from gallery_trainer.records import Job, Run, RunMetric, Search, SearchTrial

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="trainer_alembic_version",
    tables=tables_of(Job, Run, RunMetric, Search, SearchTrial),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
