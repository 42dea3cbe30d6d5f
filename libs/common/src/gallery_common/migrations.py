"""Alembic migrations run from code (no alembic.ini), one way for every service that keeps tables.

A service keeps its revisions in a `migrations` package of its own (`env.py`, `script.py.mako`,
`versions/`) and describes it with a `SchemaMigrations`: where the scripts are, the tables they
manage and the service's own version table, so services sharing one database never see each
other's revisions. At start-up the service calls `upgrade(engine)`.

A database built by `create_all` before the service had migrations holds the tables but no version
table. `upgrade` adopts it: if its tables and columns are those the baseline revision creates, it
is stamped at that revision (rows kept) and migrated on from there; if not, it raises
`SchemaMismatch` naming the differences rather than guess.

Replicas of a service that start together on a new database take turns: `upgrade` holds a lock for the
service's version table while it migrates (a PostgreSQL advisory lock; beside a SQLite file, a file
lock), so the second finds the schema at head instead of half built.

A start on a database already at head is the common case and costs one query: the head is read from the
scripts' `revision` / `down_revision` lines, and Alembic (a tenth of a second to import) is not loaded.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import MetaData, String, Table, column, create_engine, inspect, pool, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from .telemetry import get_logger

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

log = get_logger(__name__)

# `revision = "0003"` / `down_revision = None` as Alembic writes them (optionally annotated)
_REVISION_LINE = re.compile(r"""^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(None|"[^"\n]*"|'[^'\n]*')\s*$""", re.M)


def tables_of(*models: type[SQLModel]) -> tuple[Table, ...]:
    """The tables behind SQLModel table classes, for `SchemaMigrations.tables`."""
    return tuple(model.__table__ for model in models)  # type: ignore[attr-defined]


class SchemaMismatch(RuntimeError):
    """An unversioned database whose tables are not those the baseline revision creates."""


@dataclass(frozen=True)
class TableLayout:
    """What adopting an unversioned database checks: a table's column and index names."""

    columns: frozenset[str]
    indexes: frozenset[str]


