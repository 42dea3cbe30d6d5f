"""The search loop over the database: verdicts start trials exactly once, the budget holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from gallery_common.db import make_engine
from gallery_common.errors import NotFound
from gallery_trainer.migrations import upgrade
from gallery_trainer.records import Job, Run
from gallery_trainer.search import SearchCoordinator
from gallery_trainer.spec import parse_spec

SEARCH_SPEC = {
    "name": "iris-search",
    "data": {"source": "builtin", "name": "iris"},
    "training": {"epochs": 2},
    "search": {
        "budget": 3,
        "metric": "val_accuracy",
        "space": {
            "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "model.hidden": {"type": "categorical", "choices": [[8], [16, 8]]},
        },
    },
}


def trained(engine, job_id: str, accuracy: float) -> str:  # type: ignore[no-untyped-def]
    """Pretend the trial's job ran: give it a run with a metric."""
    run_id = f"run-{job_id}"
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.run_id = "succeeded", run_id
        session.add(job)
        session.add(
            Run(id=run_id, job_id=job_id, model=job.model, status="succeeded", metrics={"val_accuracy": accuracy})
        )
        session.commit()
    return run_id


@pytest.fixture
def searches(tmp_path: Path) -> SearchCoordinator:
    engine = make_engine(f"sqlite:///{tmp_path / 'trainer.db'}")
    upgrade(engine)
    return SearchCoordinator(engine)


def job_spec(searches: SearchCoordinator, job_id: str) -> dict:  # type: ignore[type-arg]
    with Session(searches.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.spec


def test_rejections_start_trials_until_the_budget_is_spent(searches: SearchCoordinator) -> None:
    first = searches.start(parse_spec(SEARCH_SPEC))
    assert first.trial == 0 and first.search_id
    spec = job_spec(searches, first.id)
    assert "search" not in spec or spec["search"] is None
    assert 0.001 <= spec["training"]["learning_rate"] <= 0.1

    run0 = trained(searches.engine, first.id, 0.4)
    second = searches.on_rejected(run0, ["accuracy 0.4 < 0.9"])
    assert second is not None
    assert searches.on_rejected(run0, ["accuracy 0.4 < 0.9"]) is None, "a redelivered rejection starts nothing"

    run1 = trained(searches.engine, second, 0.6)
    third = searches.on_rejected(run1, ["accuracy 0.6 < 0.9"])
    assert third is not None
    run2 = trained(searches.engine, third, 0.7)
    assert searches.on_rejected(run2, ["accuracy 0.7 < 0.9"]) is None

    search = searches.get(first.search_id)  # type: ignore[arg-type]
    assert search.status == "exhausted" and search.finished_at is not None
    assert [t.state for t in search.trials] == ["rejected", "rejected", "rejected"]
    assert [t.value for t in search.trials] == [0.4, 0.6, 0.7]
    assert search.trials[0].reasons == ["accuracy 0.4 < 0.9"]
    rates = {t.params["training.learning_rate"] for t in search.trials}
    assert len(rates) == 3, "each trial tries new parameters"
    for trial in search.trials:
        assert job_spec(searches, trial.job_id)["training"]["learning_rate"] == trial.params["training.learning_rate"]


def test_a_validated_trial_ends_the_search(searches: SearchCoordinator) -> None:
    first = searches.start(parse_spec(SEARCH_SPEC))
    run0 = trained(searches.engine, first.id, 0.95)
    searches.on_validated(run0)
    searches.on_validated(run0)
    search = searches.get(first.search_id)  # type: ignore[arg-type]
    assert search.status == "succeeded" and search.winner_run_id == run0
    assert [t.state for t in search.trials] == ["validated"]
    assert searches.on_rejected(run0, ["late"]) is None


def test_a_failed_trial_counts_and_the_next_one_starts(searches: SearchCoordinator) -> None:
    first = searches.start(parse_spec(SEARCH_SPEC))
    with Session(searches.engine) as session:
        job = session.get(Job, first.id)
        assert job is not None
        job.status, job.error = "failed", "out of memory"
        session.add(job)
        session.commit()
    second = searches.on_trial_ended(first.id)
    assert second is not None
    assert searches.on_trial_ended(first.id) is None
    search = searches.get(first.search_id)  # type: ignore[arg-type]
    assert [(t.state, t.reasons) for t in search.trials] == [("failed", ["out of memory"]), ("training", [])]


def test_events_about_other_runs_are_ignored(searches: SearchCoordinator) -> None:
    assert searches.on_rejected("someone-elses-run", ["x"]) is None
    with pytest.raises(NotFound):
        searches.get("nope")
