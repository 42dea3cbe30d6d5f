"""Alembic environment: migrate the engine handed over in `config.attributes`, or the configured URL."""

from gallery_deployer.usage.migrations import MIGRATIONS

MIGRATIONS.run_env()
