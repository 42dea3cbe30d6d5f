"""Alembic migrations of the deployer's tables, run from code at start-up (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from gallery_common.migrations import SchemaMigrations, tables_of
from gallery_deployer.deployer.policy import PolicyRecord
from gallery_deployer.deployer.records import DeploymentRecord, HandledEvent, VariantRecord
from gallery_deployer.experiments.records import ExperimentPoint, ExperimentRecord

MIGRATIONS = SchemaMigrations(
    scripts=Path(__file__).resolve().parent,
    version_table="deployer_alembic_version",
    tables=tables_of(DeploymentRecord, HandledEvent, PolicyRecord, ExperimentRecord, ExperimentPoint, VariantRecord),
)
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
