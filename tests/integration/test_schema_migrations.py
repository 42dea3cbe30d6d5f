"""Every service's Alembic migrations: the schema they build, and databases made by the old create_all.

Run against SQLite and a real PostgreSQL. A database built by `create_all` before the service had
migrations (tables, no version table) must be adopted with its rows, so an existing $GALLERY_HOME
keeps working.
"""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from federated_lineage import federation
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from gallery_common.db import make_engine
from gallery_common.events import Lineage
from gallery_common.migrations import SchemaMigrations, SchemaMismatch
from gallery_deployer.deployer.migrations import MIGRATIONS as DEPLOYER
from gallery_deployer.deployer.records import HandledEvent
from gallery_monitor.migrations import MIGRATIONS as MONITOR
from gallery_monitor.records import SloRecord
from gallery_optimizer.migrations import MIGRATIONS as OPTIMIZER
from gallery_optimizer.records import OptimizationPolicyRecord
from gallery_registry.migrations import MIGRATIONS as REGISTRY
from gallery_registry.schemas import VersionCreate
from gallery_registry.store import RegistryStore
from gallery_registry.tables import RegisteredModelRow, metadata
from gallery_trainer.migrations import MIGRATIONS as TRAINER
from gallery_trainer.records import Search

# Each service's migrations, with a row a user would have stored in one of its tables (one its first
# revision made as the current code declares it: the job tables gained columns since).
SERVICES: dict[str, tuple[SchemaMigrations, Callable[[], SQLModel]]] = {
    "registry": (REGISTRY, lambda: RegisteredModelRow(name="iris")),
    "trainer": (TRAINER, lambda: Search(model="iris", budget=4, metric="val_accuracy", direction="max", seed=0)),
    "optimizer": (OPTIMIZER, lambda: OptimizationPolicyRecord(model="iris", policy={"variants": ["fp16"]})),
    "deployer": (DEPLOYER, lambda: HandledEvent(event_id="validated:iris:1")),
    "monitor": (
        MONITOR,
        lambda: SloRecord(model="iris", p99_ms=50, error_rate=0.01, drift_psi=0.2, drift_min_samples=100, window_s=300),
    ),
}


def create_all_as_before(migrations: SchemaMigrations, engine: Engine) -> None:
    """What the service did at start-up before it had migrations: `create_all` of its tables as they were
    then, which are the tables its first revision makes (later revisions add columns the old code never
    created), and no version table."""
    migrations.upgrade(engine, migrations.baseline)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {migrations.version_table}"))


def head(migrations: SchemaMigrations) -> str | None:
    """The newest revision of a service's scripts (the registry is past its first one)."""
    return ScriptDirectory.from_config(migrations.config()).get_current_head()


def schema_differences(migrations: SchemaMigrations, engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrations.version_table})
        return list(compare_metadata(context, migrations.metadata()))


def store(engine: Engine, row: SQLModel) -> type[SQLModel]:
    """Insert `row` into a table as an older revision made it: the columns later revisions added are left out."""
    table = type(row).__table__  # type: ignore[attr-defined]
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    values = {key: value for key, value in row.model_dump().items() if key in present and value is not None}
    with engine.begin() as conn:
        conn.execute(table.insert().values(**values))
    return type(row)


def count(engine: Engine, model: type[SQLModel]) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("service", SERVICES)
def test_upgrade_builds_the_tables_the_service_declares(service: str, engine: Engine) -> None:
    migrations, _ = SERVICES[service]
    migrations.upgrade(engine)

    assert migrations.current_revision(engine) == head(migrations)
    assert schema_differences(migrations, engine) == []
    assert migrations.version_table in inspect(engine).get_table_names()


@pytest.mark.parametrize("service", SERVICES)
def test_a_database_made_by_create_all_is_adopted_with_its_rows(service: str, engine: Engine) -> None:
    migrations, row = SERVICES[service]
    create_all_as_before(migrations, engine)
    model = store(engine, row())
    assert migrations.current_revision(engine) is None

    migrations.upgrade(engine)

    assert migrations.current_revision(engine) == head(migrations)
    assert count(engine, model) == 1
    assert schema_differences(migrations, engine) == []
    migrations.upgrade(engine)  # a second start changes nothing
    assert (migrations.current_revision(engine), count(engine, model)) == (head(migrations), 1)


