"""A service whose database is at head starts without Alembic (issue 20): the head is read from the scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from gallery_common.migrations import SchemaMigrations

SERVICES = {
    "registry": "gallery_registry.migrations",
    "trainer": "gallery_trainer.migrations",
    "optimizer": "gallery_optimizer.migrations",
    "monitor": "gallery_monitor.migrations",
    "deployer": "gallery_deployer.deployer.migrations",
    "deployer usage": "gallery_deployer.usage.migrations",
}


@pytest.mark.parametrize("module", SERVICES.values(), ids=SERVICES.keys())
def test_the_head_read_from_the_scripts_is_alembics(module: str) -> None:
    migrations: SchemaMigrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    assert [migrations.head_revision()] == ScriptDirectory.from_config(migrations.config()).get_heads()


def test_scripts_it_cannot_read_leave_the_decision_to_alembic(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "0001_a.py").write_text('revision = "0001"\ndown_revision = None\n')
    (tmp_path / "versions" / "0002_merge.py").write_text('revision = "0002"\ndown_revision = ("0001", "x")\n')
    assert SchemaMigrations(tmp_path, "v", ()).head_revision() is None


def test_a_database_at_head_is_checked_without_loading_alembic(tmp_path: Path) -> None:
    probe = f"""
import sys
from gallery_common.db import make_engine
from gallery_registry.migrations import upgrade, current_revision
engine = make_engine("sqlite:///{tmp_path / "registry.db"}")
upgrade(engine)
print(sys.argv[1], "alembic" in sys.modules)
"""
    first = subprocess.run([sys.executable, "-c", probe, "new"], capture_output=True, text=True, timeout=120)
    again = subprocess.run([sys.executable, "-c", probe, "at-head"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    # the probe's answer is its last line (structlog may print before it)
    assert first.stdout.splitlines()[-1] == "new True"  # a new database is migrated by Alembic
    assert again.stdout.splitlines()[-1] == "at-head False"
