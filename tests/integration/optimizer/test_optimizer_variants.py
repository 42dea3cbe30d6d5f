"""Every variant on a real digits MLP trained by the trainer: valid, within the accuracy budget, INT8 at most
30 % of FP32, and an edge bundle whose runner predicts like the models it bundles in a clean interpreter."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from edge_bundles import run_bundle

from gallery_common.hardware import host_cpu
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_optimizer.pipeline import OptimizationReport, OptimizeInputs, build_edge_bundle, optimize
from gallery_optimizer.policy import ALL_VARIANTS, OptimizationPolicy
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import parse_spec

POLICY = OptimizationPolicy(student_hidden=[128], distill_epochs=30, finetune_epochs=3)


@dataclass
class Optimized:
    inputs: OptimizeInputs
    report: OptimizationReport
    workdir: Path
    steps: list[tuple[str, float]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> OptimizeInputs:
    spec = parse_spec(
        {
            "name": "digits-mlp",
            "data": {"source": "builtin", "name": "digits"},
            "model": {"hidden": [512, 512]},
            "training": {"epochs": 12, "batch_size": 64, "seed": 0},
            "engine": {"kind": "ddp", "ranks": 1},
        }
    )
    outputs = run_job(spec, tmp_path_factory.mktemp("trained"))
    files = outputs.files
    return OptimizeInputs(
        onnx=files["onnx"],
        weights=files["weights"],
        spec=json.loads(files["spec"].read_text()),
        train_split=files["train_split"],
        validation_split=files["validation_split"],
        test_split=files["test_split"],
        class_names=outputs.class_names,
    )


@pytest.fixture(scope="module")
def optimized(trained: OptimizeInputs, tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    workdir = tmp_path_factory.mktemp("optimized")
    steps: list[tuple[str, float]] = []
    report = optimize(
        trained, POLICY, workdir, model="digits", version=1, on_progress=lambda s, f: steps.append((s, f))
    )
    return Optimized(trained, report, workdir, steps)


def fp32_predictions(inputs: OptimizeInputs) -> tuple[np.ndarray, np.ndarray]:
    with np.load(inputs.test_split) as split:
        x, y = split["x"].astype(np.float32), split["y"]
    session = ort.InferenceSession(inputs.onnx.read_bytes(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": x})[0].argmax(axis=1), y


def test_every_variant_is_built_valid_and_within_the_accuracy_budget(optimized: Optimized) -> None:
    report = optimized.report
    assert [row.name for row in report.variants] == ["fp32", *ALL_VARIANTS]
    fp32 = report.variant("fp32")
    assert fp32.accuracy is not None and fp32.accuracy > 0.9
    for row in report.variants:
        assert row.error is None, f"{row.name}: {row.error}"
        assert row.path is not None
        verify_self_contained_onnx(row.path.read_bytes())
        assert row.accuracy is not None and row.accuracy_delta is not None
        assert row.accuracy_delta >= -POLICY.accuracy_budget, f"{row.name} lost {-row.accuracy_delta:.2%}"
        assert row.within_budget
        assert row.agreement is not None and row.agreement > 0.95
        assert row.latency_b1_p50_ms and row.latency_b32_p99_ms and row.latency_b32_p99_ms >= row.latency_b32_p50_ms
        assert row.peak_memory_bytes and row.peak_memory_bytes > row.size_bytes


def test_int8_files_are_at_most_30_percent_of_fp32(optimized: Optimized) -> None:
    fp32 = optimized.report.variant("fp32").size_bytes
    for name in ("int8_dynamic", "int8_static"):
        size = optimized.report.variant(name).size_bytes
        assert size is not None and fp32 is not None
        assert size <= 0.30 * fp32, f"{name} is {size / fp32:.0%} of FP32"


def test_structured_pruning_and_distillation_shrink_the_model(optimized: Optimized) -> None:
    report = optimized.report
    fp32 = report.variant("fp32").size_bytes or 0
    assert (report.variant("pruned_structured").size_bytes or fp32) < 0.5 * fp32
    assert (report.variant("distilled").size_bytes or fp32) < 0.5 * fp32


def test_the_recommendation_is_the_fastest_variant_within_budget(optimized: Optimized) -> None:
    report = optimized.report
    within = [row for row in report.variants if row.within_budget]
    fastest = min(within, key=lambda row: row.latency_b32_p50_ms or float("inf"))
    assert report.recommended == fastest.name
    assert "batch 32" in report.recommendation_reason


def test_the_report_files_and_progress(optimized: Optimized) -> None:
    written = json.loads((optimized.workdir / "report.json").read_text())
    assert written["recommended"] == optimized.report.recommended
    assert len(written["variants"]) == 1 + len(ALL_VARIANTS)
    markdown = (optimized.workdir / "report.md").read_text()
    assert all(f"| {name}" in markdown for name in ALL_VARIANTS)
    # a variant's speed and INT8 accuracy belong to the CPU they were measured on: the report says which
    cpu = host_cpu()
    assert written["measured_on"]["hardware_class"] == cpu.hardware_class
    assert f"Measured on: {cpu.model} ({cpu.hardware_class}" in markdown
    int8 = {row["name"]: row["cpu_target"] for row in written["variants"] if row["name"].startswith("int8_")}
    assert set(int8) == {"int8_dynamic", "int8_static"} and all(int8.values())
    assert all(row["cpu_target"] is None for row in written["variants"] if not row["name"].startswith("int8_"))
    assert (optimized.workdir / "report.png").read_bytes().startswith(b"\x89PNG")
    fractions = [f for _, f in optimized.steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("pruned_structured" in step for step, _ in optimized.steps)


def test_the_edge_bundle_runner_predicts_like_the_fp32_model(trained: OptimizeInputs, tmp_path: Path) -> None:
    fp32_only = optimize(trained, POLICY.model_copy(update={"variants": []}), tmp_path / "work", model="d", version=1)
    bundle = build_edge_bundle(fp32_only, trained, tmp_path)
    expected, _ = fp32_predictions(trained)
    with np.load(trained.test_split) as split:
        result = run_bundle(bundle, split["x"].astype(np.float32), tmp_path)
    assert result["class_indices"] == expected.tolist()
    assert result["predictions"] == [trained.class_names[i] for i in expected]


def test_the_edge_bundle_holds_the_recommended_variant(optimized: Optimized, tmp_path: Path) -> None:
    bundle = build_edge_bundle(optimized.report, optimized.inputs, tmp_path / "bundle")
    with tarfile.open(bundle) as archive:
        names = set(archive.getnames())
        signature = json.loads(archive.extractfile("signature.json").read())  # type: ignore[union-attr]
    assert names == {"model.onnx", "signature.json", "preprocessing.json", "classes.json", "run.py", "README.txt"}
    assert signature["variant"] == optimized.report.recommended
    fp32, _ = fp32_predictions(optimized.inputs)
    with np.load(optimized.inputs.test_split) as split:
        result = run_bundle(bundle, split["x"].astype(np.float32), tmp_path)
    agreement = float(np.mean(np.array(result["class_indices"]) == fp32))
    assert agreement == pytest.approx(optimized.report.recommended_variant.agreement)


def test_a_failing_variant_is_recorded_and_the_others_go_on(trained: OptimizeInputs, tmp_path: Path) -> None:
    without_weights = OptimizeInputs(**{**trained.__dict__, "weights": None})
    policy = POLICY.model_copy(update={"variants": ["pruned_magnitude", "int8_dynamic"]})
    report = optimize(without_weights, policy, tmp_path, model="digits", version=1)
    pruned = report.variant("pruned_magnitude")
    assert pruned.error is not None and "weights" in pruned.error and not pruned.within_budget
    assert report.variant("int8_dynamic").error is None
    assert report.recommended in {"fp32", "int8_dynamic"}
    assert "pruned_magnitude: " in report.to_markdown() and pruned.error in report.to_markdown()
