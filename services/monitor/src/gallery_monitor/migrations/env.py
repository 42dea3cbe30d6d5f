"""Alembic environment: migrate the engine handed over in `config.attributes`, or the configured URL."""

from gallery_monitor.migrations import MIGRATIONS

MIGRATIONS.run_env()
