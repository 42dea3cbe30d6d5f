"""The job lifecycle, tracking and search loop over a fake `run_job` and an in-process work queue
(no torch, no NATS; the JetStream work queue is tested in tests/integration/trainer)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_work_queue import LocalQueue
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.db import make_engine
from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import ModelTrained, Signature, TensorSpec
from gallery_common.settings import GallerySettings
from gallery_common.work_queue import Settle
from gallery_trainer.job_service import JobService, UnsupportedMediaType
from gallery_trainer.migrations import upgrade
from gallery_trainer.pipeline import JobOutputs, ProgressUpdate, TrainingFailed
from gallery_trainer.records import JobPublic, Run
from gallery_trainer.runner import GIVEN_BACK_REASON, TrainingProgress, TrainingRunner
from gallery_trainer.search import SearchCoordinator
from gallery_trainer.tracking import MetricsTail, run_metrics

IRIS = {
    "name": "iris-mlp",
    "data": {"source": "builtin", "name": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 3, "learning_rate": 0.01},
}


@dataclass
class FakeTraining:
    """Stands in for `pipeline.run_job`: writes the files, metrics and log a real job writes."""

    hold: threading.Event | None = None  # when given, training waits for it (or for cancel)
    fail_with: Exception | None = None
    started: threading.Event = field(default_factory=threading.Event)
    calls: list[Any] = field(default_factory=list)

    def __call__(
        self,
        spec: Any,
        workdir: Path,
        *,
        store: ArtifactStore | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        cancel: threading.Event | None = None,
        resume: bool = False,
    ) -> JobOutputs:
        self.calls.append(spec)
        self.started.set()
        assert on_progress is not None and cancel is not None
        epochs = spec.training.epochs
        on_progress(ProgressUpdate("preparing", 0, epochs, 0))
        if self.hold is not None:
            while not self.hold.wait(0.01):
                if cancel.is_set():
                    raise RuntimeError("cancelled")
        if self.fail_with is not None:
            raise self.fail_with
        lines = []
        for epoch in range(1, epochs + 1):
            loss = 1.0 / epoch
            lines.append(
                {
                    "kind": "step",
                    "step": epoch * 2,
                    "epoch": epoch,
                    "time": float(epoch),
                    "train_loss": loss,
                    "lr": spec.training.learning_rate,
                    "samples_per_sec": 100.0,
                }
            )
            lines.append(
                {
                    "kind": "epoch",
                    "step": epoch * 2,
                    "epoch": epoch,
                    "time": float(epoch),
                    "train_loss": loss,
                    "lr": spec.training.learning_rate,
                    "samples_per_sec": 100.0,
                    "val_loss": loss * 1.1,
                    "val_accuracy": 0.5 + epoch / 10,
                }
            )
            on_progress(ProgressUpdate("training", epoch, epochs, epoch * 2, {"train_loss": loss}))
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        (workdir / "train.log").write_text("".join(f"epoch {n} done\n" for n in range(1, epochs + 1)))
        files = {}
        for role, name in [
            ("weights", "model.safetensors"),
            ("onnx", "model.onnx"),
            ("spec", "spec.json"),
            ("train_split", "train.npz"),
            ("validation_split", "validation.npz"),
            ("test_split", "test.npz"),
        ]:
            (workdir / name).write_bytes(f"{role} bytes".encode())
            files[role] = workdir / name
        on_progress(ProgressUpdate("done", epochs, epochs, epochs * 2))
        return JobOutputs(
            files=files,
            signature=Signature(
                inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 4])],
                outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 3])],
            ),
            metrics={"val_accuracy": 0.8, "test_accuracy": 0.9},
            dataset_fingerprint="f" * 64,
            config_hash="c" * 64,
            leakage={"dropped": 0},
            task="classification",
            class_names=["setosa", "versicolor", "virginica"],
            engine="deepspeed",
        )


@dataclass
class Harness:
    engine: Engine
    store: ArtifactStore
    runner: TrainingRunner
    jobs: JobService
    searches: SearchCoordinator
    training: FakeTraining
    published: list[tuple[ModelTrained, str]]
    queue: LocalQueue

    def start(self) -> None:
        self.queue.start(self.runner)

    def stop(self) -> None:
        self.queue.stop(self.runner)

    def wait(self, job_id: str, *statuses: str, timeout: float = 20.0) -> JobPublic:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.jobs.get(job_id)
            if job.status in statuses:
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} is {self.jobs.get(job_id).status}, expected one of {statuses}")

    def submit(self, spec: dict[str, Any]) -> JobPublic:
        return self.jobs.submit(json.dumps(spec).encode(), "application/json")


def make_harness(
    tmp_path: Path, training: FakeTraining, publish_error: Exception | None = None, *, holder: str = "replica-a"
) -> Harness:
    engine = make_engine(f"sqlite:///{tmp_path / 'trainer.db'}")
    upgrade(engine)
    store = open_store((tmp_path / "artifacts").as_uri(), GallerySettings())
    published: list[tuple[ModelTrained, str]] = []
    searches = SearchCoordinator(engine)

    def publish(payload: ModelTrained, event_id: str) -> None:
        if publish_error is not None:
            raise publish_error
        published.append((payload, event_id))

    local = LocalQueue()

    def after(job_id: str) -> None:
        next_job = searches.on_trial_ended(job_id)
        if next_job:
            local.submit(next_job)

    runner = TrainingRunner(
        engine=engine,
        store=store,
        publish=publish,
        jobs_dir=tmp_path / "jobs",
        progress_interval=0.0,
        train=training,
        on_finished=after,
        ack_wait=2.0,
        holder=holder,
    )
    jobs = JobService(engine, runner, searches, local.submit)
    return Harness(engine, store, runner, jobs, searches, training, published, local)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = make_harness(tmp_path, FakeTraining())
    h.start()
    yield h
    h.stop()


def test_a_job_trains_records_uploads_and_publishes(harness: Harness) -> None:
    queued = harness.submit(IRIS)
    assert queued.status == "queued" and queued.epochs == 3
    job = harness.wait(queued.id, "succeeded", "failed")
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0 and job.phase == "done" and job.epoch == 3
    assert job.loss == pytest.approx(1 / 3)

    [(payload, event_id)] = harness.published
    assert event_id == f"trained:{job.id}", "the job's id makes the event's, so a job taken over publishes it once"
    assert job.attempts == 1 and job.holder == "replica-a" and job.heartbeat_at is not None
    assert payload.run_id == job.run_id and payload.model == "iris-mlp"
    assert payload.lineage.training_job_id == job.id and payload.lineage.config_hash == "c" * 64
    assert payload.class_names == ["setosa", "versicolor", "virginica"]
    assert set(payload.artifacts) == {
        "weights",
        "onnx",
        "spec",
        "train_split",
        "validation_split",
        "test_split",
        "curves",
    }
    for role, ref in payload.artifacts.items():
        harness.store.verify(ref.uri, ref.sha256)
        assert harness.store.key_for(ref.uri).startswith(f"runs/{job.run_id}/"), role
    assert harness.store.get(payload.artifacts["curves"].uri).startswith(b"\x89PNG")
    assert payload.artifacts["onnx"].format == "onnx"

    with Session(harness.engine) as session:
        run = session.get(Run, job.run_id)
        assert run is not None
        assert run.status == "succeeded" and run.event_id == event_id
        assert run.params["training.learning_rate"] == 0.01 and run.params["model.hidden"] == [8]
        assert not any(key.startswith("search") for key in run.params)
        assert run.metrics == {"val_accuracy": 0.8, "test_accuracy": 0.9}
        assert run.system["engine"] == "deepspeed" and run.system["cpu_count"] >= 1
        assert run.system["peak_rss_bytes"] > 0 and run.system["duration_seconds"] >= 0
        assert run.system["torch_version"]
        metrics = run_metrics(session, run.id)
    assert [r["epoch"] for r in metrics.epochs] == [1, 2, 3]
    assert metrics.epochs[-1]["val_accuracy"] == pytest.approx(0.8)
    assert len(metrics.steps) == 3 and metrics.steps[0]["lr"] == 0.01

    log = harness.jobs.logs(job.id, tail=2)
    assert log.splitlines()[0] == "epoch 3 done"
    assert "published model.trained" in log.splitlines()[1]


def test_bad_specs_are_refused_naming_every_bad_field(harness: Harness) -> None:
    bad = {"name": "bad name!", "data": {"source": "builtin"}, "training": {"epochs": 0, "learning_rate": -1}}
    with pytest.raises(InvalidRequest) as refused:
        harness.submit(bad)
    for field_name in ("name", "data.name", "training.epochs", "training.learning_rate"):
        assert field_name in refused.value.message
    with pytest.raises(InvalidRequest, match=r"training\.epochs"):
        harness.jobs.submit(yaml.safe_dump(bad).encode(), "application/yaml")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        harness.jobs.submit(b"{name: x", "application/json")
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        harness.jobs.submit(b"name: x", "text/plain")
    assert harness.jobs.list_jobs() == []


def test_yaml_specs_are_accepted(harness: Harness) -> None:
    job = harness.jobs.submit(yaml.safe_dump(IRIS).encode(), "text/yaml; charset=utf-8")
    assert harness.wait(job.id, "succeeded").model == "iris-mlp"


def test_cancel_a_running_and_a_queued_job(tmp_path: Path) -> None:
    h = make_harness(tmp_path, FakeTraining(hold=threading.Event()))
    h.start()
    try:
        running, queued = h.submit(IRIS), h.submit(IRIS)
        assert h.training.started.wait(10)
        assert h.jobs.cancel(queued.id).status == "cancelled"
        assert h.jobs.cancel(running.id).cancel_requested
        job = h.wait(running.id, "cancelled", "failed")
        assert job.status == "cancelled" and job.run_id
        assert len(h.training.calls) == 1, "the queued job was cancelled before it ran"
        with pytest.raises(Conflict, match="already cancelled"):
            h.jobs.cancel(running.id)
        with pytest.raises(NotFound):
            h.jobs.cancel("nope")
    finally:
        h.stop()


def test_failures_give_the_reason(tmp_path: Path) -> None:
    h = make_harness(tmp_path, FakeTraining(fail_with=TrainingFailed("the data set has one class")))
    h.start()
    try:
        job = h.wait(h.submit(IRIS).id, "failed", "succeeded")
        assert job.error == "the data set has one class"
        assert "training failed: the data set has one class" in h.jobs.logs(job.id, 10)
    finally:
        h.stop()


def test_a_publish_that_fails_fails_the_job(tmp_path: Path) -> None:
    h = make_harness(tmp_path, FakeTraining(), publish_error=TimeoutError("NATS down"))
    h.start()
    try:
        job = h.wait(h.submit(IRIS).id, "failed", "succeeded")
        assert "could not be delivered" in (job.error or "") and "NATS down" in (job.error or "")
    finally:
        h.stop()


def test_stopping_the_service_gives_a_running_job_back_to_the_queue(tmp_path: Path) -> None:
    h = make_harness(tmp_path, FakeTraining(hold=threading.Event()))
    h.start()
    job = h.submit(IRIS)
    assert h.training.started.wait(10)
    h.stop()
    assert h.queue.settled == [(job.id, Settle.GIVE_BACK)], "the queue hands it to another replica at once"
    stopped = h.jobs.get(job.id)
    assert stopped.status == "queued" and stopped.holder is None and stopped.attempts == 1
    with Session(h.engine) as session:
        run = session.get(Run, stopped.run_id)
        assert run is not None and run.status == "failed" and run.error == GIVEN_BACK_REASON


def test_progress_is_throttled_but_phase_changes_and_the_last_update_are_written(tmp_path: Path) -> None:
    h = make_harness(tmp_path, FakeTraining())
    job = h.submit(IRIS)
    writer = TrainingProgress(h.engine, job.id, "run", MetricsTail(tmp_path / "none.jsonl"), interval=3600)

    def seen() -> JobPublic:
        return h.jobs.get(job.id)

    writer(ProgressUpdate("preparing", 0, 10, 0))
    assert (seen().phase, seen().progress) == ("preparing", 0.0)
    writer(ProgressUpdate("training", 1, 10, 5, {"train_loss": 2.0}))
    assert seen().progress == 0.13, "one epoch of ten: 5 % for preparing plus a tenth of training's 80 %"
    writer(ProgressUpdate("training", 2, 10, 10, {"train_loss": 1.5, "val_accuracy": 0.4}))
    assert seen().epoch == 1, "within the interval only a change of phase is written"
    writer(ProgressUpdate("exporting", 10, 10, 50))
    job_now = seen()
    assert job_now.phase == "exporting" and job_now.epoch == 10 and job_now.progress == 0.85
    assert job_now.loss == 1.5, "the loss stays the last one training reported"
    assert job_now.metrics == {"train_loss": 1.5, "val_accuracy": 0.4}
    writer(ProgressUpdate("exporting", 10, 10, 50, {"test_accuracy": 0.9}))
    writer.flush()
    assert seen().metrics["test_accuracy"] == 0.9
