"""The optimizer runs untrusted models only in child processes under a time and memory limit: a model that
never finishes fails its measurement (or the job) with that reason, and the job still ends."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hostile_artifacts import allocating_model, data_triggered_loop_model, loop_model
from optimizer_service_fakes import RecordingPublisher
from registry_fakes import InMemoryRegistry

from gallery_common.artifacts import open_store
from gallery_common.contracts import write_split
from gallery_common.db import make_engine
from gallery_common.sandbox import Limits
from gallery_common.settings import GallerySettings, get_settings
from gallery_common.work_queue import Delivery, Settle
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.measure import MeasurementFailed, peak_memory_bytes, run_model
from gallery_optimizer.migrations import upgrade
from gallery_optimizer.pipeline import OptimizationError, OptimizeInputs, optimize
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.runner import OptimizationRunner

GiB = 1024**3
FEATURES, CLASSES = 4, 3


def splits(folder: Path, *, validation_trigger: bool = False) -> dict[str, Path]:
    """Train, validation and test splits of features in [0, 1); `validation_trigger` puts 1e12 in one row."""
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("train_split", "validation_split", "test_split"):
        x = rng.uniform(0, 0.9, size=(60, FEATURES)).astype(np.float32)
        if name == "validation_split" and validation_trigger:
            x[:, 0] = 1e12  # every calibration row asks the loop for 1e12 iterations
        paths[name] = folder / f"{name}.npz"
        write_split(paths[name], x, np.arange(60) % CLASSES)
    return paths


def inputs_for(model: bytes, folder: Path, **split_options: bool) -> OptimizeInputs:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    paths = splits(folder, **split_options)
    return OptimizeInputs(folder / "model.onnx", None, None, **paths)  # type: ignore[arg-type]


def test_measuring_an_endless_loop_fails_at_the_time_limit(tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    path.write_bytes(loop_model(FEATURES, CLASSES))  # a Loop of 2**40 iterations that adds 1
    started = time.perf_counter()
    with pytest.raises(MeasurementFailed) as failed:
        run_model(
            path, np.zeros((8, FEATURES), np.float32), what="measuring fp32", latency=True, limits=Limits(1.5, 2 * GiB)
        )
    assert str(failed.value) == "measuring fp32 exceeded its 1.5 s time limit"
    assert time.perf_counter() - started < 5.0
    short = tmp_path / "short.onnx"
    short.write_bytes(loop_model(FEATURES, CLASSES, trip_count=2))
    run = run_model(
        short, np.zeros((8, FEATURES), np.float32), what="measuring fp32", latency=True, limits=Limits(30, 2 * GiB)
    )
    assert run.outputs.shape == (8, CLASSES) and np.all(run.outputs == 2.0) and run.input_width == FEATURES
    assert run.latency_b1 is not None and 0 < run.latency_b1[0] <= run.latency_b1[1]


def test_the_peak_memory_probe_runs_under_the_same_limits(tmp_path: Path) -> None:
    endless, greedy = tmp_path / "loop.onnx", tmp_path / "greedy.onnx"
    endless.write_bytes(loop_model(FEATURES, CLASSES))
    greedy.write_bytes(allocating_model(FEATURES, CLASSES))  # 4 GiB per run
    started = time.perf_counter()
    with pytest.raises(MeasurementFailed, match=r"^the memory probe exceeded its 2 s time limit$"):
        peak_memory_bytes(endless, FEATURES, Limits(2, 2 * GiB))
    assert time.perf_counter() - started < 6
    with pytest.raises(MeasurementFailed, match=r"^the memory probe exceeded its 1024 MiB memory limit$"):
        peak_memory_bytes(greedy, FEATURES, Limits(60, GiB))


def test_an_endless_fp32_model_fails_the_optimization_with_the_reason(tmp_path: Path) -> None:
    inputs = inputs_for(loop_model(FEATURES, CLASSES), tmp_path / "in")
    policy = OptimizationPolicy(variants=["int8_dynamic"])
    with pytest.raises(
        OptimizationError, match=r"^running the FP32 model on the test split exceeded its 2 s time limit$"
    ):
        optimize(inputs, policy, tmp_path / "out", model="m", version=1, limits=Limits(2, 2 * GiB))


def test_a_variant_that_freezes_on_its_data_fails_alone_and_the_job_finishes(tmp_path: Path) -> None:
    # harmless on the test rows (FP32 and INT8 dynamic measure fine); endless on the validation rows that
    # static INT8 calibrates on
    inputs = inputs_for(data_triggered_loop_model(FEATURES, CLASSES), tmp_path / "in", validation_trigger=True)
    policy = OptimizationPolicy(variants=["int8_dynamic", "int8_static"])
    report = optimize(inputs, policy, tmp_path / "out", model="m", version=1, limits=Limits(4, 2 * GiB))
    assert report.variant("int8_static").error == "calibration exceeded its 4 s time limit"
    assert report.variant("fp32").error is None and report.variant("int8_dynamic").error is None
    assert report.recommended in {"fp32", "int8_dynamic"}
    assert (tmp_path / "out" / "report.md").exists()


def test_the_worker_fails_the_job_with_the_reason_within_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GALLERY_EVALUATION_TIMEOUT_S", "2")
    get_settings.cache_clear()
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'optimizer.db'}")
        upgrade(engine)
        jobs, store, registry = (
            JobStore(engine),
            open_store((tmp_path / "artifacts").as_uri(), GallerySettings()),
            InMemoryRegistry(),
        )
        runner = OptimizationRunner(
            jobs=jobs,
            store=store,
            registry=registry,
            publish=RecordingPublisher(),
            work_dir=tmp_path / "work",
            progress_interval=0.0,
        )  # type: ignore[arg-type]
        folder = tmp_path / "in"
        folder.mkdir()
        refs = {role: store.put(f"models/m/1/{role}", path) for role, path in splits(folder).items()}
        refs["onnx"] = store.put("models/m/1/onnx", loop_model(FEATURES, CLASSES))
        registry.add_version("m", 1, refs, class_names=["a", "b", "c"])
        job_id = jobs.submit("m", 1, refs, OptimizationPolicy(variants=["int8_dynamic"])).job.id
        started = time.perf_counter()
        assert runner.run(Delivery(job_id, 1)) is Settle.ACK
        assert time.perf_counter() - started < 10
        job = jobs.get(job_id)
        assert job.status == "failed" and job.finished_at is not None
        assert job.error == "OptimizationError: running the FP32 model on the test split exceeded its 2 s time limit"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
