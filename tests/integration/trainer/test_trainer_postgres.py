"""The trainer's records on PostgreSQL: jobs, a job whose replicas died, the search loop (no training runs here)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import update
from sqlmodel import Session, col

from gallery_common.artifacts import open_store
from gallery_common.db import make_engine, utcnow
from gallery_common.settings import GallerySettings
from gallery_common.work_queue import Delivery, Settle
from gallery_trainer.job_service import JobService
from gallery_trainer.migrations import upgrade
from gallery_trainer.records import Job, Run
from gallery_trainer.runner import TrainingRunner
from gallery_trainer.search import SearchCoordinator

SPEC = {
    "name": "iris-pg",
    "data": {"source": "builtin", "name": "iris"},
    "search": {"budget": 2, "space": {"model.hidden": {"type": "categorical", "choices": [[8], [4, 4]]}}},
}


def test_jobs_and_searches_on_postgres(tmp_path: Path, postgres_server) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(postgres_server.new_database())
    upgrade(engine)
    store = open_store((tmp_path / "artifacts").as_uri(), GallerySettings())
    searches = SearchCoordinator(engine)
    # Nothing takes jobs from a queue here: they stay queued unless the test moves them.
    runner = TrainingRunner(
        engine=engine,
        store=store,
        publish=lambda *_: None,
        jobs_dir=tmp_path / "jobs",
        on_finished=searches.on_trial_ended,
        max_attempts=2,
    )
    queued: list[str] = []
    jobs = JobService(engine, runner, searches, queued.append)

    first = jobs.submit(json.dumps(SPEC).encode(), "application/json")
    with Session(engine) as session:
        session.execute(update(Job).where(col(Job.id) == first.id).values(status="succeeded", run_id="run0"))
        session.add(Run(id="run0", job_id=first.id, model="iris-pg", metrics={"val_accuracy": 0.5}))
        session.commit()
    second = searches.on_rejected("run0", ["too weak"])
    assert second is not None and searches.on_rejected("run0", ["too weak"]) is None

    assert queued == [first.id]

    # the second trial's replicas died twice (max_attempts): the next delivery fails it, ending the search
    with Session(engine) as session:
        values = {"status": "running", "run_id": "run1", "holder": "gone:1", "attempts": 2, "heartbeat_at": utcnow()}
        session.execute(update(Job).where(col(Job.id) == second).values(**values))
        session.add(Run(id="run1", job_id=second, model="iris-pg"))
        session.commit()
    assert jobs.unqueued() == [] and runner.run(Delivery(second, 3)) is Settle.LATER, "its replica still beats"
    with Session(engine) as session:
        session.execute(update(Job).where(col(Job.id) == second).values(heartbeat_at=None))
        session.commit()
    assert jobs.unqueued() == [second]
    assert runner.run(Delivery(second, 3)) is Settle.ACK
    stopped = jobs.get(second)
    assert stopped.status == "failed" and "stopped 2 times (the last: gone:1)" in (stopped.error or "")
    search = searches.get(first.search_id)  # type: ignore[arg-type]
    assert search.status == "exhausted"
    assert [(t.state, t.value) for t in search.trials] == [("rejected", 0.5), ("failed", None)]
    assert search.trials[1].params["model.hidden"] in ([8], [4, 4])

    plain = jobs.submit(json.dumps({k: v for k, v in SPEC.items() if k != "search"}).encode(), "application/json")
    assert jobs.cancel(plain.id).status == "cancelled"
    assert [j.id for j in jobs.list_jobs(status="cancelled")] == [plain.id]
    engine.dispose()
