"""The model.validated handler: one job per version, the result re-announced, poison events refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gallery_common.consumer import PermanentError
from gallery_common.db import make_engine
from gallery_common.events import ArtifactRef, ModelOptimized, ModelValidated, make_event
from gallery_optimizer.consumer import validated_events
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.migrations import upgrade

ONNX = ArtifactRef(uri="file:///a/model.onnx", sha256="a" * 64)


class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[Any, str | None]] = []

    async def publish(self, payload: Any, *, event_id: str | None = None) -> None:
        self.published.append((payload, event_id))


class FakeQueue:
    """The work queue: like JetStream's, it keeps one message per job."""

    def __init__(self) -> None:
        self.queued: list[str] = []

    async def submit(self, job_id: str) -> bool:
        if job_id in self.queued:
            return False
        self.queued.append(job_id)
        return True


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'optimizer.db'}")
    upgrade(engine)
    return JobStore(engine)


def validated(event_id: str, **artifacts: ArtifactRef) -> Any:
    payload = ModelValidated(model="iris", version=2, artifacts=artifacts or {"onnx": ONNX})
    return make_event(payload, "/modelgallery/registry", event_id=event_id)


async def test_a_redelivered_event_queues_no_second_job(jobs: JobStore) -> None:
    bus, queue = FakeBus(), FakeQueue()
    handle = validated_events(jobs, queue, bus).dispatch  # type: ignore[arg-type]
    await handle(validated("validated:iris:2"))
    await handle(validated("validated:iris:2"))
    (job,) = jobs.recent("iris")
    assert queue.queued == [job.id] and job.source_event_id == "validated:iris:2"
    assert bus.published == []


async def test_a_version_already_optimized_is_announced_again_under_the_same_id(jobs: JobStore) -> None:
    bus, queue = FakeBus(), FakeQueue()
    handle = validated_events(jobs, queue, bus).dispatch  # type: ignore[arg-type]
    await handle(validated("validated:iris:2"))
    result = ModelOptimized(model="iris", version=2, recommended="fp32", recommended_artifact=ONNX)
    _, attempt = jobs.claim(queue.queued[0], "replica-a", ack_wait=30.0, max_attempts=3)
    jobs.succeed(queue.queued[0], attempt, {}, result.model_dump(mode="json"))

    await handle(validated("validated:iris:2:replayed"))
    assert bus.published == [(result, "optimized:iris:2")]
    assert len(queue.queued) == 1 and len(jobs.recent("iris")) == 1


async def test_an_event_without_an_onnx_artifact_is_refused_for_good(jobs: JobStore) -> None:
    handle = validated_events(jobs, FakeQueue(), FakeBus()).dispatch  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match=r"model\.validated for iris:2 carries no onnx artifact"):
        await handle(validated("validated:iris:2", weights=ONNX))
    assert jobs.recent() == []
