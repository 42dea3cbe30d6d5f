"""Migration 0005 on SQLite and PostgreSQL: experiments from before keep their model's project (its
deployments'), or `default` when the model has none left; new experiments store theirs."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from gallery_deployer.deployer.migrations import MIGRATIONS
from gallery_deployer.experiments.records import ExperimentStore


def _experiment(experiment_id: str, model: str) -> str:
    return (
        "INSERT INTO deployer_experiment (id, model, versions, split, metric, mde, alpha, policy, floor, status, "
        f"arms, shares, started_at) VALUES ('{experiment_id}', '{model}', '[1, 2]', '[50, 50]', 'accuracy', 0.05, "
        "0.05, 'fixed', 0.1, 'concluded', '{}', '{}', CURRENT_TIMESTAMP)"
    )


def test_experiments_from_before_take_their_models_project(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deployer_deployment (id, model, version, variant, artifact_uri, artifact_sha256, stage, "
                "traffic_percent, replicas, state, created_at, updated_at, project) VALUES ('iris-2', 'iris', 2, "
                "'fp32', 'file:///iris.onnx', 'c', 'production', 100, 1, 'ready', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, 'team-a')"
            )
        )
        conn.execute(text(_experiment("exp-iris", "iris")))
        conn.execute(text(_experiment("exp-gone", "retired-model")))  # its model serves nothing any more

    MIGRATIONS.upgrade(engine, "0005")

    assert MIGRATIONS.current_revision(engine) == "0005"
    projects = {record.id: record.project for record in ExperimentStore(engine).all()}
    assert projects == {"exp-iris": "team-a", "exp-gone": "default"}
