"""The usage store's Alembic migrations: a version table of their own, apart from the deployments'."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations, tables_of
from gallery_deployer.usage.records import AppliedUsageReport, UsageMinute

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="deployer_usage_alembic_version",
    tables=tables_of(UsageMinute, AppliedUsageReport),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
