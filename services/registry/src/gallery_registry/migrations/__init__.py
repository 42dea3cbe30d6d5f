"""Alembic migrations of the registry schema, run from code (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations
from gallery_registry.tables import metadata

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="registry_alembic_version",
    tables=tuple(metadata.sorted_tables),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
