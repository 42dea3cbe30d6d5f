"""The job runner end to end over fakes of the library, registry and bus, with a real file store and SQLite."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from optimizer_service_fakes import FakePipeline, RecordingPublisher, put_version_artifacts
from registry_fakes import InMemoryRegistry

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.db import make_engine
from gallery_common.events import ArtifactRef
from gallery_common.settings import GallerySettings
from gallery_common.work_queue import Delivery, Settle
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.migrations import upgrade
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.runner import OptimizationRunner


@dataclass
class World:
    jobs: JobStore
    store: ArtifactStore
    registry: InMemoryRegistry
    pipeline: FakePipeline
    published: RecordingPublisher
    runner: OptimizationRunner
    work_dir: Path

    def submit(self, model: str = "iris", version: int = 1, **policy: object) -> str:
        refs = put_version_artifacts(self.store, model, version)
        self.registry.add_version(model, version, refs, class_names=["a", "b", "c"])
        submission = self.jobs.submit(model, version, refs, OptimizationPolicy(**policy))  # type: ignore[arg-type]
        return submission.job.id


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = make_engine(f"sqlite:///{tmp_path / 'optimizer.db'}")
    upgrade(engine)
    jobs = JobStore(engine)
    store = open_store((tmp_path / "artifacts").as_uri(), GallerySettings())
    registry, pipeline, published = InMemoryRegistry(), FakePipeline(), RecordingPublisher()
    runner = OptimizationRunner(
        jobs=jobs,
        store=store,
        registry=registry,  # type: ignore[arg-type]
        publish=published,
        work_dir=tmp_path / "work",
        progress_interval=0.0,
        pipeline=pipeline.factory(),
    )
    return World(jobs, store, registry, pipeline, published, runner, tmp_path / "work")


def test_a_job_stores_attaches_and_announces_every_variant(world: World) -> None:
    job_id = world.submit()
    world.runner.run(Delivery(job_id, 1))

    job = world.jobs.get(job_id)
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0 and job.finished_at is not None
    # int8_dynamic is the fastest within the 1-point budget (0.5 pt lost, 1 ms against FP32's 4 ms)
    assert job.recommended == "int8_dynamic"

    (payload, event_id), *more = world.published.events
    assert not more and event_id == "optimized:iris:1"
    assert payload.recommended == "int8_dynamic"
    assert (
        world.store.get(payload.recommended_artifact.uri, payload.recommended_artifact.sha256) == b"iris:1:int8_dynamic"
    )
    assert payload.recommended_artifact.uri.endswith("optimized/iris/1/int8_dynamic.onnx")
    by_name = {v.name: v for v in payload.variants}
    assert set(by_name) == {
        "fp32",
        "int8_dynamic",
        "int8_static",
        "fp16",
        "pruned_magnitude",
        "pruned_structured",
        "distilled",
    }
    assert by_name["fp32"].artifact is not None and by_name["fp32"].artifact.uri.endswith("models/iris/1/onnx")
    assert by_name["fp16"].metrics["latency_b32_p50_ms"] == 3.0

    attached = {role: ref for _, _, role, ref in world.registry.attached}
    assert set(attached) == {"int8", "fp16", "pruned", "distilled", "edge_bundle", "report"}
    assert attached["int8"] == by_name["int8_dynamic"].artifact
    # neither pruned variant is within budget, so the more accurate one is the version's `pruned`
    assert attached["pruned"] == by_name["pruned_magnitude"].artifact

    report = json.loads(world.store.get(attached["report"].uri, attached["report"].sha256))
    assert report["recommended"] == "int8_dynamic"
    assert report["documents"]["chart"]["uri"].endswith("optimized/iris/1/report.png")
    assert world.store.get(report["documents"]["chart"]["uri"])[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = world.store.get(report["documents"]["markdown"]["uri"]).decode()
    assert "| int8_dynamic ★ |" in markdown
    assert "| int8_dynamic ★ |" in (job.report or {})["markdown"]
    bundle = world.work_dir.parent / "bundle.tar.gz"
    bundle.write_bytes(world.store.get(attached["edge_bundle"].uri, attached["edge_bundle"].sha256))
    with tarfile.open(bundle) as tar:
        assert tar.extractfile("model.onnx").read() == b"iris:1:int8_dynamic"  # type: ignore[union-attr]
    assert not (world.work_dir / job_id).exists(), "a finished job's work folder is removed"


def test_the_pipeline_gets_verified_inputs_and_the_registry_class_names(world: World) -> None:
    job_id = world.submit(variants=["fp16"], accuracy_budget=0.05)
    world.runner.run(Delivery(job_id, 1))
    (call,) = world.pipeline.calls
    assert call["policy"].variants == ["fp16"] and call["policy"].accuracy_budget == 0.05
    assert call["inputs"].class_names == ["a", "b", "c"]
    assert call["inputs"].task == "classification"  # as the registry records the version
    assert call["inputs"].weights.name == "weights.safetensors"
    assert call["inputs"].spec == {"task": "classification"}


def test_a_failed_variant_is_reported_and_the_others_go_on(world: World) -> None:
    world.pipeline.failing = {"pruned_magnitude": "no weights artifact", "pruned_structured": "no weights artifact"}
    job_id = world.submit()
    world.runner.run(Delivery(job_id, 1))

    job = world.jobs.get(job_id)
    assert job.status == "succeeded"
    ((payload, _),) = world.published.events
    errors = {v.name: v.error for v in payload.variants if v.error}
    assert errors == {"pruned_magnitude": "no weights artifact", "pruned_structured": "no weights artifact"}
    assert all(v.artifact is None for v in payload.variants if v.error)
    assert "pruned" not in {role for _, _, role, _ in world.registry.attached}
    assert "- pruned_magnitude: no weights artifact" in (job.report or {})["markdown"]


def test_when_no_variant_is_within_budget_fp32_is_recommended(world: World) -> None:
    job_id = world.submit(variants=["distilled"])
    world.runner.run(Delivery(job_id, 1))
    ((payload, _),) = world.published.events
    assert payload.recommended == "fp32"
    assert payload.recommended_artifact.uri.endswith("models/iris/1/onnx")


def test_a_tampered_input_fails_the_job_before_anything_is_built(world: World) -> None:
    job_id = world.submit()
    refs, _ = world.jobs.inputs(job_id)
    world.store.put(world.store.key_for(refs["weights"].uri), b"tampered")
    world.runner.run(Delivery(job_id, 1))

    job = world.jobs.get(job_id)
    assert job.status == "failed"
    assert "sha256" in (job.error or "")
    assert world.pipeline.calls == [] and world.published.events == [] and world.registry.attached == []


def test_a_failed_edge_bundle_is_reported_and_the_variants_still_attach(world: World) -> None:
    world.pipeline.bundle_error = "runner template missing"
    job_id = world.submit()
    world.runner.run(Delivery(job_id, 1))
    job = world.jobs.get(job_id)
    assert job.status == "succeeded"
    assert (job.report or {})["edge_bundle_error"] == "RuntimeError: runner template missing"
    assert {role for _, _, role, _ in world.registry.attached} == {"int8", "fp16", "pruned", "distilled", "report"}


def test_a_registry_conflict_fails_the_job_with_the_registry_reason(world: World) -> None:
    job_id = world.submit()
    world.registry.attach_artifact("iris", 1, "fp16", ArtifactRef(uri="file:///x", sha256="0" * 64))
    world.runner.run(Delivery(job_id, 1))
    job = world.jobs.get(job_id)
    assert job.status == "failed"
    assert job.error == "registry refused fp16 artifact of iris:1: another sha256 is attached"
    assert world.published.events == []


def test_a_version_without_its_splits_fails_with_the_reason(world: World) -> None:
    refs = put_version_artifacts(world.store, "iris", 2)
    del refs["test_split"], refs["validation_split"]
    world.registry.add_version("iris", 2, refs)
    job_id = world.jobs.submit("iris", 2, refs, OptimizationPolicy()).job.id
    world.runner.run(Delivery(job_id, 1))
    job = world.jobs.get(job_id)
    assert job.status == "failed"
    assert job.error == "iris:2 has no validation_split, no test_split artifact; nothing to optimize"


def test_a_delivery_the_runner_cannot_run_is_settled_without_running(world: World) -> None:
    job_id = world.submit()
    assert world.runner.run(Delivery(job_id, 1)) is Settle.ACK
    assert world.runner.run(Delivery(job_id, 2)) is Settle.ACK, "a job that ended: its message goes"
    assert world.runner.run(Delivery("nosuchjob", 1)) is Settle.ACK
    second = world.submit(version=2)
    world.runner.stop()
    assert world.runner.run(Delivery(second, 1)) is Settle.GIVE_BACK, "a stopping replica hands jobs on"
    assert world.jobs.get(second).status == "queued" and len(world.published.events) == 1
