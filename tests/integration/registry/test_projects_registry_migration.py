"""Migration 0004 on SQLite and PostgreSQL: the models of a registry from before projects belong to
`default`, keep their versions, and read and list as before; new models take their project."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from gallery_common.errors import InvalidRequest
from gallery_registry.migrations import MIGRATIONS
from gallery_registry.schemas import ModelCreate, ModelQuery, VersionCreate, VersionQuery
from gallery_registry.store import RegistryStore


def test_models_from_before_projects_belong_to_default(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO registered_model (name, last_version, created_at, updated_at) "
                "VALUES ('iris', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_version (model_id, version, semver, status, metrics, created_at, updated_at) "
                "SELECT id, 1, '1.0.0', 'validated', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM registered_model"
            )
        )

    MIGRATIONS.upgrade(engine)

    assert MIGRATIONS.current_revision(engine) == "0004"
    registry = RegistryStore(engine)
    assert registry.model_project("iris") == "default"
    assert (registry.get_model("iris").project, registry.get_version("iris", 1).project) == ("default", "default")
    assert [m.name for m in registry.search_models(ModelQuery(projects=["default"])).models] == ["iris"]
    assert registry.search_models(ModelQuery(projects=["team-a"])).models == []

    # a new model takes its project, and a registration for another project is refused
    assert registry.create_model(ModelCreate(name="pets", project="team-a")).project == "team-a"
    assert registry.register_version("pets", VersionCreate(), project="team-a").project == "team-a"
    with pytest.raises(InvalidRequest, match="model 'iris' belongs to another project"):
        registry.register_version("iris", VersionCreate(), project="team-a")
    versions = registry.search_versions(VersionQuery(projects=["team-a"])).versions
    assert [(v.name, v.project) for v in versions] == [("pets", "team-a")]

    command.downgrade(MIGRATIONS.config(engine), "0003")
    assert "project" not in {c["name"] for c in inspect(engine).get_columns("registered_model")}
