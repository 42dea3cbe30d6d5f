"""Alembic migrations of the monitor's tables, run from code at start-up (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations, tables_of
from gallery_monitor.records import AlertRecord, LifecycleEvent, OutcomeRecord, SloRecord

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="monitor_alembic_version",
    tables=tables_of(LifecycleEvent, SloRecord, AlertRecord, OutcomeRecord),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
