"""The optimizer's records on PostgreSQL: one job per version, the unique event id, policies, take-overs."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from gallery_common.db import make_engine
from gallery_common.events import ArtifactRef
from gallery_common.work_queue import Claim
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.migrations import upgrade
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.records import OptimizationJob

ONNX = {"onnx": ArtifactRef(uri="file:///a/model.onnx", sha256="a" * 64)}


def test_jobs_and_policies_on_postgres(postgres_server) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(postgres_server.new_database())
    upgrade(engine)
    jobs = JobStore(engine)

    jobs.put_policy("iris", {"variants": ["int8_dynamic"], "student_hidden": [16, 8]})
    policy = jobs.get_policy("iris")
    assert policy.variants == ["int8_dynamic"] and policy.student_hidden == [16, 8]

    first = jobs.submit("iris", 1, ONNX, policy, source_event_id="validated:iris:1")
    assert jobs.submit("iris", 1, ONNX, policy, source_event_id="validated:iris:1").outcome == "active"
    other = jobs.submit("iris", 2, ONNX, OptimizationPolicy())
    assert jobs.claim(first.job.id, "replica-a", ack_wait=30, max_attempts=3) == (Claim.START, 1)
    assert jobs.progress(first.job.id, 1, "building int8_dynamic", 0.4)
    assert jobs.unqueued(ack_wait=30) == [other.job.id], "replica-a beats: its job is its own"
    assert jobs.claim(first.job.id, "replica-b", ack_wait=30, max_attempts=3) == (Claim.WAIT, 0)
    assert jobs.unqueued(ack_wait=0.001) == [first.job.id, other.job.id], "gone quiet, it is queued again"
    assert jobs.claim(first.job.id, "replica-b", ack_wait=0.001, max_attempts=3) == (Claim.TAKE_OVER, 2)
    assert not jobs.succeed(first.job.id, 1, {}, {}), "replica-a, taken for dead, changes nothing"
    jobs.succeed(first.job.id, 2, {"markdown": "| fp32 |"}, {"model": "iris", "version": 1, "recommended": "fp32"})
    done = jobs.submit("iris", 1, ONNX, policy)
    assert done.outcome == "succeeded" and done.result == {"model": "iris", "version": 1, "recommended": "fp32"}
    assert jobs.get(first.job.id).report == {"markdown": "| fp32 |"}
    assert jobs.inputs(first.job.id)[0] == ONNX
    assert [job.id for job in jobs.recent("iris")] == [other.job.id, first.job.id]

    # the database itself refuses a second job for one event, whatever code path tries it
    with Session(engine) as session, pytest.raises(IntegrityError):
        session.add(OptimizationJob(model="iris", version=3, source_event_id="validated:iris:1"))
        session.commit()