def test_a_database_unlike_the_first_revision_is_refused_and_left_alone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    create_all_as_before(MONITOR, engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE monitor_slo DROP COLUMN window_s"))
        conn.execute(text("DROP TABLE monitor_alert"))

    with pytest.raises(SchemaMismatch, match="monitor_alert is missing; monitor_slo lacks columns window_s"):
        MONITOR.upgrade(engine)
    assert MONITOR.current_revision(engine) is None
    assert "monitor_alembic_version" not in inspect(engine).get_table_names()


def test_services_sharing_one_database_keep_their_own_revisions(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    create_all_as_before(TRAINER, engine)  # one service from before migrations, among migrated ones
    for migrations, _ in SERVICES.values():
        migrations.upgrade(engine)

    tables = set(inspect(engine).get_table_names())
    for name, (migrations, _) in SERVICES.items():
        assert migrations.current_revision(engine) == head(migrations), name
        assert {t.name for t in migrations.tables} | {migrations.version_table} <= tables


def test_an_adopted_database_goes_on_to_later_revisions(tmp_path: Path) -> None:
    """Adoption compares with the first revision, not the newest, so it still works once the schema moves on."""
    scripts = tmp_path / "migrations"
    shutil.copytree(MONITOR.scripts, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_slo_note.py").write_text(
        '"""A note on each SLO"""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "9999"\ndown_revision = "{head(MONITOR)}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.add_column("monitor_slo", sa.Column("note", sa.String(), nullable=True))\n'
    )
    later = SchemaMigrations(scripts=scripts, version_table=MONITOR.version_table, tables=MONITOR.tables)
    engine = make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    create_all_as_before(MONITOR, engine)
    store(engine, SERVICES["monitor"][1]())

    later.upgrade(engine)

    assert later.current_revision(engine) == "9999"
    assert "note" in {c["name"] for c in inspect(engine).get_columns("monitor_slo")}
    assert count(engine, SloRecord) == 1


def test_registry_versions_from_before_federated_lineage_are_kept_as_trained_in_one_place(engine: Engine) -> None:
    REGISTRY.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO registered_model (name, last_version, created_at, updated_at) "
                "VALUES ('iris', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_version (model_id, version, semver, status, metrics, training_job_id, "
                "created_at, updated_at) SELECT id, 1, '1.0.0', 'validated', '{\"accuracy\": 0.9}', 'job-1', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM registered_model"
            )
        )

    REGISTRY.upgrade(engine)

    assert REGISTRY.current_revision(engine) == head(REGISTRY)
    registry = RegistryStore(engine)
    old = registry.get_version("iris", 1)
    assert (old.metrics, old.lineage.training_job_id, old.lineage.federation) == ({"accuracy": 0.9}, "job-1", None)
    registry.register_version("iris", VersionCreate(lineage=Lineage(federation=federation())))
    assert registry.get_version("iris", 2).lineage.federation == federation()

    command.downgrade(REGISTRY.config(engine), "0002")
    assert "federation" not in {c["name"] for c in inspect(engine).get_columns("model_version")}
    assert count(engine, RegisteredModelRow) == 1


def test_registry_federation_column_already_there_is_left_as_it_is(engine: Engine) -> None:
    """A database built from the current tables but stamped at 0002 (the column there already) still upgrades."""
    metadata.create_all(engine)
    command.stamp(REGISTRY.config(engine), "0002")

    REGISTRY.upgrade(engine)

    assert REGISTRY.current_revision(engine) == head(REGISTRY)
    assert schema_differences(REGISTRY, engine) == []


def _upgrade_after(barrier: Any, url: str, service: str) -> None:
    """In a process of its own: wait for the others, then migrate `url` as a starting replica would."""
    engine = make_engine(url)
    barrier.wait(60)
    try:
        SERVICES[service][0].upgrade(engine)
    finally:
        engine.dispose()


def test_replicas_starting_together_on_a_new_database_all_start(engine: Engine) -> None:
    """Replicas migrating one new database at the same moment take turns: all end at head (before
    the lock, the second saw half-built tables without a version table and stopped with SchemaMismatch)."""
    service = "registry"  # every service migrates through SchemaMigrations.upgrade
    migrations = SERVICES[service][0]
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    replicas = [context.Process(target=_upgrade_after, args=(barrier, url, service)) for _ in range(3)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(120)
    assert [replica.exitcode for replica in replicas] == [0, 0, 0]
    assert migrations.current_revision(engine) == head(migrations)
    assert schema_differences(migrations, engine) == []