@dataclass(frozen=True)
class SchemaMigrations:
    """One service's Alembic scripts, the tables they manage and the table recording their revision."""

    scripts: Path
    version_table: str
    tables: tuple[Table, ...]
    # The revision that creates the tables `create_all` made before the service had migrations.
    baseline: str = "0001"

    def metadata(self) -> MetaData:
        """The managed tables on a MetaData of their own (services may share SQLModel's)."""
        target = MetaData()
        for table in self.tables:
            table.to_metadata(target)
        return target

    def config(self, engine: Engine | None = None) -> Config:
        """An Alembic config for these scripts; with `engine`, migrations run on it."""
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(self.scripts))
        if engine is not None:
            config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
            config.attributes["engine"] = engine
        return config

    def current_revision(self, engine: Engine) -> str | None:
        """The revision the database is at, or None if it was never migrated."""
        with engine.connect() as conn:
            return self._context(conn).get_current_revision()

    def upgrade(self, engine: Engine, revision: str = "head") -> None:
        """Bring the database behind `engine` to `revision` (default: the newest), adopting a create_all one."""
        # The check at head runs under the lock too: a first connection to a SQLite file switches it to WAL,
        # which fails with "database is locked" while another replica is migrating it.
        with migration_lock(engine, self.version_table):
            if revision == "head" and self._at_head(engine):
                return
            from alembic import command

            # Alembic's own INFO lines are plain text; one structured line below says the same.
            logging.getLogger("alembic").setLevel(logging.WARNING)
            before = self.current_revision(engine)
            if before is None and self._adopt(engine):
                before = self.baseline
            command.upgrade(self.config(engine), revision)
            after = self.current_revision(engine)
        if after != before:
            log.info(
                "database schema migrated", version_table=self.version_table, from_revision=before, to_revision=after
            )

    def run_env(self) -> None:
        """The body of the package's `env.py`: migrate the engine in `config.attributes`, or the configured URL."""
        from alembic import context

        config = context.config
        target = self.metadata()
        if context.is_offline_mode():
            context.configure(
                url=config.get_main_option("sqlalchemy.url"),
                target_metadata=target,
                literal_binds=True,
                version_table=self.version_table,
                render_as_batch=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            return
        engine = config.attributes.get("engine") or create_engine(
            config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool
        )
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target,
                version_table=self.version_table,
                # SQLite cannot ALTER most things; batch mode rebuilds the table instead
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()

    def head_revision(self) -> str | None:
        """The newest revision of the scripts, read from their `revision` and `down_revision` lines without
        loading Alembic; None where that cannot tell (a script written otherwise, several heads)."""
        revisions, parents = set(), set()
        for script in (self.scripts / "versions").glob("*.py"):
            found = {name: ast.literal_eval(value) for name, value in _REVISION_LINE.findall(script.read_text())}
            if not isinstance(found.get("revision"), str) or "down_revision" not in found:
                return None
            revisions.add(found["revision"])
            parents.add(found["down_revision"])
        heads = revisions - parents
        return heads.pop() if len(heads) == 1 else None

    def _at_head(self, engine: Engine) -> bool:
        """Whether the database records exactly the scripts' head revision (one query; the caller holds the
        migration lock)."""
        head = self.head_revision()
        if head is None:
            return False
        with engine.connect() as conn:
            if not inspect(conn).has_table(self.version_table):
                return False
            version = column("version_num", String)
            query = select(version).select_from(table_clause(self.version_table))
            recorded = list(conn.execute(query).scalars())
            return recorded == [head]

    def _context(self, conn: Connection) -> MigrationContext:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn, opts={"version_table": self.version_table})

    def _adopt(self, engine: Engine) -> bool:
        """Stamp an unversioned database that holds the baseline's tables; False if it holds none of them."""
        with engine.connect() as conn:
            if not inspect(conn).get_table_names():
                return False  # a new database: nothing to adopt, and no need to build the baseline
        expected = self._baseline_layout()
        found = _layout(engine, set(expected))
        if not found:
            return False
        problems = _differences(expected, found)
        if problems:
            raise SchemaMismatch(
                f"the database at {engine.url.render_as_string(hide_password=True)} has tables of this service "
                f"but no {self.version_table} table, and they differ from revision {self.baseline}: "
                + "; ".join(problems)
            )
        from alembic import command

        command.stamp(self.config(engine), self.baseline)
        log.info("existing database schema adopted", version_table=self.version_table, revision=self.baseline)
        return True

    def _baseline_layout(self) -> dict[str, TableLayout]:
        """The tables, columns and indexes the baseline revision creates, built in a scratch SQLite database."""
        from alembic import command

        scratch = create_engine("sqlite://", poolclass=pool.StaticPool)
        try:
            command.upgrade(self.config(scratch), self.baseline)
            with scratch.connect() as conn:
                names = set(inspect(conn).get_table_names()) - {self.version_table}
            return _layout(scratch, names)
        finally:
            scratch.dispose()


@contextmanager
def migration_lock(engine: Engine, name: str) -> Iterator[None]:
    """Hold, across processes, the lock named `name` on the database behind `engine` while the block runs."""
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:  # a session-level lock on a connection of its own
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # nothing another process could open
        return
    lock_path = Path(f"{database}.{name}.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _layout(engine: Engine, tables: set[str]) -> dict[str, TableLayout]:
    """The layout of those of `tables` the database holds."""
    with engine.connect() as conn:
        inspector = inspect(conn)
        return {
            name: TableLayout(
                columns=frozenset(c["name"] for c in inspector.get_columns(name)),
                indexes=frozenset(i["name"] for i in inspector.get_indexes(name) if i["name"]),
            )
            for name in sorted(tables & set(inspector.get_table_names()))
        }


def _differences(expected: dict[str, TableLayout], found: dict[str, TableLayout]) -> list[str]:
    problems = [f"table {name} is missing" for name in sorted(expected.keys() - found.keys())]
    for name in sorted(expected.keys() & found.keys()):
        want, have = expected[name], found[name]
        if missing := sorted(want.columns - have.columns):
            problems.append(f"{name} lacks columns {', '.join(missing)}")
        if extra := sorted(have.columns - want.columns):
            problems.append(f"{name} has unknown columns {', '.join(extra)}")
        # other indexes may be there (PostgreSQL lists those behind unique constraints)
        if lacking := sorted(want.indexes - have.indexes):
            problems.append(f"{name} lacks indexes {', '.join(lacking)}")
    return problems
