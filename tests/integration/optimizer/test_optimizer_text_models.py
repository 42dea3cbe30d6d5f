"""The optimizer on a text model (one string input `text`, the vectorizer inside the ONNX graph) with text
splits: INT8 dynamic and static (calibrated on texts), FP16 and the distilled student behind the teacher's
own vectorizer are built and measured on texts; pruning is not built and the report says why; the edge
bundle runs raw texts in an interpreter that has only numpy and onnxruntime."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_optimizer_variants import run_bundle
from text_models import CLASS_NAMES, write_text_splits
from text_models import text_classifier as fitted_text_classifier

from gallery_common.contracts import read_split, write_split
from gallery_optimizer.pipeline import (
    OptimizationError,
    OptimizationReport,
    OptimizeInputs,
    build_edge_bundle,
    optimize,
)
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.text_variants import PRUNING_SKIPPED

POLICY = OptimizationPolicy(student_hidden=[32], distill_epochs=40, accuracy_budget=0.03)
BUILT = ("fp32", "int8_dynamic", "int8_static", "fp16", "distilled")


@dataclass
class Optimized:
    inputs: OptimizeInputs
    report: OptimizationReport
    workdir: Path


def text_inputs(folder: Path) -> OptimizeInputs:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(fitted_text_classifier().onnx)
    splits = write_text_splits(folder)
    return OptimizeInputs(
        onnx=folder / "model.onnx",
        weights=None,
        spec=None,
        train_split=splits["train"],
        validation_split=splits["validation"],
        test_split=splits["test"],
        class_names=CLASS_NAMES,
    )


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    folder = tmp_path_factory.mktemp("text-optimizer")
    inputs = text_inputs(folder / "inputs")
    report = optimize(inputs, POLICY, folder / "work", model="topics", version=1)
    return Optimized(inputs, report, folder / "work")


def predictions(model: Path, texts: np.ndarray) -> np.ndarray:
    (logits,) = ort.InferenceSession(model.read_bytes()).run(["logits"], {"text": texts})
    return np.asarray(logits).argmax(axis=1)


def test_the_variants_that_apply_are_built_and_measured_on_texts(optimized: Optimized) -> None:
    test = read_split(optimized.inputs.test_split)
    fp32 = predictions(optimized.inputs.onnx, test.x)
    for name in BUILT:
        row = optimized.report.variant(name)
        assert row.error is None, (name, row.error)
        assert row.path is not None and row.path.exists()
        # the figures are this file's on the test texts, as ONNX Runtime gives them here
        served = predictions(row.path, test.x)
        assert row.accuracy == pytest.approx(float((served == test.y).mean()))
        assert row.agreement == pytest.approx(float((served == fp32).mean()))
        assert row.accuracy > 0.85, (name, row.accuracy)
        assert row.latency_b1_p50_ms and row.latency_b32_p50_ms and row.peak_memory_bytes
        assert row.size_bytes == row.path.stat().st_size
    # the variants keep taking raw texts: the vectorizer is in every graph
    for name in BUILT:
        graph = onnx.load(str(optimized.report.variant(name).path)).graph
        assert [i.name for i in graph.input] == ["text"]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    distilled = optimized.report.variant("distilled")
    assert any("behind the teacher's own vectorizer" in note for note in distilled.notes)
    assert any("calibrated on 120 validation rows" in note for note in optimized.report.variant("int8_static").notes)


def test_pruning_is_not_built_and_the_report_says_why(optimized: Optimized) -> None:
    markdown = optimized.report.to_markdown()
    for name in ("pruned_magnitude", "pruned_structured"):
        row = optimized.report.variant(name)
        assert row.error == PRUNING_SKIPPED and row.path is None and not row.within_budget
        assert f"{name}: {PRUNING_SKIPPED}" in markdown
    assert optimized.report.recommended in BUILT


def test_the_edge_bundle_of_a_text_model_runs_raw_texts(optimized: Optimized, tmp_path: Path) -> None:
    bundle = build_edge_bundle(optimized.report, optimized.inputs, tmp_path / "bundle")
    with tarfile.open(bundle) as archive:
        readme = archive.extractfile("README.txt").read().decode()  # type: ignore[union-attr]
    assert "one text per line" in readme
    test = read_split(optimized.inputs.test_split)
    chosen = optimized.report.recommended_variant.path
    assert chosen is not None
    expected = predictions(chosen, test.x)
    result = run_bundle(bundle, test.x, tmp_path)
    assert result["class_indices"] == expected.tolist()
    assert result["predictions"] == [CLASS_NAMES[i] for i in expected]


def test_a_text_model_with_numeric_splits_is_refused_with_the_reason(tmp_path: Path) -> None:
    inputs = text_inputs(tmp_path)
    rng = np.random.default_rng(0)
    for path in (inputs.train_split, inputs.validation_split, inputs.test_split):
        write_split(path, rng.normal(size=(30, 4)), rng.integers(0, 3, size=30))
    with pytest.raises(OptimizationError, match=r"^the model takes texts but its splits hold numbers$"):
        optimize(inputs, POLICY, tmp_path / "work", model="topics", version=1)
    texts = read_split(text_inputs(tmp_path / "again").test_split)
    write_split(inputs.test_split, texts.x, texts.y)
    with pytest.raises(OptimizationError, match=r"all hold texts or all numbers \(train: numbers, .*test: texts\)"):
        optimize(inputs, POLICY, tmp_path / "work", model="topics", version=1)
