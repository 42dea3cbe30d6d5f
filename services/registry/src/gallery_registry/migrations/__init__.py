"""Alembic migrations of the registry schema, run from code (no alembic.ini needed)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from gallery_common.telemetry import get_logger

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "registry_alembic_version"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for this package's scripts; with `engine`, migrations run on it."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind `engine` to `revision` (default: the newest)."""
    # Alembic's own INFO lines are plain text; one structured line below says the same.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    after = current_revision(engine)
    if after != before:
        log.info("database schema migrated", from_revision=before, to_revision=after)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
