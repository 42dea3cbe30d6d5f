"""One job per model version, policies with defaults, and the claims of replicas on a work queue (SQLite)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from gallery_common.db import make_engine, utcnow
from gallery_common.errors import Conflict, InvalidRequest
from gallery_common.events import ArtifactRef
from gallery_common.work_queue import Claim
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.migrations import upgrade
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.records import OptimizationJob

ONNX = {"onnx": ArtifactRef(uri="file:///a/model.onnx", sha256="a" * 64)}


def claim(jobs: JobStore, job_id: str, holder: str = "replica-a") -> tuple[Claim, int]:
    """A delivery of the job's message to `holder` (ack wait 2 s, 3 attempts)."""
    return jobs.claim(job_id, holder, ack_wait=2.0, max_attempts=3)


def went_quiet(jobs: JobStore, job_id: str) -> None:
    """The replica running the job last beat 5 s ago: more than the ack wait."""
    with Session(jobs.engine) as session:
        session.execute(
            update(OptimizationJob)
            .where(col(OptimizationJob.id) == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=5))
        )
        session.commit()


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'optimizer.db'}")
    upgrade(engine)
    return JobStore(engine)


def test_a_version_gets_one_job_while_it_is_queued_or_running(jobs: JobStore) -> None:
    first = jobs.submit("iris", 1, ONNX, OptimizationPolicy(), source_event_id="ev-1")
    again = jobs.submit("iris", 1, ONNX, OptimizationPolicy(), source_event_id="ev-1")
    assert first.outcome == "created" and first.needs_run
    assert again.outcome == "active" and not again.needs_run and again.job.id == first.job.id
    assert claim(jobs, first.job.id) == (Claim.START, 1)
    assert claim(jobs, first.job.id) == (Claim.WAIT, 0), "a running job whose replica beats is not claimed twice"
    assert jobs.submit("iris", 1, ONNX, OptimizationPolicy()).outcome == "active"
    with pytest.raises(Conflict, match=f"already being optimized by job {first.job.id}"):
        jobs.require_new(again)
    assert jobs.submit("iris", 2, ONNX, OptimizationPolicy()).outcome == "created"


def test_a_succeeded_job_is_returned_with_its_result(jobs: JobStore) -> None:
    job = jobs.submit("iris", 1, ONNX, OptimizationPolicy()).job
    _, attempt = claim(jobs, job.id)
    jobs.succeed(job.id, attempt, {"recommended": "int8_dynamic"}, {"model": "iris", "recommended": "int8_dynamic"})
    again = jobs.submit("iris", 1, ONNX, OptimizationPolicy())
    assert again.outcome == "succeeded" and again.job.id == job.id
    assert again.result == {"model": "iris", "recommended": "int8_dynamic"}
    assert again.job.recommended == "int8_dynamic"
    with pytest.raises(Conflict, match="already optimized"):
        jobs.require_new(again)


def test_a_failed_job_runs_again_in_place_with_the_new_policy(jobs: JobStore) -> None:
    job = jobs.submit("iris", 1, ONNX, OptimizationPolicy()).job
    _, attempt = claim(jobs, job.id)
    jobs.fail(job.id, attempt, "registry unreachable")
    retry = jobs.submit("iris", 1, ONNX, OptimizationPolicy(variants=["fp16"]))
    assert retry.outcome == "retried" and retry.job.id == job.id
    assert retry.job.status == "queued" and retry.job.error is None
    assert jobs.inputs(job.id)[1].variants == ["fp16"]


def test_a_job_whose_replica_went_quiet_is_put_back_and_taken_over(jobs: JobStore) -> None:
    quiet = jobs.submit("iris", 1, ONNX, OptimizationPolicy()).job
    queued = jobs.submit("iris", 2, ONNX, OptimizationPolicy()).job
    beating = jobs.submit("iris", 3, ONNX, OptimizationPolicy()).job
    done = jobs.submit("iris", 4, ONNX, OptimizationPolicy()).job
    for job in (quiet, beating, done):
        claim(jobs, job.id)
    jobs.succeed(done.id, 1, {}, {})
    went_quiet(jobs, quiet.id)
    assert jobs.unqueued(ack_wait=2.0) == [quiet.id, queued.id], "what a restarted replica puts on the queue again"
    assert claim(jobs, quiet.id, holder="replica-b") == (Claim.TAKE_OVER, 2)
    taken = jobs.get(quiet.id)
    assert (taken.status, taken.holder, taken.attempts) == ("running", "replica-b", 2)
    assert not jobs.progress(quiet.id, 1, "late", 0.5), "the replica taken for dead writes nothing more"
    assert not jobs.succeed(quiet.id, 1, {}, {}) and jobs.get(quiet.id).status == "running"


def test_a_job_whose_replicas_keep_dying_fails(jobs: JobStore) -> None:
    job = jobs.submit("iris", 1, ONNX, OptimizationPolicy()).job
    claims = []
    for _ in range(4):
        claims.append(claim(jobs, job.id)[0])
        went_quiet(jobs, job.id)
    assert claims == [Claim.START, Claim.TAKE_OVER, Claim.TAKE_OVER, Claim.GIVE_UP]
    failed = jobs.get(job.id)
    assert failed.status == "failed" and "stopped 3 times" in (failed.error or "")


def test_progress_is_kept_between_zero_and_one(jobs: JobStore) -> None:
    job = jobs.submit("iris", 1, ONNX, OptimizationPolicy()).job
    _, attempt = claim(jobs, job.id)
    assert jobs.progress(job.id, attempt, "building fp16", 1.7)
    seen = jobs.get(job.id)
    assert (seen.step, seen.progress, seen.status) == ("building fp16", 1.0, "running")


def test_a_model_without_a_policy_gets_the_defaults(jobs: JobStore) -> None:
    assert jobs.get_policy("iris") == OptimizationPolicy()
    assert jobs.get_policy("iris").accuracy_budget == 0.01


def test_a_policy_is_replaced_whole_and_kept_per_model(jobs: JobStore) -> None:
    jobs.put_policy("iris", {"accuracy_budget": 0.02, "variants": ["int8_dynamic"]})
    jobs.put_policy("iris", {"target_sparsity": 0.3})
    policy = jobs.get_policy("iris")
    assert policy.target_sparsity == 0.3
    assert policy.accuracy_budget == 0.01, "fields left out take their defaults"
    assert jobs.get_policy("digits") == OptimizationPolicy()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"accuracy_budget": 2}, "accuracy_budget: Input should be less than or equal to 1"),
        ({"variants": ["int4"]}, "variants.0: Input should be"),
        ({"budget": 0.1}, "budget: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field(jobs: JobStore, values: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        jobs.put_policy("iris", values)
    assert jobs.get_policy("iris") == OptimizationPolicy()
