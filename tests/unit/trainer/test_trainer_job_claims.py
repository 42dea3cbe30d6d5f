"""Two trainer replicas over one database: who may run a delivered job, take-overs, cancels across
replicas (no NATS: deliveries are handed to the runners directly, as the work queue would)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col
from test_trainer_jobs import IRIS, FakeTraining, Harness, make_harness

from gallery_common.db import utcnow
from gallery_common.work_queue import Delivery, Settle
from gallery_trainer.records import Job, Run


def left_running(h: Harness, *, beat_age_s: float, attempts: int = 1, published: bool = False) -> str:
    """A job replica-a was running when it went quiet `beat_age_s` seconds ago, with its run r1."""
    job = h.submit(IRIS)
    with Session(h.engine) as session:
        session.execute(
            update(Job)
            .where(col(Job.id) == job.id)
            .values(
                status="running",
                run_id="r1",
                holder="replica-a",
                attempts=attempts,
                heartbeat_at=utcnow() - timedelta(seconds=beat_age_s),
            )
        )
        session.add(Run(id="r1", job_id=job.id, model="iris-mlp", event_id=f"trained:{job.id}" if published else None))
        session.commit()
    return job.id


def record(h: Harness, model: type[Any], key: str) -> Any:
    with Session(h.engine) as session:
        row = session.get(model, key)
        assert row is not None
        return row


def test_a_job_whose_replica_went_quiet_is_taken_over_and_published_once(tmp_path: Path) -> None:
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    job_id = left_running(b, beat_age_s=5)  # ack_wait is 2 s: replica-a is dead
    assert b.jobs.unqueued() == [job_id], "a restarted replica puts it back on the queue (a no-op if it is there)"
    assert b.runner.run(Delivery(job_id, 2)) is Settle.ACK
    job = b.jobs.get(job_id)
    assert job.status == "succeeded" and job.holder == "replica-b" and job.attempts == 2 and job.run_id != "r1"
    assert record(b, Run, "r1").status == "failed" and "replica-a stopped" in record(b, Run, "r1").error
    [(payload, event_id)] = b.published
    assert event_id == f"trained:{job_id}" and payload.run_id == job.run_id


def test_a_job_whose_replica_beats_is_left_to_it(tmp_path: Path) -> None:
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    job_id = left_running(b, beat_age_s=0.1)
    assert b.jobs.unqueued() == []
    assert b.runner.run(Delivery(job_id, 2)) is Settle.LATER, "looked at again after a while"
    job = b.jobs.get(job_id)
    assert (job.status, job.holder, job.attempts) == ("running", "replica-a", 1) and not b.training.calls


def test_a_job_whose_replicas_keep_dying_fails_with_the_reason(tmp_path: Path) -> None:
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    job_id = left_running(b, beat_age_s=5, attempts=3)  # the default GALLERY_JOB_MAX_ATTEMPTS
    assert b.runner.run(Delivery(job_id, 4)) is Settle.ACK
    job = b.jobs.get(job_id)
    assert job.status == "failed" and "stopped 3 times" in (job.error or "") and "replica-a" in (job.error or "")
    assert not b.training.calls and not b.published


def test_a_job_that_published_before_its_replica_died_is_not_trained_again(tmp_path: Path) -> None:
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    job_id = left_running(b, beat_age_s=5, published=True)
    assert b.runner.run(Delivery(job_id, 2)) is Settle.ACK
    job = b.jobs.get(job_id)
    assert job.status == "succeeded" and job.run_id == "r1" and record(b, Run, "r1").status == "succeeded"
    assert not b.training.calls and not b.published


def test_a_delivery_of_an_ended_or_unknown_job_is_acked(tmp_path: Path) -> None:
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    cancelled = b.submit(IRIS)
    b.jobs.cancel(cancelled.id)
    assert b.runner.run(Delivery(cancelled.id, 1)) is Settle.ACK
    assert b.runner.run(Delivery("nosuchjob", 1)) is Settle.ACK
    assert not b.training.calls


def test_a_cancel_sent_to_another_replica_reaches_the_running_job(tmp_path: Path) -> None:
    a = make_harness(tmp_path, FakeTraining(hold=threading.Event()), holder="replica-a")
    b = make_harness(tmp_path, FakeTraining(), holder="replica-b")
    a.start()
    try:
        job = a.submit(IRIS)
        assert a.training.started.wait(10)
        assert b.jobs.cancel(job.id).cancel_requested, "asked through replica-b, which does not run it"
        assert a.runner.heartbeat(Delivery(job.id, 1)), "the heartbeat of replica-a reads the request"
        assert a.wait(job.id, "cancelled", "failed").status == "cancelled"
        assert a.queue.settled == [(job.id, Settle.ACK)]
    finally:
        a.stop()


def test_a_replica_that_was_taken_for_dead_stops_and_changes_nothing(tmp_path: Path) -> None:
    a = make_harness(tmp_path, FakeTraining(hold=threading.Event()), holder="replica-a")
    a.start()
    try:
        job = a.submit(IRIS)
        assert a.training.started.wait(10)
        with Session(a.engine) as session:  # replica-b took it over while replica-a hung
            session.execute(update(Job).where(col(Job.id) == job.id).values(holder="replica-b", attempts=2))
            session.commit()
        assert not a.runner.heartbeat(Delivery(job.id, 1)), "the heartbeat finds the job is no longer its own"
        deadline = time.monotonic() + 10
        while not a.queue.settled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.queue.settled == [(job.id, Settle.LOST)], "replica-b's delivery settles the message, not this one"
        now = a.jobs.get(job.id)
        assert (now.status, now.holder, now.attempts) == ("running", "replica-b", 2) and not a.published
    finally:
        a.stop()
